"""Runs an experiment: its stages in order (each skipped when finished), then the report card."""

import importlib.util
import json
import os
import sys
from typing import Any, Sequence

from absl import logging
import jax
import ml_collections

from kd import checkpoint
from kd import config as config_lib
from kd import data
from kd import distributed
from kd import errors
from kd import external
from kd import fingerprint
from kd import lm
from kd import models
from kd import methods
from kd import report as report_lib
from kd import train
from kd.models import lora
from kd.errors import ConfigError
from kd.errors import WorkdirError


def check(config: ml_collections.ConfigDict, workdir: str, stages: Sequence[str],
          overwrite: Sequence[str] = ()) -> None:
  """Everything that can be checked before compiling: the config, the dataset, the teachers, and that
  the workdir holds no results of another config (stages in `overwrite` excepted, see kd.fingerprint)."""
  config_lib.validate(config, num_devices=jax.device_count(), memory_teachers=external.memory_names())
  for name in stages:
    if name not in config.stages:
      raise ConfigError(f"--stages names {name!r}, which is not a stage; stages: {list(config.stage_order)}")
  spec = data.load_spec(config.data.name, config.data.data_dir, config.data.image_size)
  for split in data.splits.tfds_splits(config.data):
    data.check_split(config.data.name, split, config.data.data_dir, spec)
  lm.check_stages(config, spec, stages)
  external_hashes = {}
  for name in stages:
    _check_model_runs(config, name, spec)
    train.resolve_stage_features(config, name, spec)
    external_hashes[name] = _check_external_weights(config, name, spec)
    for seed in config.seeds:
      run_dir = train.seed_dir(workdir, seed)
      for dependency in external.stage_dependencies(config, name):  # Its teacher, its init_from stages.
        if dependency not in stages and not train.is_finished(os.path.join(run_dir, dependency)):
          role = "teacher stage" if dependency == config.stages[name].teacher else "stage (init_from)"
          raise ConfigError(f"stage {name!r} needs {role} {dependency!r}, which has no finished run in "
                            f"{run_dir}: run it too (leave out --stages) or point --workdir at its run")
        _check_exported_model(config, dependency, os.path.join(run_dir, dependency))
      source = methods.connector_source(config.stages[name].method)
      if source and source not in stages and not train.is_finished(os.path.join(run_dir, source)):
        raise ConfigError(f"stage {name!r} loads the connector trained in stage {source!r}, which has no "
                          f"finished run in {run_dir}: run it too (leave out --stages)")
  _check_identities(config, workdir, stages, external_hashes, overwrite)
  _check_writable(workdir)


def _check_model_runs(config: ml_collections.ConfigDict, stage_name: str, spec) -> None:
  """The stage's model builds and runs on the dataset's inputs (traced, not compiled): an error in a
  model of the user's own is one line naming its file and line, before anything trains."""
  model_config = config.stages[stage_name].model
  module = models.build_model(model_config, spec.num_classes)
  dtype = "int32" if lm.is_language_model(spec) else spec.input_dtype
  example = jax.ShapeDtypeStruct((2,) + spec.input_shape, dtype)
  try:
    jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x), example)
  except Exception as e:  # pylint: disable=broad-except
    where = errors.user_code_error(e)
    if where is None:
      raise
    raise ConfigError(f"stages.{stage_name}.model {model_config.name!r} fails on {spec.name}'s inputs "
                      f"{spec.input_shape}: {where}") from e


def _check_identities(config: ml_collections.ConfigDict, workdir: str, stages: Sequence[str],
                      external_hashes: dict[str, str | None], overwrite: Sequence[str]) -> None:
  """Every stage to run, and every earlier stage they read, holds no results of another config."""
  needed = set(stages)
  for name in stages:  # Teachers (and init_from stages) read from this workdir must be the config's too.
    needed.update(external.stage_dependencies(config, name))
  for name in [name for name in config.stage_order if name in needed]:  # Teachers first.
    if name in overwrite:
      continue
    for seed in config.seeds:
      resolved = fingerprint.identity(config, name, seed, external_hashes.get)
      stage_dir = os.path.join(train.seed_dir(workdir, seed), name)
      fingerprint.check(stage_dir, name, resolved, fingerprint.recorded(stage_dir), workdir,
                        allow_extension=name in stages)  # A teacher read as it is must be what the config says.


def _check_external_weights(config: ml_collections.ConfigDict, stage_name: str, spec) -> str | None:
  """An external teacher and `init_from` weights load and fit their models (read, not compiled).

  Returns the external teacher's fingerprint (None when the teacher is a stage, or there is none).
  """
  fingerprint_of_teacher = None
  if external.teacher_kind(config, stage_name) not in ("", "stage", "ema"):
    teacher = external.load_teacher(config, stage_name, "", spec)
    example = {spec.input_key: jax.ShapeDtypeStruct((2,) + spec.input_shape, spec.input_dtype)}
    try:
      out = jax.eval_shape(lambda v, b: teacher.make_apply(spec.input_key)(v, b, train=False),
                           teacher.variables, example)
    except Exception as e:  # pylint: disable=broad-except  # Whatever a foreign model raises on these inputs.
      raise ConfigError(f"stages.{stage_name}: the teacher ({external.describe(config, stage_name)}) cannot "
                        f"run on {spec.name}'s inputs {spec.input_shape} ({type(e).__name__}: {e})") from e
    if tuple(out["logits"].shape) != (2, spec.num_classes) and not lm.is_language_model(spec):
      raise ConfigError(f"stages.{stage_name}: the teacher ({external.describe(config, stage_name)}) predicts "
                        f"{out['logits'].shape[-1]} classes but {spec.name} has {spec.num_classes}: use a "
                        "teacher trained on this dataset's classes")
    fingerprint_of_teacher = teacher.fingerprint()
  if config.stages[stage_name].init_from and not config_lib.init_stages(config.stages[stage_name]):
    module = models.build_model(config.stages[stage_name].model, spec.num_classes)
    external.initial_variables(config, stage_name, module, spec)
  return fingerprint_of_teacher


def _check_exported_model(config: ml_collections.ConfigDict, stage_name: str, stage_dir: str) -> None:
  """A finished stage's exported model must be the architecture its config describes."""
  if not train.is_finished(stage_dir):
    return
  exported = checkpoint.read_model_description(stage_dir)
  expected = json.loads(json.dumps(lora.exported_config(config.stages[stage_name].model.to_dict())))
  if json.loads(json.dumps(exported["model"])) != expected:
    raise ConfigError(
        f"the model exported in {stage_dir} is {exported['model']}, but stages.{stage_name}.model is "
        f"{expected}: point --workdir at the run of this teacher, or use a fresh --workdir to train it")
  num_classes = data.load_spec(config.data.name, config.data.data_dir, config.data.image_size).num_classes
  if exported["dataset"]["num_classes"] != num_classes:
    raise ConfigError(
        f"the model exported in {stage_dir} predicts {exported['dataset']['num_classes']} classes of "
        f"{exported['dataset']['name']}, but data.name={config.data.name!r} has "
        f"{num_classes}: use matching datasets")


def _check_writable(workdir: str) -> None:
  """Fails early, before any compile, when the workdir cannot be written."""
  probe = os.path.join(workdir, f".kd-write-probe-{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("probe")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} is not writable ({e.strerror}): choose another --workdir or "
                       "make it writable; nothing in it was changed") from e


def run(config: ml_collections.ConfigDict, workdir: str, stages: Sequence[str] | None = None, *,
        teachers: dict[str, Any] | None = None, wait_for_lock: bool = False,
        overwrite: Sequence[str] = (), stage_store: str = "") -> dict[str, Any] | None:
  """Runs `stages` (default: `config.stage_order`) for every seed, then the report card.

  Each seed's run lives in `<workdir>/seed_<n>/<stage>`; the report averages over seeds.

  Args:
    config: an experiment config.
    workdir: the run's folder.
    stages: the stages to run (default: all of `config.stage_order`).
    teachers: models from memory that stages name as their `teacher`:
      {name: (module_or_apply, variables[, preprocess])}, with a Linen module, an NNX module
      (variables None: its own) or an apply function `apply(variables, batch, *, train, rngs=None)`
      returning logits or kd's output dict; `preprocess` (or the stage's `teacher_model.preprocess`)
      states the inputs it expects.
    wait_for_lock: when another process is training a stage (kd.locks), wait for it instead of
      raising WorkdirError.
    overwrite: stages whose folders hold results of another config (kd.fingerprint) to move to
      `<workdir>/superseded/` and train again, instead of refusing to run.
    stage_store: a folder of stages by identity, shared by runs in other workdirs: each stage folder
      becomes a link to `<stage_store>/<identity digest>`, so a stage another run has trained with the
      same identity (config, data, seed, teacher) is reused, not trained again (kd.sweep does this
      within a sweep).

  Returns:
    The report (also in `<workdir>/report.json`), or None when a stage the report needs is not
    finished (e.g. when only some stages were asked for).
  """
  with external.memory_teachers(teachers):
    return _run(config, workdir, stages, wait_for_lock=wait_for_lock, overwrite=overwrite,
                stage_store=stage_store)


def _run(config: ml_collections.ConfigDict, workdir: str, stages: Sequence[str] | None, *,
         wait_for_lock: bool = False, overwrite: Sequence[str] = (), stage_store: str = "") -> dict[str, Any] | None:
  stages = list(stages or config.stage_order)
  for name in overwrite:
    if name not in stages:
      raise ConfigError(f"--overwrite names {name!r}, which is not a stage this run trains: {stages}")
  check(config, workdir, stages, overwrite)
  os.makedirs(workdir, exist_ok=True)
  for name in overwrite:
    for seed in config.seeds:
      moved = fingerprint.supersede(os.path.join(train.seed_dir(workdir, seed), name), workdir, seed)
      if moved:
        logging.warning("[%s] --overwrite: moved its old folder to %s", name, moved)
  for seed in config.seeds:
    for name in config.stage_order:
      if name in stages:
        train.train_stage(config, name, train.seed_dir(workdir, seed), seed=seed, wait_for_lock=wait_for_lock,
                          store=os.path.abspath(stage_store) if stage_store else "")
  if not all(train.is_finished(os.path.join(train.seed_dir(workdir, seed), config.report[role]))
             for role in report_lib.ROLES for seed in config.seeds
             if config.report[role] in config.stages):
    logging.info("Not every stage of the report card is finished; no report.")
    return None
  report = report_lib.build(config, workdir)
  if distributed.is_primary():  # With several processes, one writes the shared files.
    print(report_lib.write(report, workdir), flush=True)
  return report


def make_config_folder_importable(path: str) -> None:
  """Puts the config file's folder on sys.path (for this process), so it can import files beside it."""
  folder = os.path.dirname(os.path.abspath(path))
  if folder not in sys.path:
    sys.path.insert(0, folder)


def load_config(path: str, arg: str | None = None, *, validate: bool = True,
                **overrides) -> ml_collections.ConfigDict:
  """Loads `get_config(arg)` from an experiment file, applies dotted overrides, and validates it.

  The file's folder becomes importable (see `make_config_folder_importable`).
  Example: `load_config("experiments/quickstart.py", "smoke", **{"stages.student.num_steps": 50})`.
  """
  spec = importlib.util.spec_from_file_location("kd_experiment_config", path)
  if spec is None or not os.path.exists(path):
    raise ConfigError(f"no experiment file at {path}")
  make_config_folder_importable(path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg is not None else module.get_config()
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise ConfigError(f"unknown config key {dotted}")
    node[leaf] = value
  if validate:
    config_lib.validate(config)
  return config
