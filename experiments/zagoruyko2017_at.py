r"""Attention transfer on CIFAR-10 with wide residual networks: the paper's Table 1 (WRN rows).

S. Zagoruyko, N. Komodakis, "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017, arXiv:1612.03928
(https://arxiv.org/abs/1612.03928); reference code https://github.com/szagoruyko/attention-transfer.

The student matches the teacher's activation-based spatial attention maps (sum over channels of
squared activations, L2-normalised) at the end of each of the three groups of a WRN.

    python -m kd.main --config=experiments/zagoruyko2017_at.py:pair=wrn_40_2_wrn_16_2,method=at \
        --workdir=runs/zagoruyko2017_at/wrn_40_2_wrn_16_2

Arguments (comma-separated key=value): `pair=<teacher>_<student>` (see PAIRS), `method=at|kd|all`,
`smoke=1` (or the bare word `smoke`: 2 steps of 8 examples per stage). Stages in one workdir per
pair: `teacher` (trained on labels first, with the same recipe, as in the paper), `baseline` (the
student on labels), then the method; finished stages are skipped.

Recipe (the paper and its code, `cifar.py`): 200 epochs of SGD, momentum 0.9 (no Nesterov), batch 128,
learning rate 0.1 multiplied by 0.2 at epochs 60, 120, 160, weight decay 5e-4, random crop (padding 4)
and horizontal flip; epochs become steps as epochs * 50000 / 128. AT: CE + beta/2 * sum over the
three groups of mean((Q_s/|Q_s| - Q_t/|Q_t|)^2) with beta = 1000, so at_weight = 500. KD: T = 4,
alpha = 0.9 (0.1 CE + 0.9 KD). Departure: inputs are scaled to [0, 1] without mean/std normalisation.
Runtime (an estimate, not measured here): about an hour per run on one GPU (78,125 steps); the
smoke variant takes about half a minute of CPU per stage here (compilation).
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config
from kd.models import zoo_model_config

TRAIN_EXAMPLES = 50_000  # CIFAR-10's train split.
BATCH_SIZE = 128
EPOCHS = 200
DECAY_EPOCHS = (60, 120, 160)
BLOCKS_PER_GROUP = {"wrn_16_1": 2, "wrn_16_2": 2, "wrn_40_1": 6, "wrn_40_2": 6}

# Table 1, CIFAR-10 test accuracy (%) = 100 - the reported error: the student alone ("baseline"),
# with AT, with KD, and the teacher. (WRN-16-1 <- WRN-40-1: errors 8.77, 8.25, 8.39, 6.58;
# WRN-16-2 <- WRN-40-2: 6.31, 5.85, 6.08, 5.23.)
REPORTED = {
    "wrn_40_1_wrn_16_1": {"baseline": 91.23, "at": 91.75, "kd": 91.61, "teacher": 93.42},
    "wrn_40_2_wrn_16_2": {"baseline": 93.69, "at": 94.15, "kd": 93.92, "teacher": 94.77},
}
PAIRS = {"wrn_40_1_wrn_16_1": ("wrn_40_1", "wrn_16_1"), "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2")}
DEFAULT_PAIR = "wrn_40_2_wrn_16_2"
SMOKE_PAIR = "wrn_40_1_wrn_16_1"


def group_outputs(model: str) -> tuple[str, ...]:
  """The output of each of the three groups (before the final BatchNorm), as in the paper's code."""
  last = BLOCKS_PER_GROUP[model] - 1
  return tuple(f"block{group}_{last}" for group in (1, 2, 3))


def methods_for(teacher: str, student: str) -> dict[str, dict]:
  return {"at": method_config("at", student_features=group_outputs(student),
                              teacher_features=group_outputs(teacher), p=2.0, at_weight=500.0, ce_weight=1.0),
          "kd": method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1)}


def steps(epochs: float) -> int:
  return int(round(epochs * TRAIN_EXAMPLES / BATCH_SIZE))


def optimizer() -> dict:
  # torch.optim.SGD's weight_decay: coupled (in the gradient, before momentum), on every parameter.
  return {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
          "weight_decay_mode": "coupled", "weight_decay_mask": "all",
          "schedule": "multistep", "decay_boundaries": tuple(steps(e) for e in DECAY_EPOCHS),
          "decay_factor": 0.2}


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
  if pair not in PAIRS:
    raise ValueError(f"unknown pair {pair!r}; pairs: {sorted(PAIRS)}")
  teacher, student = PAIRS[pair]
  methods = methods_for(teacher, student)
  method = args.get("method", "at")
  chosen = list(methods) if method == "all" else [method]
  for name in chosen:
    if name not in methods:
      raise ValueError(f"unknown method {name!r}; methods: {sorted(methods)} or all")

  config = base_config()
  config.seeds = (0,)
  config.data.name = "cifar10"
  # As the paper: train on all of train and report the last epoch's test error; no validation split,
  # so nothing is selected.
  config.data.validation_split = ""
  config.data.batch_size = BATCH_SIZE
  config.data.augment.crop_padding = 4
  config.data.augment.flip = True
  num_steps = steps(EPOCHS)
  config.stages.teacher = stage_config(zoo_model_config(teacher), method_config("supervised"),
                                       num_steps=num_steps, **optimizer())
  config.stages.baseline = stage_config(zoo_model_config(student), method_config("supervised"),
                                        num_steps=num_steps, **optimizer())
  for name in chosen:
    config.stages[name] = stage_config(zoo_model_config(student), methods[name], teacher="teacher",
                                       num_steps=num_steps, **optimizer())
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
  """The AT and KD runs of Table 1's WRN rows."""
  for pair in PAIRS:
    for method in ("at", "kd"):
      add(f"pair={pair},method={method}")
