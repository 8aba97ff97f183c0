"""The CIFAR-100 teacher/student protocol of the CRD benchmark, shared by the paper files that use it.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, arXiv:1910.10699, and the
papers that report on its pairs with its recipe (DKD, DIST, logit standardization): 240 epochs of batch
64 on CIFAR-100's 50,000 training images, SGD with momentum 0.9 and weight decay 5e-4, learning rate 0.05
(0.01 for the MobileNet/ShuffleNet students) decayed by 10x at epochs 150, 180 and 210, random crop with
4-pixel padding and horizontal flip, inputs normalised with CIFAR-100's mean and std. An experiment file supplies its pairs, methods and numbers and
calls `get_config`.

The papers distil RepDistiller's released teachers. `teacher_checkpoint=<file>` in a file's argument
(e.g. `:pair=resnet32x4_resnet8x4,method=kd,teacher_checkpoint=/ckpt/resnet32x4_vanilla/ckpt_epoch_240.pth`)
does the same: the `teacher` stage imports that checkpoint (RepDistiller's / mdistiller's `.pth` or
`.safetensors` layout, converted by `kd.convert`, or a kd export) instead of training, evaluates and
exports it, and feeds it inputs normalised with CIFAR-100's mean and std as RepDistiller trained it
(as every stage here is fed).
"""

from typing import Any, Callable

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
# Every reference normalises CIFAR-100 with its channel statistics on [0, 1] inputs (RepDistiller
# and mdistiller `dataset/cifar100.py`, DIST's `dist_cifar.yaml` image_mean / image_std): teachers
# and students alike.
PREPROCESS = "cifar100"


def model_config(zoo_name: str) -> dict:
  """The zoo model, fed CIFAR-100-normalised inputs as the reference implementations train it."""
  return zoo_model_config(zoo_name, preprocess=PREPROCESS)


def steps(epochs: float) -> int:
  return int(round(epochs * TRAIN_EXAMPLES / BATCH_SIZE))


def optimizer(model: str) -> dict:
  return {"name": "sgd", "learning_rate": 0.01 if model in LIGHT_STUDENTS else 0.05, "momentum": 0.9,
          "nesterov": False, "weight_decay": 5e-4, "schedule": "multistep",
          # torch.optim.SGD's weight_decay (RepDistiller, mdistiller): coupled, every parameter.
          "weight_decay_mode": "coupled", "weight_decay_mask": "all",
          "decay_boundaries": tuple(steps(e) for e in DECAY_EPOCHS), "decay_factor": 0.1}


def recipe_row(setting: str, key: str, value: Any, source: str, *, stages: str | tuple[str, ...] | None = "*",
               by: str | None = None, departs: str = "", reference: Any = None) -> dict[str, Any]:
  """One row of a paper file's RECIPE: a hyperparameter the reference sets, and where.

  Args:
    setting: the reference's name for it (a flag, a config key, the paper's symbol).
    key: its dotted path in kd's config: under each stage in `stages` ("optimizer.learning_rate",
      "method.beta", "model.preprocess", "num_steps"), or from the top when `stages` is None
      ("data.batch_size").
    value: kd's value; a dict when it varies, keyed by `by`'s value ("*" for the rest); or
      {"features": "feat" | "preact", "from": i, "to": j}: the slice [i:j] of the model's row in
      the file's REFERENCE_FEATURES (the reference's feature list as kd tap points).
    source: the released code ("owner/repo/path") or the paper's section it comes from.
    stages: "*" (every stage of the config) or the stage names it applies to; a later row for the
      same stage and key overrides an earlier one.
    by: what a dict `value` is keyed by: "pair", "teacher", "student", or "model" (the stage's own
      model: the teacher's in stage "teacher", the student's elsewhere).
    departs: "" where kd does what the reference does; else why it departs.
    reference: the reference's value where kd departs.
  """
  return {"setting": setting, "key": key, "value": value, "source": source, "stages": stages, "by": by,
          "departs": departs, "reference": reference}


def benchmark_recipe(*, train: str, data: str, light_rate: str) -> list[dict[str, Any]]:
  """The rows every CRD-benchmark file shares: data, steps, optimizer, schedule, preprocessing.

  `train`, `data` and `light_rate` name the reference files that set the optimizer and schedule,
  the augmentation and normalisation, and the 0.01 rate of the light students.
  """
  decays = tuple(steps(e) for e in DECAY_EPOCHS)
  rate = {"*": 0.05, **{name: 0.01 for name in LIGHT_STUDENTS}}
  return [
      recipe_row("batch_size", "data.batch_size", BATCH_SIZE, train, stages=None),
      recipe_row("RandomCrop(32, padding=4)", "data.augment.crop_padding", 4, data, stages=None),
      recipe_row("RandomCrop padding_mode (torchvision's default: constant 0)", "data.augment.crop_padding_mode",
                 "zero", data, stages=None),
      recipe_row("RandomHorizontalFlip()", "data.augment.flip", True, data, stages=None),
      recipe_row("the training set (all 50,000 images; the test set is the only other split)",
                 "data.validation_split", "", data, stages=None),
      recipe_row("Normalize(mean, std) on ToTensor's [0, 1]", "model.preprocess", PREPROCESS, data),
      recipe_row("epochs 240", "num_steps", steps(EPOCHS), train),
      recipe_row("SGD", "optimizer.name", "sgd", train),
      recipe_row("learning_rate 0.05 (0.01 for MobileNetV2, ShuffleV1, ShuffleV2)", "optimizer.learning_rate", rate,
                 light_rate, by="model"),
      recipe_row("momentum 0.9", "optimizer.momentum", 0.9, train),
      recipe_row("nesterov (torch SGD's default False)", "optimizer.nesterov", False, train),
      recipe_row("weight_decay 5e-4", "optimizer.weight_decay", 5e-4, train),
      recipe_row("torch.optim.SGD weight_decay: added to the gradient", "optimizer.weight_decay_mode", "coupled",
                 train),
      recipe_row("one parameter group: every parameter decays", "optimizer.weight_decay_mask", "all", train),
      recipe_row("lr_decay_epochs 150, 180, 210", "optimizer.schedule", "multistep", train),
      recipe_row("lr_decay_epochs 150, 180, 210 (epochs * 50000 / 64 steps)", "optimizer.decay_boundaries", decays,
                 train),
      recipe_row("lr_decay_rate 0.1", "optimizer.decay_factor", 0.1, train),
      recipe_row("one optimizer for the whole run, its rate changed in place at each decay: momentum kept",
                 "optimizer.reset_momentum_at_decays", False, train),
      recipe_row("no warmup", "optimizer.warmup_steps", 0, train),
      recipe_row("no gradient clipping", "optimizer.grad_clip_norm", 0.0, train),
      recipe_row("the rate as given, at batch 64", "optimizer.lr_scaling", "none", train),
      recipe_row("(unused: lr_scaling none)", "optimizer.base_batch_size", 256, train),
      recipe_row("labels only (cross-entropy)", "method.name", "supervised", train, stages=("teacher", "baseline")),
  ]


def parse_arg(arg: str | None) -> dict[str, str]:
  """`"pair=a_b,method=kd,smoke"` -> {"pair": "a_b", "method": "kd", "smoke": "1"}."""
  parsed = {}
  for item in (arg or "").split(","):
    if item.strip():
      key, equals, value = item.partition("=")
      parsed[key.strip()] = value.strip() if equals else "1"
  return parsed


def use_pretrained_teacher(config: ml_collections.ConfigDict, path: str) -> None:
  """The `teacher` stage imports the checkpoint at `path` (no training; see the module docstring)."""
  teacher = config.stages.teacher
  teacher.init_from = path
  teacher.num_steps = 0
  teacher.optimizer.decay_boundaries = ()  # Nothing is trained: no schedule.
  teacher.optimizer.schedule = "constant"
  # RepDistiller normalises CIFAR-100 (dataset/cifar100.py); a kd export states its own.
  teacher.model.preprocess = PREPROCESS


def get_config(arg: str | None, *, pairs: dict[str, tuple[str, str]], not_runnable: dict[str, str],
               methods_for: Callable[[str], dict[str, dict]], default_method: str,
               default_pair: str = "resnet32x4_resnet8x4",
               smoke_pair: str = "vgg13_vgg8") -> ml_collections.ConfigDict:
  """Teacher, baseline and one stage per chosen method on `pair=` (`method=all`: every method)."""
  args = parse_arg(arg)
  unknown = set(args) - {"pair", "method", "smoke", "teacher_checkpoint"}
  if unknown:
    raise ValueError(f"unknown keys {sorted(unknown)} in {arg!r}: use pair=, method=, smoke=1, "
                     "teacher_checkpoint=<file>")
  smoke = args.get("smoke", "0") not in ("0", "false", "False", "")
  pair = args.get("pair", smoke_pair if smoke else default_pair)
  if pair in not_runnable:
    raise ValueError(f"pair {pair!r} of the paper cannot run here: {not_runnable[pair]}")
  if pair not in pairs:
    raise ValueError(f"unknown pair {pair!r}; pairs: {sorted(pairs)}")
  teacher, student = pairs[pair]
  methods = methods_for(pair)
  method = args.get("method", default_method)
  chosen = list(methods) if method == "all" else [method]
  for name in chosen:
    if name not in methods:
      raise ValueError(f"unknown method {name!r}; methods: {sorted(methods)} or all")

  config = base_config()
  config.seeds = (0,)
  config.data.name = "cifar100"
  # As the paper's code: train on all of train and report the last epoch; no validation split, so
  # nothing is selected on the test split (its code's "best" epoch was picked there).
  config.data.validation_split = ""
  config.data.batch_size = BATCH_SIZE
  config.data.augment.crop_padding = 4
  config.data.augment.flip = True
  num_steps = steps(EPOCHS)
  config.stages.teacher = stage_config(model_config(teacher), method_config("supervised"),
                                       num_steps=num_steps, **optimizer(teacher))
  config.stages.baseline = stage_config(model_config(student), method_config("supervised"),
                                        num_steps=num_steps, **optimizer(student))
  for name in chosen:
    config.stages[name] = stage_config(model_config(student), methods[name], teacher="teacher",
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
  if args.get("teacher_checkpoint"):
    use_pretrained_teacher(config, args["teacher_checkpoint"])
  return config
