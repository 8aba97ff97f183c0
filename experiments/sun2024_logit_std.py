r"""Logit standardization on CIFAR-100: the "KD + Ours" rows of the paper's CIFAR-100 tables.

S. Sun, W. Ren, J. Li, R. Wang, X. Cao, "Logit Standardization in Knowledge Distillation",
CVPR 2024, arXiv:2403.01427 (https://arxiv.org/abs/2403.01427); reference code
https://github.com/sunshangquan/logit-standardization-KD (built on mdistiller).

KD on Z-score-standardised logits: each logit vector is centred and divided by its standard deviation
before the softmax at a base temperature, so the student matches the teacher's logit relations rather
than their scale.

    python -m kd.main --config=experiments/sun2024_logit_std.py:pair=resnet32x4_resnet8x4,method=logit_std \
        --workdir=runs/sun2024_logit_std/resnet32x4_resnet8x4

Arguments (comma-separated key=value): `pair=<teacher>_<student>` (see PAIRS),
`method=logit_std|kd|all`, `smoke=1` (or the bare word `smoke`: 2 steps of 8 examples per stage, on
the cheapest pair unless `pair=` is given). Stages in one workdir per pair: `teacher` (trained on
labels first; the paper distils mdistiller's pretrained teachers), `baseline` (the student on labels),
then the method; finished stages are skipped, so the teacher is trained once per pair.

Recipe (mdistiller's CIFAR-100 KD configs): 240 epochs of SGD, momentum 0.9 (no Nesterov), batch 64,
learning rate 0.05 (0.01 for ShuffleNet and MobileNetV2 students) decayed by 0.1 at epochs 150, 180,
210, weight decay 5e-4, random crop (padding 4) and horizontal flip; epochs become steps as
epochs * 50000 / 64. KD + logit standardization: CE weight 0.1, KD weight 9, base temperature 2
(3 for the pairs in BASE_TEMPERATURE; ResNet110 -> ResNet20 uses 4 and KD weight 12, ResNet50 ->
MobileNetV2 KD weight 1), as the repository's README commands and log names give them; inputs
normalised with CIFAR-100's mean and std (mdistiller/dataset/cifar100.py). RECIPE lists each
setting with its source. The README's numbers are each log's best test epoch (`best_acc`, e.g.
71.4662 for ResNet110 -> ResNet20, whose last epoch reads 71.22); kd reports the last epoch. KD: 0.1 CE + 0.9 KD at T 4. Runtime (an estimate, not
measured here): hours per run on one GPU (187,500 steps); the smoke variant takes about half a
minute of CPU per stage here (compilation).
"""

import ml_collections

from kd import cifar100_benchmark
from kd.methods import method_config


# Test accuracy (%) from the paper's CIFAR-100 tables (the repository README): KD and KD + Ours;
# teachers and baselines are the CRD benchmark's.
REPORTED = {
    "resnet32x4_resnet8x4": {"teacher": 79.42, "baseline": 72.50, "kd": 73.33, "logit_std": 76.62},
    "vgg13_vgg8": {"teacher": 74.64, "baseline": 70.36, "kd": 72.98, "logit_std": 74.36},
    "wrn_40_2_wrn_40_1": {"teacher": 75.61, "baseline": 71.98, "kd": 73.54, "logit_std": 74.37},
    "wrn_40_2_wrn_16_2": {"teacher": 75.61, "baseline": 73.26, "kd": 74.92, "logit_std": 76.11},
    "resnet56_resnet20": {"teacher": 72.34, "baseline": 69.06, "kd": 70.66, "logit_std": 71.43},
    "resnet110_resnet32": {"teacher": 74.31, "baseline": 71.14, "kd": 73.08, "logit_std": 74.17},
    "resnet110_resnet20": {"teacher": 74.31, "baseline": 69.06, "kd": 70.67, "logit_std": 71.48},
    "resnet32x4_ShuffleV2": {"teacher": 79.42, "baseline": 71.82, "kd": 74.45, "logit_std": 75.56},
    "resnet32x4_wrn_16_2": {"teacher": 79.42, "baseline": 73.26, "kd": 74.90, "logit_std": 75.26},
    "resnet32x4_wrn_40_2": {"teacher": 79.42, "baseline": 75.61, "kd": 77.70, "logit_std": 77.92},
    "wrn_40_2_resnet8x4": {"teacher": 75.61, "baseline": 72.50, "kd": 73.97, "logit_std": 77.11},
    "wrn_40_2_mobile_half": {"teacher": 75.61, "baseline": 64.60, "kd": 68.36, "logit_std": 69.23},
    "vgg13_mobile_half": {"teacher": 74.64, "baseline": 64.60, "kd": 67.37, "logit_std": 68.61},
    "ResNet50_mobile_half": {"teacher": 79.34, "baseline": 64.60, "kd": 67.35, "logit_std": 69.02},
}
PAIRS = {
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4"),
    "vgg13_vgg8": ("vgg13", "vgg8"),
    "wrn_40_2_wrn_40_1": ("wrn_40_2", "wrn_40_1"),
    "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2"),
    "resnet56_resnet20": ("resnet56", "resnet20"),
    "resnet110_resnet32": ("resnet110", "resnet32"),
    "resnet110_resnet20": ("resnet110", "resnet20"),
    "resnet32x4_ShuffleV2": ("resnet32x4", "ShuffleV2"),
    "resnet32x4_wrn_16_2": ("resnet32x4", "wrn_16_2"),
    "resnet32x4_wrn_40_2": ("resnet32x4", "wrn_40_2"),
    "wrn_40_2_resnet8x4": ("wrn_40_2", "resnet8x4"),
    "wrn_40_2_mobile_half": ("wrn_40_2", "mobile_half"),
    "vgg13_mobile_half": ("vgg13", "mobile_half"),
}
NOT_RUNNABLE = {"ResNet50_mobile_half": "no CIFAR ResNet50 in kd.models"}
# `--base-temp` and `--kd-weight` of each KD + Ours run, as its log is named in the README
# (logs/KD/kd,<teacher>,<student>,<base temp>,<kd weight>.txt); 2 and 9 (tools/train.py's defaults) elsewhere.
BASE_TEMPERATURE = {"vgg13_vgg8": 3.0, "resnet32x4_wrn_16_2": 3.0, "resnet32x4_wrn_40_2": 3.0,
                    "wrn_40_2_mobile_half": 3.0, "vgg13_mobile_half": 3.0, "resnet110_resnet20": 4.0}
KD_WEIGHT = {"resnet110_resnet20": 12.0}
DEFAULT_PAIR = "resnet32x4_resnet8x4"
SMOKE_PAIR = "vgg13_vgg8"


def methods_for(pair: str) -> dict[str, dict]:
  return {"logit_std": method_config("logit_std", temperature=BASE_TEMPERATURE.get(pair, 2.0),
                                     kd_weight=KD_WEIGHT.get(pair, 9.0), ce_weight=0.1),
          "kd": method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return cifar100_benchmark.get_config(arg, pairs=PAIRS, not_runnable=NOT_RUNNABLE, methods_for=methods_for,
                                       default_method="logit_std", default_pair=DEFAULT_PAIR,
                                       smoke_pair=SMOKE_PAIR)


def sweep(add) -> None:
  """Every KD and KD + logit standardization run of the CIFAR-100 tables that kd can run."""
  for pair in PAIRS:
    for method in ("kd", "logit_std"):
      add(f"pair={pair},method={method}")


# --- The recipe, row by row, with its source: tests/test_recipes.py checks every sweep point against it.
_REPO = "sunshangquan/logit-standardization-KD"
_CRD_SCRIPT = "HobbitLong/RepDistiller/scripts/run_cifar_distill.sh"
RECIPE = [
    *cifar100_benchmark.benchmark_recipe(train=f"{_REPO}/configs/cifar100/kd/<pair>.yaml",
                                         data=f"{_REPO}/mdistiller/dataset/cifar100.py",
                                         light_rate=f"{_REPO}/configs/cifar100/kd/<pair>.yaml (LR 0.01)"),
    cifar100_benchmark.recipe_row("the last epoch (the README's numbers are each log's best epoch)",
                                  "report.headline", "last", f"{_REPO}/README.md", stages=None,
                                  departs="kd reports the last epoch, the README the best test epoch of each log "
                                          "(no validation split to select on)", reference="best"),
    cifar100_benchmark.recipe_row("--logit-stand", "method.name", "logit_std", f"{_REPO}/tools/train.py",
                                  stages=("logit_std",)),
    cifar100_benchmark.recipe_row(
        "--base-temp (the log names in the README)", "method.temperature",
        {"*": 2.0, "vgg13_vgg8": 3.0, "resnet32x4_wrn_16_2": 3.0, "resnet32x4_wrn_40_2": 3.0,
         "wrn_40_2_mobile_half": 3.0, "vgg13_mobile_half": 3.0, "resnet110_resnet20": 4.0},
        f"{_REPO}/README.md", stages=("logit_std",), by="pair"),
    cifar100_benchmark.recipe_row("--kd-weight (the log names in the README)", "method.kd_weight",
                                  {"*": 9.0, "resnet110_resnet20": 12.0}, f"{_REPO}/README.md",
                                  stages=("logit_std",), by="pair"),
    cifar100_benchmark.recipe_row("CFG.KD.LOSS.CE_WEIGHT 0.1", "method.ce_weight", 0.1,
                                  f"{_REPO}/mdistiller/engine/cfg.py", stages=("logit_std",)),
    cifar100_benchmark.recipe_row("--distill kd (the CRD benchmark's KD row)", "method.name", "hinton_kd",
                                  _CRD_SCRIPT, stages=("kd",)),
    cifar100_benchmark.recipe_row("--kd_T 4", "method.temperature", 4.0, _CRD_SCRIPT, stages=("kd",)),
    cifar100_benchmark.recipe_row("-a 0.9", "method.kd_weight", 0.9, _CRD_SCRIPT, stages=("kd",)),
    cifar100_benchmark.recipe_row("-r 0.1", "method.ce_weight", 0.1, _CRD_SCRIPT, stages=("kd",)),
]
