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

Recipe (the released code, `cifar.py` and `utils.py`; RECIPE lists each setting with its source):
200 epochs of SGD, momentum 0.9 (no Nesterov), batch 128, learning rate 0.1 multiplied by 0.2 when
epochs 60, 120 and 160 start (after 59, 119 and 159 epochs: `on_start_epoch` rebuilds the optimizer
when `state['epoch'] + 1` is in `epoch_step`), weight decay 5e-4, reflect padding by 4, horizontal
flip and a random 32x32 crop, inputs normalised with the code's CIFAR-10 statistics; epochs become
steps as epochs * 50000 / 128. AT: CE + beta * sum over the three groups of
mean((Q_s/|Q_s| - Q_t/|Q_t|)^2) with `--beta 1e+3`: the code has no 1/2 (the paper writes beta/2), so
at_weight = 1000. KD: T = 4, alpha = 0.9 (0.1 CE + 0.9 KD). The code builds a new SGD at each decay
(`create_optimizer` in `on_start_epoch`), so its momentum restarts from zero there:
optimizer.reset_momentum_at_decays. Its WRN (`resnet()` and `utils.py`) initialises convolutions and the
classifier with kaiming_normal_ (fan-in) and BatchNorm scales with U(0, 1): model.init_scheme =
"attention_transfer" (kd's WRN otherwise starts as RepDistiller's).
Runtime (an estimate, not measured here): about an hour per run on one GPU (78,125 steps); the
smoke variant takes about half a minute of CPU per stage here (compilation).
"""

import ml_collections

from kd.cifar100_benchmark import recipe_row
from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config
from kd.models import zoo_model_config

TRAIN_EXAMPLES = 50_000  # CIFAR-10's train split.
BATCH_SIZE = 128
EPOCHS = 200
# cifar.py's epoch_step [60, 120, 160]: the rate drops as epoch 60 (1-based) starts, after 59 epochs.
DECAY_EPOCHS = (59, 119, 159)
# cifar.py: T.Normalize(np.array([125.3, 123.0, 113.9]) / 255.0, np.array([63.0, 62.1, 66.7]) / 255.0).
PREPROCESS = ("range=0:1 mean=" + ",".join(f"{v / 255:.6f}" for v in (125.3, 123.0, 113.9))
              + " std=" + ",".join(f"{v / 255:.6f}" for v in (63.0, 62.1, 66.7)))
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
                              teacher_features=group_outputs(teacher), p=2.0, at_weight=1000.0, ce_weight=1.0),
          "kd": method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1)}


def steps(epochs: float) -> int:
  return int(round(epochs * TRAIN_EXAMPLES / BATCH_SIZE))


def optimizer() -> dict:
  # torch.optim.SGD's weight_decay: coupled (in the gradient, before momentum), on every parameter; a new
  # SGD at each decay: the momentum restarts there.
  return {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
          "weight_decay_mode": "coupled", "weight_decay_mask": "all",
          "schedule": "multistep", "decay_boundaries": tuple(steps(e) for e in DECAY_EPOCHS),
          "decay_factor": 0.2, "reset_momentum_at_decays": True}


def model_config(zoo_name: str) -> dict:
  """The zoo WRN with the code's normalisation and initialisation (utils.py conv_params, bnparams)."""
  return zoo_model_config(zoo_name, preprocess=PREPROCESS, init_scheme="attention_transfer")


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
  config.data.augment.crop_padding_mode = "reflect"  # T.Pad(4, padding_mode='reflect')
  config.data.augment.flip = True
  num_steps = steps(EPOCHS)
  config.stages.teacher = stage_config(model_config(teacher), method_config("supervised"),
                                       num_steps=num_steps, **optimizer())
  config.stages.baseline = stage_config(model_config(student), method_config("supervised"),
                                        num_steps=num_steps, **optimizer())
  for name in chosen:
    config.stages[name] = stage_config(model_config(student), methods[name], teacher="teacher",
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


# --- The recipe, row by row, with its source: tests/test_recipes.py checks every sweep point against it.
_CODE, _UTILS, _README = ("szagoruyko/attention-transfer/cifar.py", "szagoruyko/attention-transfer/utils.py",
                          "szagoruyko/attention-transfer/README.md")
RECIPE = [
    recipe_row("--batch_size 128", "data.batch_size", BATCH_SIZE, _CODE, stages=None),
    recipe_row("T.Pad(4)", "data.augment.crop_padding", 4, _CODE, stages=None),
    recipe_row("T.Pad(padding_mode='reflect')", "data.augment.crop_padding_mode", "reflect", _CODE, stages=None),
    recipe_row("T.RandomHorizontalFlip()", "data.augment.flip", True, _CODE, stages=None),
    recipe_row("CIFAR10(train=True): all 50,000 images", "data.validation_split", "", _CODE, stages=None),
    recipe_row("the last epoch's test error (the paper's Table 1)", "report.headline", "last", _CODE, stages=None),
    recipe_row("T.Normalize(mean=[125.3, 123.0, 113.9] / 255, std=[63.0, 62.1, 66.7] / 255)", "model.preprocess",
               PREPROCESS, _CODE),
    recipe_row("--epochs 200", "num_steps", steps(EPOCHS), _CODE),
    recipe_row("SGD", "optimizer.name", "sgd", _CODE),
    recipe_row("--lr 0.1", "optimizer.learning_rate", 0.1, _CODE),
    recipe_row("momentum=0.9", "optimizer.momentum", 0.9, _CODE),
    recipe_row("on_start_epoch: create_optimizer() at each decay, a new SGD with an empty momentum buffer",
               "optimizer.reset_momentum_at_decays", True, _CODE),
    recipe_row("torch SGD nesterov=False", "optimizer.nesterov", False, _CODE),
    recipe_row("--weight_decay 0.0005", "optimizer.weight_decay", 5e-4, _CODE),
    recipe_row("torch.optim.SGD weight_decay: added to the gradient", "optimizer.weight_decay_mode", "coupled", _CODE),
    recipe_row("every parameter with requires_grad (BatchNorm weights and biases too)", "optimizer.weight_decay_mask",
               "all", _CODE),
    recipe_row("--epoch_step [60,120,160]", "optimizer.schedule", "multistep", _CODE),
    recipe_row("--epoch_step [60,120,160]: at the start of those epochs, after 59, 119, 159",
               "optimizer.decay_boundaries", tuple(steps(e) for e in (59, 119, 159)), _CODE),
    recipe_row("--lr_decay_ratio 0.2", "optimizer.decay_factor", 0.2, _CODE),
    recipe_row("no warmup", "optimizer.warmup_steps", 0, _CODE),
    recipe_row("no gradient clipping", "optimizer.grad_clip_norm", 0.0, _CODE),
    recipe_row("the rate as given, at batch 128", "optimizer.lr_scaling", "none", _CODE),
    recipe_row("(unused: lr_scaling none)", "optimizer.base_batch_size", 256, _CODE),
    recipe_row("resnet(depth, width): the WRN", "model.name", "wrn", _CODE),
    recipe_row("conv_params, linear_params: kaiming_normal_ (fan-in); bnparams: weight torch.rand, U(0, 1)",
               "model.init_scheme", "attention_transfer", _UTILS),
    recipe_row("the teacher and the student alone: F.cross_entropy", "method.name", "supervised", _CODE,
               stages=("teacher", "baseline")),
    recipe_row("--teacher_id, --beta 1e+3: attention transfer", "method.name", "at", _README, stages=("at",)),
    recipe_row("f() returns (g0, g1, g2): each group's output, before the final BatchNorm",
               "method.student_features", {"wrn_16_1": ("block1_1", "block2_1", "block3_1"),
                                           "wrn_16_2": ("block1_1", "block2_1", "block3_1")},
               _CODE, stages=("at",), by="student"),
    recipe_row("f() returns (g0, g1, g2) of the teacher", "method.teacher_features",
               {"wrn_40_1": ("block1_5", "block2_5", "block3_5"), "wrn_40_2": ("block1_5", "block2_5", "block3_5")},
               _CODE, stages=("at",), by="teacher"),
    recipe_row("at(x) = normalize(x.pow(2).mean(1))", "method.p", 2.0, _UTILS, stages=("at",)),
    recipe_row("--beta 1e+3 times sum of at_loss = (at(x) - at(y)).pow(2).mean()", "method.at_weight", 1000.0, _CODE,
               stages=("at",)),
    recipe_row("--alpha 0: distillation() is 1.0 * cross-entropy", "method.ce_weight", 1.0, _UTILS, stages=("at",)),
    recipe_row("(kd only: no class tokens in a CNN)", "method.student_special_tokens", 0, _CODE, stages=("at",)),
    recipe_row("(kd only: no class tokens in a CNN)", "method.teacher_special_tokens", 0, _CODE, stages=("at",)),
    recipe_row("--alpha 0.9: distillation()", "method.name", "hinton_kd", _README, stages=("kd",)),
    recipe_row("--temperature 4", "method.temperature", 4.0, _CODE, stages=("kd",)),
    recipe_row("--alpha 0.9: KL * T^2 * alpha", "method.kd_weight", 0.9, _UTILS, stages=("kd",)),
    recipe_row("--alpha 0.9: CE * (1 - alpha)", "method.ce_weight", 0.1, _UTILS, stages=("kd",)),
]
