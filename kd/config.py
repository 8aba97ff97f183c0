"""The config schema of an experiment, and its validation.

An experiment is a sequence of *stages*, each one training run: a student model trained with a
method (a loss), optionally against the exported model of an earlier stage as its teacher.

    config.seeds                 one run per seed, each in <workdir>/seed_<n>; the seed fixes
                                 initialisation, dropout and data order; the report averages them
    config.data                  dataset name, TFDS data_dir, splits, batch sizes
    config.mesh.data             devices on the data-parallel axis (-1: all)
    config.mesh.fsdp, .teacher   FSDP axis size for the student, the teacher's sharding
    config.checkpoint            every_steps, keep
    config.nonfinite             policy ("stop" or "skip") for NaN/Inf losses and gradients
    config.log_every_steps       progress line, metrics.jsonl and TensorBoard
    config.eval_every_steps      accuracy on the validation and test splits during training (0: only
                                 at the end); `best` picks the step by validation
    config.stage_order           the stages to run, in order
    config.stages.<name>         model, method, teacher, num_steps, optimizer; the teacher may
                                 also come from outside the run (teacher = "export:<dir>", or
                                 teacher_model + teacher_checkpoint, see kd.external), and the
                                 model may start from a checkpoint (init_from; with num_steps=0
                                 the stage only imports, evaluates and exports it)
    config.report                the stages the report card compares: teacher, baseline, student,
                                 and `compare`, more stages for a table of accuracy over seeds

Experiment files build on `base_config()` and `stage_config()`. `validate()` checks a config before
anything is compiled and raises ConfigError with one line that names the key and the fix.
"""

import difflib
import json
import os
import re
from typing import Any

import ml_collections

from kd import distributed
from kd import methods
from kd import models
from kd import pruning
from kd.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant", "multistep")
WEIGHT_DECAY_MODES = ("", "coupled", "decoupled", "decoupled_schedule")
NONFINITE_POLICIES = ("stop", "skip")
TEACHER_VIEWS = ("same", "independent")
CROP_PADDING_MODES = ("zero", "reflect")  # kd.augment.CROP_PADDING_MODES
HEADLINES = ("last", "best")


def base_config() -> ml_collections.ConfigDict:
  """Every experiment-level key with its default; experiment files override them."""
  config = ml_collections.ConfigDict()
  config.seeds = (0,)
  config.data = ml_collections.ConfigDict({
      "name": "digits",
      "data_dir": "",  # Empty: TFDS's default (TFDS_DATA_DIR, else ~/tensorflow_datasets).
      # Train fits, validation selects ("best", evaluated every eval_every_steps), test reports; see
      # kd.data.splits. "holdout": a fixed stratified validation_fraction of train_split, left out of
      # training; "" trains on all of train_split with no validation (papers that report the last epoch).
      "train_split": "train",
      "validation_split": "holdout",
      "validation_fraction": 0.1,
      "test_split": "test",
      "batch_size": 64,  # Global, over all devices and processes.
      "eval_batch_size": 256,
      # > 0: images are resized (shorter side) and centre-cropped to image_size x image_size when
      # read, for datasets whose images vary in size (flowers, pets, imagenet2012); 0: as stored.
      "image_size": 0,
      # Processes that gather training batches (0: in the training process; the example order is
      # the same for any number), and batches prepared ahead of the step.
      "workers": 0,
      "prefetch": 2,
      # Training views, made on the device (kd.augment): random crop after padding (crop_padding_mode
      # "zero", or "reflect": mirrored borders), random horizontal flip; the teacher sees the "same"
      # view as the student or an "independent" one.
      # random_resized_crop: ImageNet-style inception crop (area fraction in rrc_scale, aspect ratio
      # in rrc_ratio) resized back to the dataset's size; mixup_alpha / cutmix_alpha > 0 mix each
      # example with its neighbour (one of the two per batch when both are set), labels weighted.
      "augment": ml_collections.ConfigDict({"crop_padding": 0, "crop_padding_mode": "zero", "flip": False,
                                            "teacher_view": "same",
                                            "random_resized_crop": False, "rrc_scale": (0.08, 1.0),
                                            "rrc_ratio": (3 / 4, 4 / 3), "mixup_alpha": 0.0,
                                            "cutmix_alpha": 0.0}),
  })
  # Devices: mesh.data x mesh.fsdp; the student is FSDP-sharded over "fsdp" when it is > 1, the
  # teacher's variables are "replicated", sharded over "fsdp", or over "all" devices (kd.distributed).
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "teacher": "replicated"})
  # Teacher-output cache (kd.teacher_cache): the teacher's outputs over data.train_split are computed
  # once, stored in `dir` (empty: <workdir>/seed_<n>/teacher_cache) and read by example index instead
  # of running the teacher. top_k > 0 stores the k largest log-probabilities and the remaining mass
  # (LM methods read it rebuilt to [B, L, V], or on k + 1 buckets with method.top_k_cache="sparse").
  # The cache holds un-augmented views: with data.augment on, training refuses unless allow_augment.
  config.teacher_cache = ml_collections.ConfigDict({"enabled": False, "dir": "", "top_k": 0,
                                                    "allow_augment": False})
  config.checkpoint = ml_collections.ConfigDict({"every_steps": 500, "keep": 2})
  # What to do when the loss or the gradient is NaN or Inf: "stop" (the run fails naming the step
  # and the loss terms; the checkpoints are intact) or "skip" (the update is not applied and
  # train/skipped_updates counts it). inject_at_step > 0 poisons the student's logits at that step
  # (counted from 1, as in the logs), to test the policy.
  config.nonfinite = ml_collections.ConfigDict({"policy": "stop", "inject_at_step": 0})
  config.log_every_steps = 100
  config.eval_every_steps = 0
  config.stage_order = ()
  config.stages = ml_collections.ConfigDict()
  # Which stages the report card compares (see kd.report).
  # `compare` lists more stages (e.g. one per method) for a table of test accuracy over seeds.
  # `headline`: the number a sweep compares with the paper's: "last" (the final model's test accuracy)
  # or "best" (test accuracy at the step of best validation accuracy).
  config.report = ml_collections.ConfigDict({"teacher": "teacher", "baseline": "baseline",
                                             "student": "student", "compare": (), "headline": "last"})
  return config


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "adamw",
      "learning_rate": 1e-3,  # Peak rate, reached after warmup_steps.
      "weight_decay": 1e-4,
      # How weight decay enters the update (kd.optimizer.make_optimizer): "coupled" (wd * w added to the
      # gradient, before momentum or Adam: torch SGD's and torch Adam's weight_decay), "decoupled" (the
      # update is lr(t) * (step + wd * w): torch AdamW, optax.adamw), or "decoupled_schedule" (wd * w
      # scaled by the schedule's multiplier lr(t) / peak only, not by the learning rate: big_vision).
      # "" is the optimizer's own convention: coupled for sgd, decoupled for adamw.
      "weight_decay_mode": "",
      # Which parameters decay: "all", "kernels" (Dense/Conv kernels only: no biases, norm scales or
      # embeddings; big_vision's default `.*/kernel$`), or a regular expression searched in each
      # parameter's "/"-joined path (e.g. "student/.*kernel$").
      "weight_decay_mask": "all",
      "momentum": 0.9,  # sgd only.
      "schedule": "cosine",
      "warmup_steps": 0,
      "grad_clip_norm": 0.0,  # 0: no clipping.
      "nesterov": True,  # sgd only: Nesterov momentum (PyTorch's SGD default is False).
      # schedule="multistep": the rate is multiplied by decay_factor at each of these steps
      # (counted from the start of training, warmup included), as PyTorch's MultiStepLR does.
      "decay_boundaries": (),
      "decay_factor": 0.1,
      # multistep only: the momentum (sgd's trace, adam's moments) restarts from zero at each decay, as
      # code that builds a new torch optimizer at each decay does (attention-transfer's cifar.py).
      "reset_momentum_at_decays": False,
      # learning_rate was tuned at base_batch_size; scale it to data.batch_size by this rule:
      # "none", "linear" or "sqrt" (kd.distributed.scaled_learning_rate). Logged with the result.
      "lr_scaling": "none",
      "base_batch_size": 256,
      **overrides,
  })


def stage_config(model: dict[str, Any], method: dict[str, Any], *, teacher: str = "",
                 teacher_model: dict[str, Any] | None = None, teacher_checkpoint: str = "",
                 init_from: str = "", num_steps: int = 1000, prune: dict[str, Any] | None = None,
                 **optimizer) -> ml_collections.ConfigDict:
  """One stage: train `model` with `method` for `num_steps`, distilling from `teacher`.

  `model` is filled with the model's defaults (`kd.models.model_config`) so that every attribute
  can be overridden from the command line; `method` likewise (`kd.methods.method_config`).
  The teacher is an earlier stage, "export:<dir>", a model given to kd.run(teachers=...) by name, or
  `teacher_checkpoint` read by `teacher_model` (which states its `preprocess`); `init_from` starts
  the model from a checkpoint (see kd.external). `prune` prunes the model's weights by magnitude
  during training (kd.pruning.prune_config; off by default).
  """
  model = models.model_config(**model)
  method = methods.method_config(**method)
  teacher_model = (models.model_config(**teacher_model) if teacher_model and teacher_model.get("name")
                   else {"name": ""})
  return ml_collections.ConfigDict({
      "model": model,
      "method": method,
      "teacher": teacher,
      "teacher_model": teacher_model,  # Reads teacher_checkpoint; name "" when unused.
      "teacher_checkpoint": teacher_checkpoint,
      # What the model starts from ("" for random): a checkpoint, "export:<dir>", or "stage:<name>" (an
      # earlier stage's export in this run; "stage:a,b,c" for an ensemble's members, see ensemble_stage).
      "init_from": init_from,
      "num_steps": num_steps,
      "optimizer": optimizer_config(**optimizer),
      "prune": pruning.prune_config(**(prune or {})),  # Magnitude pruning to a sparsity (kd.pruning).
  })


STAGE = "stage:"


def init_stages(stage) -> tuple[str, ...]:
  """The earlier stages a stage's `init_from = "stage:a[,b...]"` starts its model from (() for none)."""
  init_from = stage.get("init_from", "")
  if not init_from.startswith(STAGE):
    return ()
  return tuple(name.strip() for name in init_from[len(STAGE):].split(","))


def ensemble_stage(stages, members, *, combine: str = "mean_probs",
                   weights=()) -> ml_collections.ConfigDict:
  """A stage that assembles the ensemble of earlier stages' trained models (kd.models.ensemble).

  It trains nothing (num_steps=0): it starts from the members' exports (`init_from="stage:a,b,c"`),
  is evaluated like any stage (its accuracy is a report-card row), and is exported, so a later stage
  distils from it by naming it as its `teacher`, the teacher cache included.

  Args:
    stages: the config's stages so far (`config.stages`), which hold the members.
    members: names of the member stages, in order (their models become `member_0`, `member_1`, ...).
    combine: "mean_probs" (arithmetic mean of the members' distributions) or "mean_logits"
      (geometric mean), Hinton et al. 2015.
    weights: one non-negative weight per member, or () for equal weights.
  """
  missing = [name for name in members if name not in stages]
  if missing:
    raise ConfigError(f"ensemble_stage members {missing} are not stages; stages: {sorted(stages.keys())}")
  model = {"name": "ensemble", "members": tuple(stages[name].model.to_dict() for name in members),
           "combine": combine, "weights": tuple(float(w) for w in weights), "preprocess": "unit"}
  return stage_config(model, {"name": "supervised"}, init_from=STAGE + ",".join(members), num_steps=0)


_STAGE_SCHEMA = stage_config({"name": "cnn"}, {"name": "supervised"})
_OPTIONAL_STAGE_KEYS = ("prune",)  # Added later: a stage block without it does what kd did before.
# Checked against the model's attributes / method's parameters.
_FREE_FORM = ("model", "method", "teacher_model")


def _type_name(value) -> str:
  return type(value).__name__


def _check_keys_and_types(config, schema, prefix: str) -> None:
  """Every key of `config` exists in `schema` with a compatible type."""
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f"did you mean {prefix}{close[0]}? " if close else ""
      raise ConfigError(f"unknown config key {path}: {hint}known keys here: {sorted(schema.keys())}")
    value, expected = config[key], schema[key]
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"{path} must be a group of keys, got {_type_name(value)}")
      if key == "stages" and not prefix:
        for name in value.keys():
          _check_stage(value[name], f"stages.{name}")
      else:
        _check_keys_and_types(value, expected, f"{path}.")
    elif isinstance(expected, bool) or isinstance(value, bool):
      if type(value) is not type(expected):
        raise ConfigError(f"{path}={value!r} must be a {_type_name(expected)}")
    elif isinstance(expected, float):
      if not isinstance(value, (int, float)):
        raise ConfigError(f"{path}={value!r} must be a number")
    elif isinstance(expected, (tuple, list)):
      if not isinstance(value, (tuple, list)):
        raise ConfigError(f"{path}={value!r} must be a tuple, e.g. ('a', 'b')")
    elif not isinstance(value, type(expected)):
      raise ConfigError(f"{path}={value!r} must be a {_type_name(expected)}, "
                        f"got a {_type_name(value)}")


def _check_stage(stage, where: str) -> None:
  if not isinstance(stage, (ml_collections.ConfigDict, dict)):
    raise ConfigError(f"{where} must be a stage built with kd.config.stage_config()")
  for key in _STAGE_SCHEMA.keys():
    if key not in stage and key not in _OPTIONAL_STAGE_KEYS:
      raise ConfigError(f"{where} has no {key!r}: build stages with kd.config.stage_config()")
  rigid = {k: stage[k] for k in stage.keys() if k not in _FREE_FORM}
  _check_keys_and_types(rigid, _STAGE_SCHEMA, f"{where}.")
  models.check_model_config(stage.model, f"{where}.model")
  methods.check_method_config(stage.method, f"{where}.method")
  if stage.teacher_model.get("name", ""):
    models.check_model_config(stage.teacher_model, f"{where}.teacher_model")
  if stage.teacher_checkpoint and stage.teacher:
    raise ConfigError(f"{where} sets both teacher={stage.teacher!r} and teacher_checkpoint="
                      f"{stage.teacher_checkpoint!r}: the checkpoint is the teacher, so leave teacher empty")
  if stage.num_steps < 0 or (stage.num_steps == 0 and not stage.init_from):
    raise ConfigError(f"{where}.num_steps={stage.num_steps} must be > 0 (0 only with init_from: a stage that "
                      "imports a checkpoint, evaluates and exports it without training)")
  if "prune" in stage:
    pruning.check(stage.prune, stage.num_steps, f"{where}.prune")
  optimizer = stage.optimizer
  if optimizer.name not in OPTIMIZERS:
    raise ConfigError(f"{where}.optimizer.name={optimizer.name!r}: choose one of {OPTIMIZERS}")
  if optimizer.weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ConfigError(f"{where}.optimizer.weight_decay_mode={optimizer.weight_decay_mode!r}: choose one of "
                      f"{WEIGHT_DECAY_MODES} ('' is the optimizer's own: coupled for sgd, decoupled for adamw)")
  if optimizer.weight_decay_mask not in ("all", "kernels"):
    try:
      re.compile(optimizer.weight_decay_mask)
    except re.error as e:
      raise ConfigError(f"{where}.optimizer.weight_decay_mask={optimizer.weight_decay_mask!r} is neither 'all', "
                        f"'kernels' nor a regular expression ({e})") from e
  if optimizer.schedule not in SCHEDULES:
    raise ConfigError(f"{where}.optimizer.schedule={optimizer.schedule!r}: choose one of {SCHEDULES}")
  if optimizer.lr_scaling not in distributed.LR_SCALING_RULES:
    raise ConfigError(f"{where}.optimizer.lr_scaling={optimizer.lr_scaling!r}: choose one of "
                      f"{distributed.LR_SCALING_RULES}")
  if optimizer.base_batch_size <= 0:
    raise ConfigError(f"{where}.optimizer.base_batch_size={optimizer.base_batch_size} must be > 0")
  if not optimizer.learning_rate > 0:
    raise ConfigError(f"{where}.optimizer.learning_rate={optimizer.learning_rate} must be > 0")
  for key in ("weight_decay", "grad_clip_norm", "momentum"):
    if optimizer[key] < 0:
      raise ConfigError(f"{where}.optimizer.{key}={optimizer[key]} must be >= 0")
  if optimizer.schedule == "multistep":
    boundaries = list(optimizer.decay_boundaries)
    if (not boundaries or not all(isinstance(b, int) and not isinstance(b, bool) for b in boundaries)
        or boundaries != sorted(set(boundaries)) or boundaries[0] <= optimizer.warmup_steps):
      raise ConfigError(f"{where}.optimizer.decay_boundaries={optimizer.decay_boundaries!r} must be increasing "
                        f"steps after warmup_steps={optimizer.warmup_steps} for schedule='multistep', "
                        "e.g. (117188, 140625, 164063)")
    if not 0 < optimizer.decay_factor <= 1:
      raise ConfigError(f"{where}.optimizer.decay_factor={optimizer.decay_factor} must be in (0, 1]")
  if not 0 <= optimizer.warmup_steps < max(stage.num_steps, 1):
    raise ConfigError(f"{where}.optimizer.warmup_steps={optimizer.warmup_steps} must be in "
                      f"[0, num_steps={stage.num_steps})")


def _check_ema_teacher(config, name: str) -> None:
  """teacher = "ema:<decay>" with 0 < decay < 1, and no teacher cache (the teacher changes every step)."""
  teacher = config.stages[name].teacher
  try:
    decay = float(teacher[len("ema:"):])
  except ValueError:
    decay = -1.0
  if not 0.0 < decay < 1.0:
    raise ConfigError(f"stages.{name}.teacher={teacher!r}: the moving-average teacher needs a decay in (0, 1), "
                      "e.g. 'ema:0.999'")
  if config.teacher_cache.enabled:
    raise ConfigError(f"stages.{name}.teacher={teacher!r} changes at every step, so its outputs cannot be "
                      "cached: set teacher_cache.enabled=False")


def _check_init_stages(config, name: str, seen: list[str]) -> None:
  """`init_from = "stage:..."` names earlier stages whose models the stage's model can hold."""
  stage, where = config.stages[name], f"stages.{name}.init_from"
  starts_from = init_stages(stage)
  if not starts_from:
    return
  for dependency in starts_from:
    if dependency not in seen:
      raise ConfigError(f"{where}={stage.init_from!r} names {dependency!r}, which must be a stage that runs "
                        f"before {name!r} in stage_order (earlier stages: {seen})")
  if stage.model.name != "ensemble":
    if len(starts_from) > 1:
      raise ConfigError(f"{where}={stage.init_from!r} names {len(starts_from)} stages, but only an ensemble "
                        f"starts from several: build stages.{name} with kd.config.ensemble_stage(config.stages, "
                        f"{list(starts_from)})")
    return
  members = [dict(member) for member in stage.model.members]
  expected = [config.stages[dependency].model.to_dict() for dependency in starts_from]
  if json.loads(json.dumps(members)) != json.loads(json.dumps(expected)):
    raise ConfigError(f"stages.{name}.model.members are not the models of {list(starts_from)} (a member's model "
                      "was changed after the ensemble was built): build stages."
                      f"{name} with kd.config.ensemble_stage(config.stages, {list(starts_from)}) after the change")


def _has_external_teacher(config, stage, memory_teachers: tuple[str, ...]) -> bool:
  """Whether the stage's teacher comes from outside the run (see kd.external.teacher_kind)."""
  return bool(stage.teacher_checkpoint or stage.teacher.startswith("export:") or (
      stage.teacher in memory_teachers and stage.teacher not in config.stages))


def _is_export(path: str) -> bool:
  """A folder that says which model reads it: a kd export (model.json) or a Hugging Face checkpoint."""
  from kd.convert import hf  # pylint: disable=g-import-not-at-top  # kd.convert imports kd.config.

  return os.path.exists(os.path.join(path, "model.json")) or hf.is_hf_folder(path)


def _check_augment_ranges(augment) -> None:
  """The inception crop's ranges and the mixing alphas (see kd.augment)."""
  for key, upper in (("rrc_scale", 1.0), ("rrc_ratio", None)):
    value = tuple(augment[key])
    if (len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not 0 < value[0] <= value[1] or (upper is not None and value[1] > upper)):
      bound = " <= 1" if upper is not None else ""
      raise ConfigError(f"data.augment.{key}={value!r} must be a pair (low, high) with 0 < low <= high{bound}, "
                        f"e.g. {base_config().data.augment[key]!r}")
  for key in ("mixup_alpha", "cutmix_alpha"):
    if not augment[key] >= 0:
      raise ConfigError(f"data.augment.{key}={augment[key]} must be >= 0 (0: off; e.g. 0.2 for mixup, 1.0 "
                        "for cutmix)")


def _check_splits(data_config) -> None:
  """Raises ConfigError for split keys that cannot work, before any data is read."""
  if "eval_split" in data_config:
    raise ConfigError("data.eval_split is now data.validation_split (evaluated during training, selects "
                      "'best') and data.test_split (the report card's split): set those instead")
  validation = data_config.validation_split
  if validation == "holdout":
    fraction = data_config.validation_fraction
    if not 0.0 < fraction < 1.0:
      raise ConfigError(f"data.validation_fraction={fraction} must lie in (0, 1): the share of "
                        f"data.train_split held out for validation (e.g. 0.1)")
  elif validation and validation == data_config.test_split:
    raise ConfigError(f"data.validation_split and data.test_split are both {validation!r}: selection on the "
                      "test split; use data.validation_split=holdout (a stratified slice of train), a "
                      "validation split, or '' (none)")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None,
             memory_teachers: tuple[str, ...] = ()) -> None:
  """Raises ConfigError (one line: the key, the problem, the fix) if the config cannot run.

  Args:
    config: an experiment config.
    num_devices: devices available to the mesh; None skips the checks that need them.
    memory_teachers: names of teachers given in memory (kd.run(..., teachers=...)).
  """
  _check_splits(config.data)  # Before the key check: it names the key that replaced an old one.
  _check_keys_and_types(config, base_config(), "")
  data = config.data
  for key in ("batch_size", "eval_batch_size"):
    if data[key] <= 0:
      raise ConfigError(f"data.{key}={data[key]} must be > 0")
  augment = data.augment
  if augment.crop_padding < 0:
    raise ConfigError(f"data.augment.crop_padding={augment.crop_padding} must be >= 0")
  if augment.crop_padding_mode not in CROP_PADDING_MODES:
    raise ConfigError(f"data.augment.crop_padding_mode={augment.crop_padding_mode!r}: choose one of "
                      f"{CROP_PADDING_MODES} (zeros, or the mirror image without the edge)")
  if augment.teacher_view not in TEACHER_VIEWS:
    raise ConfigError(f"data.augment.teacher_view={augment.teacher_view!r}: choose one of {TEACHER_VIEWS}")
  _check_augment_ranges(augment)
  cache = config.teacher_cache
  if cache.top_k < 0:
    raise ConfigError(f"teacher_cache.top_k={cache.top_k} must be >= 0 (0: store all logits)")
  augmenting = (augment.crop_padding or augment.flip or augment.random_resized_crop or augment.mixup_alpha > 0
                or augment.cutmix_alpha > 0)
  if cache.enabled and augmenting and not cache.allow_augment:
    raise ConfigError("teacher_cache.enabled=True but data.augment changes the inputs, so cached teacher "
                      "outputs (of un-augmented examples) would not match the student's view: turn "
                      "data.augment off, or set teacher_cache.allow_augment=True to train on them anyway")
  for name in config.stage_order:  # Methods that read the cache in their own way (kd.methods.lm_common).
    method = config.stages[name].method if name in config.stages else {}
    if method.get("top_k_cache", "dense") == "sparse" and not (cache.enabled and cache.top_k > 0):
      raise ConfigError(f"stages.{name}.method.top_k_cache='sparse' reads the teacher cache's top k, but "
                        f"teacher_cache.enabled={cache.enabled} and top_k={cache.top_k}: set "
                        "teacher_cache.enabled=True and teacher_cache.top_k=k > 0 (e.g. 64), or top_k_cache='dense'")
    if cache.enabled and method.get("init_from_teacher", False):
      raise ConfigError(f"stages.{name}.method.init_from_teacher=True copies the teacher's weights, which the "
                        "teacher cache does not hold: set init_from_teacher=False, or teacher_cache.enabled=False")
  for key in ("workers", "prefetch"):
    if data[key] < 0:
      raise ConfigError(f"data.{key}={data[key]} must be >= 0")
  if data.image_size < 0:
    raise ConfigError(f"data.image_size={data.image_size} must be >= 0 (0: images as stored)")
  if config.checkpoint.every_steps <= 0:
    raise ConfigError(f"checkpoint.every_steps={config.checkpoint.every_steps} must be > 0")
  if config.checkpoint.keep < 1:
    raise ConfigError(f"checkpoint.keep={config.checkpoint.keep} must be >= 1")
  if config.nonfinite.policy not in NONFINITE_POLICIES:
    raise ConfigError(f"nonfinite.policy={config.nonfinite.policy!r}: choose one of {NONFINITE_POLICIES}")
  if config.log_every_steps <= 0:
    raise ConfigError(f"log_every_steps={config.log_every_steps} must be > 0")
  if config.eval_every_steps < 0:
    raise ConfigError(f"eval_every_steps={config.eval_every_steps} must be >= 0 (0: only at the end)")
  if not config.seeds or not all(isinstance(s, int) and s >= 0 for s in config.seeds):
    raise ConfigError(f"seeds={config.seeds!r} must be a non-empty tuple of integers >= 0, e.g. (0, 1, 2)")
  if len(set(config.seeds)) != len(config.seeds):
    raise ConfigError(f"seeds={config.seeds!r} repeats a seed; list each seed once")
  if not config.stage_order:
    raise ConfigError(f"stage_order is empty: list the stages to run, from {sorted(config.stages.keys())}")
  seen = []
  for name in config.stage_order:
    if name not in config.stages:
      raise ConfigError(f"stage_order names {name!r}, which is not in stages {sorted(config.stages.keys())}")
    stage = config.stages[name]
    external = _has_external_teacher(config, stage, memory_teachers)
    if stage.teacher_checkpoint and not stage.teacher_model.name and not _is_export(stage.teacher_checkpoint):
      raise ConfigError(f"stages.{name}.teacher_checkpoint={stage.teacher_checkpoint!r} needs the model that "
                        f"reads it: set stages.{name}.teacher_model (e.g. kd.models.model_config('wrn', depth=40, "
                        "widen_factor=2, preprocess='cifar100')), or give a kd export as teacher='export:<dir>' or a Hugging "
                        "Face checkpoint folder")
    if methods.needs_teacher(stage.method):
      if not stage.teacher and not stage.teacher_checkpoint:
        raise ConfigError(f"stages.{name}.method {stage.method.name!r} needs a teacher: set "
                          f"stages.{name}.teacher to an earlier stage (one of {seen}), to 'export:<dir>', "
                          "or set teacher_model and teacher_checkpoint")
      if "," in stage.teacher and not external:
        members = tuple(member.strip() for member in stage.teacher.split(","))
        raise ConfigError(f"stages.{name}.teacher={stage.teacher!r} names several teachers: make them one stage, "
                          f"config.stages.ensemble = kd.config.ensemble_stage(config.stages, {members}), run it "
                          f"before {name!r} and set stages.{name}.teacher='ensemble'")
      if stage.teacher.startswith("ema:"):
        _check_ema_teacher(config, name)
      elif not external and stage.teacher not in seen:
        memory = f", or a teacher given in memory ({list(memory_teachers)})" if memory_teachers else ""
        raise ConfigError(f"stages.{name}.teacher={stage.teacher!r} must be a stage that runs before "
                          f"{name!r} in stage_order (earlier stages: {seen}), 'export:<dir>'{memory}")
    _check_init_stages(config, name, seen)
    source = methods.connector_source(stage.method)
    if source and source not in seen:
      raise ConfigError(f"stages.{name}.method {stage.method.name!r} loads the connector trained in stage "
                        f"{source!r}, which must run before {name!r} in stage_order; earlier stages: {seen}")
    if source and not methods.exports_connector(config.stages[source].method):
      raise ConfigError(f"stages.{name}.method {stage.method.name!r} loads the connector of stage {source!r}, "
                        f"whose method {config.stages[source].method.name!r} exports none: point it at "
                        "the stage that trains it (e.g. method 'ft_paraphraser')")
    seen.append(name)
  for role in ("teacher", "baseline", "student"):
    if (role == "teacher" and config.report.teacher not in config.stages and config.report.student in config.stages
        and _has_external_teacher(config, config.stages[config.report.student], memory_teachers)):
      continue  # The report card measures the student's external teacher.
    if config.report[role] not in config.stages:
      raise ConfigError(f"report.{role}={config.report[role]!r} is not a stage; stages: "
                        f"{sorted(config.stages.keys())}")
  if config.report.headline not in HEADLINES:
    raise ConfigError(f"report.headline={config.report.headline!r}: choose one of {HEADLINES}")
  if config.report.headline == "best" and not (config.data.validation_split and config.eval_every_steps):
    raise ConfigError("report.headline='best' selects a step by validation accuracy, which needs "
                      "data.validation_split (e.g. holdout) and eval_every_steps > 0: set both, or "
                      "report.headline=last")
  for name in config.report.compare:
    if name not in config.stage_order:
      raise ConfigError(f"report.compare names {name!r}, which is not in stage_order {list(config.stage_order)}")
  if num_devices is not None:
    mesh_devices = num_devices if config.mesh.data == -1 else config.mesh.data
    if config.mesh.data != -1 and not 0 < config.mesh.data <= num_devices:
      raise ConfigError(f"mesh.data={config.mesh.data} but {num_devices} devices are available: "
                        "set it to -1 (all) or a number up to that")
    for key in ("batch_size", "eval_batch_size"):
      if data[key] % mesh_devices:
        raise ConfigError(f"data.{key}={data[key]} does not divide over {mesh_devices} devices: "
                          f"use a multiple of {mesh_devices}")
    distributed.check_mesh(config, num_devices)
