r"""DIST on CIFAR-100: the DIST rows of the paper's CIFAR-100 tables.

T. Huang, S. You, F. Wang, C. Qian, C. Xu, "Knowledge Distillation from A Stronger Teacher",
NeurIPS 2022, arXiv:2205.10536 (https://arxiv.org/abs/2205.10536); reference code
https://github.com/hunto/DIST_KD.

DIST replaces KD's KL divergence with Pearson-correlation losses between the teacher's and the
student's class probabilities: inter-class (per example, weight beta) and intra-class (per class over
the batch, weight gamma), at temperature tau.

    python -m kd.main --config=experiments/huang2022_dist.py:pair=resnet32x4_resnet8x4,method=dist \
        --workdir=runs/huang2022_dist/resnet32x4_resnet8x4

Arguments (comma-separated key=value): `pair=<teacher>_<student>` (see PAIRS), `method=dist|kd|all`,
`smoke=1` (or the bare word `smoke`: 2 steps of 8 examples per stage, on the cheapest pair unless
`pair=` is given). Stages in one workdir per pair: `teacher` (trained on labels first; the paper
distils the pretrained teachers of the CRD benchmark), `baseline` (the student on labels), then the
method; finished stages are skipped, so the teacher is trained once per pair.

Recipe (the paper follows the CRD benchmark on CIFAR-100): 240 epochs of SGD, momentum 0.9 (no
Nesterov), batch 64, learning rate 0.05 (0.01 for ShuffleNet and MobileNetV2 students) decayed by
0.1 at epochs 150, 180, 210, weight decay 5e-4, random crop (padding 4) and horizontal flip; epochs
become steps as epochs * 50000 / 64. DIST: CE weight 1, beta = gamma = 2, tau = 4. KD: 0.1 CE +
0.9 KD at T 4. Runtime (an estimate, not measured here): hours per run on one GPU (187,500 steps);
the smoke variant takes about half a minute of CPU per stage here (compilation). REPORTED holds the
DIST numbers of the paper's CIFAR-100 tables for the pairs below (the teacher, baseline and KD
numbers are the CRD benchmark's, which the paper reuses).
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config
from kd.models import zoo_model_config

TRAIN_EXAMPLES = 50_000
BATCH_SIZE = 64
EPOCHS = 240
DECAY_EPOCHS = (150, 180, 210)
LIGHT_STUDENTS = ("mobile_half", "ShuffleV1", "ShuffleV2")

# Test accuracy (%).
REPORTED = {
    "resnet56_resnet20": {"teacher": 72.34, "baseline": 69.06, "kd": 70.66, "dist": 71.78},
    "wrn_40_2_wrn_40_1": {"teacher": 75.61, "baseline": 71.98, "kd": 73.54, "dist": 74.42},
    "resnet32x4_resnet8x4": {"teacher": 79.42, "baseline": 72.50, "kd": 73.33, "dist": 75.79},
    "ResNet50_mobile_half": {"teacher": 79.34, "baseline": 64.60, "dist": 69.17},
    "resnet32x4_ShuffleV1": {"teacher": 79.42, "baseline": 70.50, "kd": 74.07, "dist": 75.23},
    "resnet32x4_ShuffleV2": {"teacher": 79.42, "baseline": 71.82, "kd": 74.45, "dist": 76.08},
}
PAIRS = {
    "resnet56_resnet20": ("resnet56", "resnet20"),
    "wrn_40_2_wrn_40_1": ("wrn_40_2", "wrn_40_1"),
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4"),
    "resnet32x4_ShuffleV1": ("resnet32x4", "ShuffleV1"),
    "resnet32x4_ShuffleV2": ("resnet32x4", "ShuffleV2"),
    # Not in REPORTED: the fastest pair of the CRD benchmark to compile, for the smoke variant.
    "vgg13_vgg8": ("vgg13", "vgg8"),
}
NOT_RUNNABLE = {"ResNet50_mobile_half": "no CIFAR ResNet50 in kd.models"}
DEFAULT_PAIR = "resnet32x4_resnet8x4"
SMOKE_PAIR = "vgg13_vgg8"


def methods_for(pair: str) -> dict[str, dict]:
  del pair  # The same hyperparameters for every pair.
  return {"dist": method_config("dist", beta=2.0, gamma=2.0, temperature=4.0, ce_weight=1.0),
          "kd": method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1)}


def steps(epochs: float) -> int:
  return int(round(epochs * TRAIN_EXAMPLES / BATCH_SIZE))


def optimizer(model: str) -> dict:
  return {"name": "sgd", "learning_rate": 0.01 if model in LIGHT_STUDENTS else 0.05, "momentum": 0.9,
          "nesterov": False, "weight_decay": 5e-4, "schedule": "multistep",
          "decay_boundaries": tuple(steps(e) for e in DECAY_EPOCHS), "decay_factor": 0.1}


def parse_arg(arg: str | None) -> dict[str, str]:
  parsed = {}
  for item in (arg or "").split(","):
    if item.strip():
      key, equals, value = item.partition("=")
      parsed[key.strip()] = value.strip() if equals else "1"
  return parsed


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg)
  unknown = set(args) - {"pair", "method", "smoke"}
  if unknown:
    raise ValueError(f"unknown keys {sorted(unknown)} in {arg!r}: use pair=, method=, smoke=1")
  smoke = args.get("smoke", "0") not in ("0", "false", "False", "")
  pair = args.get("pair", SMOKE_PAIR if smoke else DEFAULT_PAIR)
  if pair in NOT_RUNNABLE:
    raise ValueError(f"pair {pair!r} of the paper cannot run here: {NOT_RUNNABLE[pair]}")
  if pair not in PAIRS:
    raise ValueError(f"unknown pair {pair!r}; pairs: {sorted(PAIRS)}")
  teacher, student = PAIRS[pair]
  methods = methods_for(pair)
  method = args.get("method", "dist")
  chosen = list(methods) if method == "all" else [method]
  for name in chosen:
    if name not in methods:
      raise ValueError(f"unknown method {name!r}; methods: {sorted(methods)} or all")

  config = base_config()
  config.seeds = (0,)
  config.data.name = "cifar100"
  config.data.batch_size = BATCH_SIZE
  config.data.augment.crop_padding = 4
  config.data.augment.flip = True
  num_steps = steps(EPOCHS)
  config.stages.teacher = stage_config(zoo_model_config(teacher), method_config("supervised"),
                                       num_steps=num_steps, **optimizer(teacher))
  config.stages.baseline = stage_config(zoo_model_config(student), method_config("supervised"),
                                        num_steps=num_steps, **optimizer(student))
  for name in chosen:
    config.stages[name] = stage_config(zoo_model_config(student), methods[name], teacher="teacher",
                                       num_steps=num_steps, **optimizer(student))
  config.stage_order = ("teacher", "baseline") + tuple(chosen)
  config.report.student = chosen[0]
  config.report.compare = ("baseline",) + tuple(chosen)
  config.log_every_steps = 500
  config.eval_every_steps = steps(10)
  config.checkpoint.every_steps = steps(10)
  if smoke:
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    for stage in config.stages.values():
      stage.num_steps = 2
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint.every_steps = 2
  return config


def sweep(add) -> None:
  """Every DIST and KD run of the CIFAR-100 tables that kd can run."""
  for pair in PAIRS:
    for method in ("kd", "dist"):
      if pair in REPORTED and method in REPORTED[pair]:
        add(f"pair={pair},method={method}")
