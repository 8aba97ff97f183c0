r"""Decoupled Knowledge Distillation on CIFAR-100: the DKD rows of the paper's Tables 1 and 2.

B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, "Decoupled Knowledge Distillation", CVPR 2022,
arXiv:2203.08679 (https://arxiv.org/abs/2203.08679); reference code mdistiller
(https://github.com/megvii-research/mdistiller, `configs/cifar100/dkd/*.yaml`).

DKD splits the KD loss into target-class (TCKD, weight alpha) and non-target-class (NCKD, weight
beta) terms. Each run distils a student from a teacher with DKD or, for the table's KD column,
with Hinton KD:

    python -m kd.main --config=experiments/zhao2022_dkd.py:pair=resnet32x4_resnet8x4,method=dkd \
        --workdir=runs/zhao2022_dkd/resnet32x4_resnet8x4

Arguments (comma-separated key=value): `pair=<teacher>_<student>` (see PAIRS), `method=dkd|kd|all`,
`smoke=1` (or the bare word `smoke`: 2 steps of 8 examples per stage, on the cheapest pair unless
`pair=` is given). Stages in one workdir per pair: `teacher` (trained on labels first; the paper
distils the pretrained teachers of the CRD benchmark), `baseline` (the student on labels), then the
method; finished stages are skipped, so the teacher is trained once per pair.

Recipe (mdistiller, all pairs): 240 epochs of SGD, momentum 0.9 (no Nesterov), batch 64, learning
rate 0.05 (0.01 for ShuffleNet and MobileNetV2 students) decayed by 0.1 at epochs 150, 180, 210,
weight decay 5e-4, random crop (padding 4) and horizontal flip; epochs become steps as
epochs * 50000 / 64. DKD: CE weight 1, alpha 1, T 4, beta per pair (BETA below: 2 for the
resnet56/110 pairs, 6 for the WRN and VGG pairs, 8 for the rest). KD: 0.1 CE + 0.9 KD at T 4.
Inputs are normalised with CIFAR-100's mean and std (mdistiller/dataset/cifar100.py). RECIPE lists
each setting with its source. The DKD term is warmed up as mdistiller does, by min(epoch / 20, 1)
(`CFG.DKD.WARMUP`, epochs counted from 1; `method.warmup_epochs`, `method.steps_per_epoch`). Runtime (an estimate, not measured here): hours per run on one GPU (187,500 steps); the smoke
variant takes about half a minute of CPU per stage here (compilation).
"""

import ml_collections

from kd import cifar100_benchmark
from kd.methods import method_config


# Test accuracy (%) of Tables 1 and 2 (KD and the teachers/students from the CRD benchmark).
REPORTED = {
    "resnet56_resnet20": {"teacher": 72.34, "baseline": 69.06, "kd": 70.66, "dkd": 71.97},
    "resnet110_resnet32": {"teacher": 74.31, "baseline": 71.14, "kd": 73.08, "dkd": 74.11},
    "resnet32x4_resnet8x4": {"teacher": 79.42, "baseline": 72.50, "kd": 73.33, "dkd": 76.32},
    "wrn_40_2_wrn_16_2": {"teacher": 75.61, "baseline": 73.26, "kd": 74.92, "dkd": 76.24},
    "wrn_40_2_wrn_40_1": {"teacher": 75.61, "baseline": 71.98, "kd": 73.54, "dkd": 74.81},
    "vgg13_vgg8": {"teacher": 74.64, "baseline": 70.36, "kd": 72.98, "dkd": 74.68},
    "resnet32x4_ShuffleV1": {"teacher": 79.42, "baseline": 70.50, "kd": 74.07, "dkd": 76.45},
    "wrn_40_2_ShuffleV1": {"teacher": 75.61, "baseline": 70.50, "kd": 74.83, "dkd": 76.70},
    "vgg13_mobile_half": {"teacher": 74.64, "baseline": 64.60, "kd": 67.37, "dkd": 69.71},
    "ResNet50_mobile_half": {"teacher": 79.34, "baseline": 64.60, "kd": 67.35, "dkd": 70.35},
    "resnet32x4_ShuffleV2": {"teacher": 79.42, "baseline": 71.82, "kd": 74.45, "dkd": 77.07},
}
PAIRS = {
    "resnet56_resnet20": ("resnet56", "resnet20"),
    "resnet110_resnet32": ("resnet110", "resnet32"),
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4"),
    "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2"),
    "wrn_40_2_wrn_40_1": ("wrn_40_2", "wrn_40_1"),
    "vgg13_vgg8": ("vgg13", "vgg8"),
    "resnet32x4_ShuffleV1": ("resnet32x4", "ShuffleV1"),
    "wrn_40_2_ShuffleV1": ("wrn_40_2", "ShuffleV1"),
    "vgg13_mobile_half": ("vgg13", "mobile_half"),
    "resnet32x4_ShuffleV2": ("resnet32x4", "ShuffleV2"),
}
NOT_RUNNABLE = {"ResNet50_mobile_half": "no CIFAR ResNet50 in kd.models"}
# mdistiller's DKD.BETA per pair (its default, 8, where the yaml does not set it).
BETA = {"resnet56_resnet20": 2.0, "resnet110_resnet32": 2.0, "resnet32x4_resnet8x4": 8.0,
        "wrn_40_2_wrn_16_2": 6.0, "wrn_40_2_wrn_40_1": 6.0, "vgg13_vgg8": 6.0,
        "resnet32x4_ShuffleV1": 8.0, "wrn_40_2_ShuffleV1": 8.0, "vgg13_mobile_half": 6.0,
        "resnet32x4_ShuffleV2": 8.0}
DEFAULT_PAIR = "resnet32x4_resnet8x4"
SMOKE_PAIR = "vgg13_vgg8"


def methods_for(pair: str) -> dict[str, dict]:
  # mdistiller's warmup: min(epoch / 20, 1) on the DKD term, the epoch counted from 1.
  return {"dkd": method_config("dkd", alpha=1.0, beta=BETA[pair], temperature=4.0, ce_weight=1.0,
                               warmup_epochs=20, steps_per_epoch=cifar100_benchmark.TRAIN_EXAMPLES /
                               cifar100_benchmark.BATCH_SIZE),
          "kd": method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return cifar100_benchmark.get_config(arg, pairs=PAIRS, not_runnable=NOT_RUNNABLE, methods_for=methods_for,
                                       default_method="dkd", default_pair=DEFAULT_PAIR,
                                       smoke_pair=SMOKE_PAIR)


def sweep(add) -> None:
  """Every DKD and KD run of Tables 1 and 2 that kd can run."""
  for pair in PAIRS:
    for method in ("kd", "dkd"):
      add(f"pair={pair},method={method}")


# --- The recipe, row by row, with its source: tests/test_recipes.py checks every sweep point against it.
_REPO = "megvii-research/mdistiller"
_CFG, _CRD_SCRIPT = f"{_REPO}/mdistiller/engine/cfg.py", "HobbitLong/RepDistiller/scripts/run_cifar_distill.sh"
_YAML = f"{_REPO}/configs/cifar100/dkd/<pair>.yaml"
RECIPE = [
    *cifar100_benchmark.benchmark_recipe(train=_YAML, data=f"{_REPO}/mdistiller/dataset/cifar100.py",
                                         light_rate=f"{_YAML} (LR 0.01)"),
    cifar100_benchmark.recipe_row("the last epoch (mdistiller logs both; the paper's tables are RepDistiller's "
                                  "protocol)", "report.headline", "last", f"{_REPO}/mdistiller/engine/trainer.py",
                                  stages=None),
    cifar100_benchmark.recipe_row("DISTILLER.TYPE DKD", "method.name", "dkd", _YAML, stages=("dkd",)),
    cifar100_benchmark.recipe_row("CFG.DKD.ALPHA 1.0", "method.alpha", 1.0, _CFG, stages=("dkd",)),
    cifar100_benchmark.recipe_row(
        "DKD.BETA (the yaml's, else CFG.DKD.BETA 8.0)", "method.beta",
        {"*": 8.0, "resnet56_resnet20": 2.0, "resnet110_resnet32": 2.0, "wrn_40_2_wrn_16_2": 6.0,
         "wrn_40_2_wrn_40_1": 6.0, "vgg13_vgg8": 6.0, "vgg13_mobile_half": 6.0}, _YAML, stages=("dkd",), by="pair"),
    cifar100_benchmark.recipe_row("CFG.DKD.T 4.0", "method.temperature", 4.0, _CFG, stages=("dkd",)),
    cifar100_benchmark.recipe_row("CFG.DKD.CE_WEIGHT 1.0", "method.ce_weight", 1.0, _CFG, stages=("dkd",)),
    cifar100_benchmark.recipe_row("CFG.DKD.WARMUP 20: min(epoch / 20, 1) on the DKD term", "method.warmup_epochs",
                                  20, f"{_REPO}/mdistiller/distillers/DKD.py", stages=("dkd",)),
    cifar100_benchmark.recipe_row("epochs of 50000 / 64 steps (SOLVER.BATCH_SIZE 64)", "method.steps_per_epoch",
                                  50000 / 64, _CFG, stages=("dkd",)),
    cifar100_benchmark.recipe_row("--distill kd (the CRD benchmark's KD row)", "method.name", "hinton_kd",
                                  _CRD_SCRIPT, stages=("kd",)),
    cifar100_benchmark.recipe_row("--kd_T 4", "method.temperature", 4.0, _CRD_SCRIPT, stages=("kd",)),
    cifar100_benchmark.recipe_row("-a 0.9", "method.kd_weight", 0.9, _CRD_SCRIPT, stages=("kd",)),
    cifar100_benchmark.recipe_row("-r 0.1", "method.ce_weight", 0.1, _CRD_SCRIPT, stages=("kd",)),
]
