"""Training one stage: the train state, the jitted distillation step, and the loop around it."""

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import threading
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kd import augment
from kd import checkpoint
from kd import config as config_lib
from kd import data
from kd import distributed
from kd import evaluation
from kd import external
from kd import features
from kd import fingerprint
from kd import lm
from kd import locks
from kd import logs
from kd import methods
from kd import models
from kd import optimizer as optimizer_lib
from kd import provenance
from kd import pruning
from kd import teacher_cache
from kd.lm import evaluation as lm_evaluation
from kd.models import lora
from kd.errors import Interrupted
from kd.errors import TrainingError
from kd.errors import WorkdirError

make_optimizer = optimizer_lib.make_optimizer  # Part of kd.train's interface.

EMA_TEACHER = "ema_teacher"  # model_state key of a moving-average teacher (teacher = "ema:<decay>").
RESULT_JSON = "result.json"  # Written last: its presence means the stage is finished.


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree (checkpointed whole).

  Attributes:
    step: number of updates applied so far.
    params: {"student": the student's trainable parameters, "connector": the method's ({} if none)}.
    model_state: {"student": ..., "connector": ...}, their other variable collections (BatchNorm
      statistics, a memory bank).
    opt_state: the optimizer's state.
    rng: base PRNG key; step `i` uses `fold_in(rng, i)`, so a resumed run draws the same numbers.
    nonfinite_count: number of steps whose loss or gradient was NaN or Inf (their updates were
      not applied).
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_count: jax.Array


def init_train_state(rng: jax.Array, example_batch, teacher_variables=None, initial_variables=None, *,
                     module, optimizer, input_key: str = "image", connector=None, student_apply=None,
                     teacher_apply=None, init_from_teacher=None, ema_teacher: bool = False) -> TrainState:
  """A fresh TrainState; pure, so `jax.eval_shape` and `jax.jit(out_shardings=...)` apply.

  A connector (see `kd.methods`) is initialised on the student's and teacher's outputs for
  `example_batch`, which needs `student_apply`, `teacher_apply` and `teacher_variables`.
  `initial_variables` (the stage's `init_from`, `kd.external.initial_variables`), if given, replace
  the random initialisation; `init_from_teacher(student_params, teacher_params) -> student_params`, if
  given, initialises the student from the teacher (`kd.methods.build_init_from_teacher`). With
  `ema_teacher`, the student's initial variables are also the moving-average teacher's
  (`model_state["ema_teacher"]`, see train_step).
  """
  init_rng, connector_rng, step_rng = jax.random.split(rng, 3)
  variables = models.init_variables(module, init_rng, example_batch[input_key])
  if initial_variables is not None:  # Over the random initialisation: a LoRA student's factors keep theirs.
    variables = _overlay(variables, initial_variables)
  params = {"student": variables.pop("params"), "connector": {}}
  if init_from_teacher is not None:
    params["student"] = init_from_teacher(params["student"], teacher_variables["params"])
  model_state = {"student": variables, "connector": {}}
  if ema_teacher:
    model_state[EMA_TEACHER] = {"params": params["student"], **variables}
    teacher_variables = model_state[EMA_TEACHER]
  if connector is not None:
    student_out = student_apply({"params": params["student"], **variables}, example_batch, train=False)
    teacher_out = teacher_apply(teacher_variables, example_batch, train=False) if teacher_apply else None
    connector_variables = dict(connector.init({"params": connector_rng, "dropout": connector_rng},
                                              student_out, teacher_out, example_batch, train=False))
    params["connector"] = connector_variables.pop("params", {})
    model_state["connector"] = connector_variables
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=optimizer.init(params), rng=step_rng,
                    nonfinite_count=jnp.zeros((), jnp.int32))


def _overlay(initialised, given):
  """`given`'s arrays in place of `initialised`'s; what `given` lacks stays (nested dicts; any other: `given`)."""
  if not isinstance(given, dict) or not isinstance(initialised, dict):
    return given
  return {**initialised, **{key: _overlay(initialised.get(key), value) for key, value in given.items()}}


def student_variables(state: TrainState) -> dict[str, Any]:
  """The student's variables alone (no connector): what is evaluated and exported."""
  return {"params": state.params["student"], **state.model_state["student"]}


def train_step(state: TrainState, teacher_variables, batch, *, student_apply, teacher_apply,
               loss_fn, optimizer, learning_rate, connector=None, make_views=None,
               prepare_batch=None, nonfinite_policy: str = "stop",
               inject_nonfinite_at_step: int = 0, ema_decay: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update: teacher forward (no gradient), student forward and backward, optimizer update.

  Pure: no I/O, no config. The teacher's variables are an argument (never baked into the program
  as constants) and are only read.

  Args:
    state: the student's TrainState (donated by the compiled step).
    teacher_variables: the teacher's variables, or {} for a stage without a teacher.
    batch: {input_key: [B, ...], "label": [B]}.
    student_apply, teacher_apply: pure apply functions (`kd.models.make_apply`); teacher_apply is
      None for a stage without a teacher.
    loss_fn: `loss(student_out, teacher_out, batch) -> (loss, metrics)` (`kd.methods.build_loss`).
    optimizer: an optax transform.
    learning_rate: its schedule, reported in the metrics.
    connector: the method's trainable connector module, or None.
    make_views: `(batch, rng) -> (student batch, teacher batch)` augmenting on the device
      (`kd.augment.views`), or None to train on the batch as it comes.
    prepare_batch: `(student_variables, teacher_variables, batch, rng) -> batch`, run first, e.g. to
      generate a language model's batch with the teacher or the current student (no gradient flows
      through it); None to train on the batch as it comes.
    nonfinite_policy: a step whose loss or gradient is NaN or Inf never updates the state; under
      "stop", no later step does either (the host stops the run at its next log step and names the
      bad step), under "skip" training goes on.
    inject_nonfinite_at_step: if > 0, the student's logits are NaN at that step, counted from 1 as
      in the logs (fault injection, to test the policy).
    ema_decay: if > 0, the teacher is the exponential moving average of the student's variables,
      `state.model_state["ema_teacher"]` (teacher_variables is then unused): ema <- d * ema + (1 - d) *
      student after each applied update (Tarvainen & Valpola 2017, "Mean teachers", Eq. 1); it gets no
      gradient.

  Returns:
    (new_state, metrics) with scalar metrics: loss, the method's terms, accuracy, grad_norm,
    learning_rate, nonfinite (1 if this step was NaN/Inf), skipped_updates (so far).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  if ema_decay:
    teacher_variables = state.model_state[EMA_TEACHER]
  if prepare_batch is not None:
    batch = prepare_batch(jax.lax.stop_gradient(student_variables(state)), teacher_variables, batch,
                          jax.random.fold_in(rng, 3))
  teacher_batch = _teacher_view(batch)
  if make_views is not None:
    batch, teacher_batch = make_views(batch, jax.random.fold_in(rng, 2))
    loss_fn = augment.mixed_loss(loss_fn)  # Label terms weighted by mixup/cutmix's lambda, if mixed.
  teacher_out = None
  if teacher_apply is not None:
    teacher_out = jax.lax.stop_gradient(teacher_apply(teacher_variables, teacher_batch, train=False))

  def objective(params):
    student_out = student_apply({"params": params["student"], **state.model_state["student"]}, batch,
                                train=True, rngs={"dropout": rng})
    if inject_nonfinite_at_step > 0:
      poison = jnp.where(state.step + 1 == inject_nonfinite_at_step, jnp.nan, 1.0)
      # The features too: a chunked LM loss reads hidden states and head, not the logits.
      student_out = {**student_out, "logits": student_out["logits"] * poison,
                     "features": jax.tree.map(lambda f: f * poison, student_out.get("features", {}))}
    model_state = {**state.model_state, "student": student_out.get("state", state.model_state["student"])}
    if connector is not None:
      connector_variables = {"params": params["connector"], **state.model_state["connector"]}
      mutable = list(state.model_state["connector"])
      outputs = connector.apply(connector_variables, student_out, teacher_out, batch, train=True,
                                rngs={"dropout": jax.random.fold_in(rng, 1)}, mutable=mutable or False)
      connector_out, model_state["connector"] = outputs if mutable else (outputs, {})
      student_out = {**student_out, "connector": connector_out}
    # The step (0 for the first update) lets a method schedule its terms (DKD's warmup).
    loss, terms = loss_fn(student_out, teacher_out, {**batch, "step": state.step})
    return loss, (student_out, terms, model_state)

  (loss, (student_out, terms, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  updated = state.replace(
      params=optax.apply_updates(state.params, updates),
      model_state=model_state,
      opt_state=opt_state,
  )
  if ema_decay:
    updated = _update_moving_average(updated, ema_decay)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  apply_update = finite if nonfinite_policy == "skip" else finite & (state.nonfinite_count == 0)
  new_state = jax.tree.map(lambda new, old: jnp.where(apply_update, new, old), updated, state)
  new_state = new_state.replace(step=state.step + 1,
                                nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32))
  # Token datasets have no labels: their methods report token_accuracy among their terms.
  accuracy = {"accuracy": augment.accuracy(student_out["logits"], batch)} if "label" in batch else {}
  metrics = {"loss": loss, **terms, **accuracy, "grad_norm": grad_norm,
             "learning_rate": learning_rate(state.step), "nonfinite": (~finite).astype(jnp.float32),
             "skipped_updates": new_state.nonfinite_count.astype(jnp.float32)}
  return new_state, metrics


# A batch tokenized twice (a cross-tokenizer dataset) holds the teacher's own tokens under these keys.
TEACHER_TOKENS = {"teacher_tokens": "tokens", "teacher_mask": "mask", "teacher_loss_mask": "loss_mask"}


def _teacher_view(batch):
  """The batch as the teacher reads it: its own tokenization, where the batch has one (TEACHER_TOKENS)."""
  if "teacher_tokens" not in batch:
    return batch
  return {**batch, **{own: batch[key] for key, own in TEACHER_TOKENS.items() if key in batch}}


def _update_moving_average(state: TrainState, decay: float) -> TrainState:
  """The moving-average teacher moved towards the student's updated variables (BatchNorm statistics too)."""
  student = student_variables(state)
  average = jax.tree.map(lambda ema, new: decay * ema + (1.0 - decay) * new, state.model_state[EMA_TEACHER], student)
  return state.replace(model_state={**state.model_state, EMA_TEACHER: average})


@dataclasses.dataclass(frozen=True)
class StageFeatures:
  """The intermediate features a stage's method reads: resolved paths and their shapes (batch 2)."""

  student_paths: tuple[str, ...] = ()
  teacher_paths: tuple[str, ...] = ()
  student_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
  teacher_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)


def resolve_stage_features(config: ml_collections.ConfigDict, stage_name: str,
                           spec: data.DatasetSpec) -> StageFeatures:
  """Resolves the method's feature patterns against the models' tap points and checks their shapes.

  Traces the models with `jax.eval_shape` only (no compile), so it runs before anything else and
  raises ConfigError for a pattern that matches nothing or shapes the method cannot use.
  """
  stage = config.stages[stage_name]
  student_patterns, teacher_patterns = methods.feature_patterns(stage.method)
  if not student_patterns and not teacher_patterns:
    return StageFeatures()
  where = f"stages.{stage_name}.method"
  example = jax.ShapeDtypeStruct((2,) + spec.input_shape,
                                  jnp.int32 if lm.is_language_model(spec) else jnp.float32)

  def resolve(module, patterns, key):
    if not patterns:
      return (), {}
    taps = features.tap_points(module, example)
    paths = features.select(patterns, list(taps), f"{where}.{key}")
    return tuple(paths), {path: taps[path] for path in paths}

  student_paths, student_shapes = resolve(models.build_model(stage.model, spec.num_classes),
                                          student_patterns, "student_features")
  teacher_module = external.teacher_module(config, stage_name, spec) if teacher_patterns else None
  teacher_paths, teacher_shapes = resolve(teacher_module, teacher_patterns, "teacher_features")
  methods.check_feature_shapes(stage.method, student_shapes, teacher_shapes, where)
  return StageFeatures(student_paths, teacher_paths, student_shapes, teacher_shapes)


def make_mesh(mesh_config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The ("data", "fsdp") mesh of `mesh.data` x `mesh.fsdp` devices (see kd.distributed)."""
  return distributed.make_mesh(mesh_config)


def shard_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Places this process's part of a global batch on the mesh, split over the data axis."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def is_finished(stage_dir: str) -> bool:
  return os.path.exists(os.path.join(stage_dir, RESULT_JSON))


def read_result(stage_dir: str) -> dict[str, Any]:
  with open(os.path.join(stage_dir, RESULT_JSON)) as f:
    return json.load(f)


def seed_dir(workdir: str, seed: int) -> str:
  """The folder of one seed's run of an experiment; its stages are subfolders."""
  return os.path.join(workdir, f"seed_{seed}")


def train_stage(config: ml_collections.ConfigDict, stage_name: str, run_dir: str, *, seed: int,
                stop_after_step: int | None = None, wait_for_lock: bool = False,
                store: str = "") -> dict[str, Any] | None:
  """Trains one stage of an experiment into `<run_dir>/<stage_name>`, resuming if interrupted.

  A finished stage (its `result.json` exists) is not run again. Otherwise training starts from the
  latest checkpoint in the stage's folder, if any, with the data iterator where it stood.

  Args:
    config: a validated experiment config.
    stage_name: a key of `config.stages`.
    run_dir: the folder of this seed's run (`seed_dir(workdir, seed)`); a teacher stage is read
      from `<run_dir>/<teacher>`.
    seed: seeds initialisation, dropout and the data order.
    stop_after_step: return after this step, once its checkpoint is written, leaving the stage
      unfinished (for time-boxed jobs; a later call resumes it).
    wait_for_lock: when another process is training this stage (it holds `<stage>/.lock`, see
      kd.locks), wait for it to end instead of raising WorkdirError.
    store: a folder of stages by identity (kd.sweep's `<workdir>/stages`): the stage's folder becomes
      a link to `<store>/<identity digest>`, so runs whose stages have the same identity (sweep variants
      sharing a teacher) train it once; the others wait for it and reuse it.

  Returns:
    The stage's result (final eval metrics, throughput), or None if stopped early.
  """
  stage_dir = os.path.join(run_dir, stage_name)
  if store and _link_to_store(config, stage_name, run_dir, seed, store):
    wait_for_lock = True  # Another run may be training the shared stage: reuse it once it is done.
  _reopen_if_extended(config, stage_name, run_dir, seed, wait_for_lock)
  if is_finished(stage_dir):
    logging.info("[%s] already finished in %s; skipping", stage_name, stage_dir)
    return read_result(stage_dir)
  # Released however training ends; a killed process's lock is taken over as stale (kd.locks).
  with locks.stage_lock(stage_dir, wait=wait_for_lock):
    if is_finished(stage_dir):  # By the process this one waited for.
      logging.info("[%s] finished meanwhile in %s; skipping", stage_name, stage_dir)
      return read_result(stage_dir)
    return _train_stage(config, stage_name, run_dir, seed=seed, stop_after_step=stop_after_step)


def _reopen_if_extended(config: ml_collections.ConfigDict, stage_name: str, run_dir: str, seed: int,
                        wait_for_lock: bool) -> None:
  """A finished stage whose config now only asks for more steps (kd.fingerprint.extension) is reopened,
  to resume from its last checkpoint."""
  stage_dir = os.path.join(run_dir, stage_name)
  if not is_finished(stage_dir) or os.path.islink(stage_dir):  # A store's stage is shared: never reopened.
    return
  old_steps = fingerprint.extension(fingerprint.recorded(stage_dir), fingerprint.identity(config, stage_name, seed))
  if old_steps is None:
    return
  with locks.stage_lock(stage_dir, wait=wait_for_lock):
    if not is_finished(stage_dir):
      return
    moved = fingerprint.reopen(stage_dir, os.path.dirname(run_dir), seed, old_steps)
  logging.warning("[%s] num_steps %d -> %d: training on from step %d; the old result and export are in %s",
                  stage_name, old_steps, config.stages[stage_name].num_steps, old_steps, moved)
  if old_steps % config.log_every_steps:
    logging.warning("[%s] step %d is not a multiple of log_every_steps=%d: its log row (written because it "
                    "was the last step) stays, so metrics.jsonl has one row an uninterrupted run would not",
                    stage_name, old_steps, config.log_every_steps)


def _link_to_store(config: ml_collections.ConfigDict, stage_name: str, run_dir: str, seed: int,
                   store: str) -> bool:
  """Makes `<run_dir>/<stage>` a link to the store's folder of its identity; whether it is one.

  Stages whose weights come from outside the run (an external teacher, init_from) stay in place: their
  identity would need those weights' hash, which is only known once they are loaded.
  """
  stage_dir = os.path.join(run_dir, stage_name)
  if os.path.lexists(stage_dir):
    return os.path.islink(stage_dir)
  init_from = config.stages[stage_name].init_from
  if external.teacher_kind(config, stage_name) not in ("", "stage", "ema") or (
      init_from and not config_lib.init_stages(config.stages[stage_name])):
    return False
  entry = os.path.join(store, fingerprint.digest(fingerprint.identity(config, stage_name, seed)))
  os.makedirs(entry, exist_ok=True)
  os.makedirs(run_dir, exist_ok=True)
  os.symlink(os.path.abspath(entry), stage_dir)
  logging.info("[%s] %s is stage %s of the store %s", stage_name, stage_dir, os.path.basename(entry), store)
  return True


def _train_stage(config: ml_collections.ConfigDict, stage_name: str, run_dir: str, *, seed: int,
                 stop_after_step: int | None) -> dict[str, Any] | None:
  """`train_stage` for an unfinished stage, while this process holds its lock."""
  stage = config.stages[stage_name]
  stage_dir = os.path.join(run_dir, stage_name)

  # Data.
  data_config = config.data
  spec = data.load_spec(data_config.name, data_config.data_dir, data_config.image_size)
  # Train fits, validation selects, test reports (kd.data.splits); both are evaluated at eval steps.
  loaded = data.splits.load(data_config, "train", "validation", "test")
  train_arrays = loaded.pop("train")
  eval_sets = {role: arrays for role, arrays in loaded.items() if arrays is not None}
  mesh = make_mesh(config.mesh)
  replicated = jax.NamedSharding(mesh, jax.P())
  batch_sharding = distributed.batch_sharding(mesh)
  iterator = data.train_iterator(train_arrays, batch_size=data_config.batch_size, seed=seed,
                                 shard_index=jax.process_index(), shard_count=jax.process_count(),
                                 prefetch=data_config.prefetch, workers=data_config.workers)

  # Models and the step.
  stage_features = resolve_stage_features(config, stage_name, spec)
  module = models.build_model(stage.model, spec.num_classes)
  preprocess = models.preprocess_of(stage.model)
  student_apply = models.make_apply(module, spec.input_key, preprocess=preprocess)  # Eval, export: no features.
  student_train_apply = models.make_apply(module, spec.input_key, stage_features.student_paths, preprocess)
  initial_variables = external.initial_variables(config, stage_name, module, spec, run_dir)
  teacher_mode = config.mesh.get("teacher", "replicated")
  # A Hugging Face teacher's arrays go straight to their shardings as they are read.
  placement = lambda shape: distributed.teacher_shardings(jax.ShapeDtypeStruct(shape, jnp.float32), mesh,
                                                          teacher_mode)
  teacher = external.load_teacher(config, stage_name, run_dir, spec, placement=placement)
  ema_decay = external.ema_decay(config, stage_name)
  teacher_apply = _teacher_apply(teacher, ema_decay, module, spec.input_key, stage_features.teacher_paths, preprocess)
  teacher_sharding = distributed.teacher_shardings(teacher.variables if teacher else {}, mesh, teacher_mode)
  teacher_variables = jax.device_put(teacher.variables, teacher_sharding) if teacher else {}
  if teacher and config.teacher_cache.enabled:  # Read the teacher's outputs by example index instead.
    teacher_name = stage.teacher if teacher.source["kind"] == "stage" else f"{stage_name}_teacher"
    identity = (os.path.join(run_dir, stage.teacher) if teacher.source["kind"] == "stage"
                else teacher.fingerprint())
    cached = teacher_cache.load_or_build(
        config.teacher_cache.dir or os.path.join(run_dir, "teacher_cache"), teacher_name,
        identity, dataset=data_config.name, split=data.splits.describe(data_config, "train"),
        image_size=data_config.image_size, arrays=train_arrays, teacher_apply=teacher_apply,
        teacher_variables=teacher_variables, feature_paths=stage_features.teacher_paths,
        top_k=config.teacher_cache.top_k, batch_size=data_config.eval_batch_size)
    # Over the teacher's vocabulary: its own tokenizer's on a dataset with two tokenizations.
    teacher_apply = teacher_cache.make_cached_apply(external.teacher_data_shape(spec)[0], config.teacher_cache.top_k)
    teacher_sharding = jax.tree.map(lambda _: replicated, cached)
    teacher_variables = jax.device_put(cached, teacher_sharding)
  connector = methods.build_connector(stage.method, stage_features.student_shapes,
                                      stage_features.teacher_shapes, data.num_examples(train_arrays),
                                      student_model=stage.model.to_dict(), num_classes=spec.num_classes,
                                      input_key=spec.input_key)
  # A stage of 0 steps (init_from, nothing trained) still builds a step, never run.
  optimizer, learning_rate = make_optimizer(stage.optimizer, max(stage.num_steps, 1), data_config.batch_size)
  optimizer = lora.freeze_base(optimizer, stage.model)  # A LoRA student trains its factors only.
  optimizer = pruning.wrap(optimizer, stage.get("prune"), stage.num_steps)  # Masks in the optimizer's state.
  peak_learning_rate = distributed.scaled_learning_rate(
      stage.optimizer.learning_rate, stage.optimizer.get("lr_scaling", "none"), data_config.batch_size,
      stage.optimizer.get("base_batch_size", data_config.batch_size))
  logging.info("[%s] peak learning rate %g (optimizer.lr_scaling=%s: %g tuned at batch %d, batch %d)",
               stage_name, peak_learning_rate, stage.optimizer.get("lr_scaling", "none"),
               stage.optimizer.learning_rate, stage.optimizer.get("base_batch_size", data_config.batch_size),
               data_config.batch_size)
  loss_fn = methods.build_loss(stage.method)
  augment_config = data_config.augment
  make_views = augment.views_from_config(augment_config, spec.input_key, spec.input_shape)
  example_batch = {spec.input_key: jnp.zeros((2,) + spec.input_shape, spec.input_dtype),
                   "label": jnp.zeros((2,), jnp.int32), "index": jnp.zeros((2,), jnp.int32)}
  if lm.is_language_model(spec):  # Tokens and their mask, no label.
    example_batch = {"tokens": jnp.zeros((2,) + spec.input_shape, spec.input_dtype),
                     "mask": jnp.ones((2,) + spec.input_shape, bool), "index": jnp.zeros((2,), jnp.int32)}
  prepare_batch = methods.build_prepare_batch(stage.method, module, teacher.module if teacher else None)
  init_from_teacher = (methods.build_init_from_teacher(stage.method, f"stages.{stage_name}.method")
                       if teacher else None)
  init = functools.partial(init_train_state, module=module, optimizer=optimizer,
                           input_key=spec.input_key, connector=connector,
                           student_apply=student_train_apply, teacher_apply=teacher_apply,
                           init_from_teacher=init_from_teacher, ema_teacher=bool(ema_decay))
  rng = jax.random.PRNGKey(seed)
  abstract_state = jax.eval_shape(init, rng, example_batch, teacher_variables, initial_variables)
  state_sharding = distributed.state_shardings(abstract_state, mesh)
  step_fn = jax.jit(
      functools.partial(train_step, student_apply=student_train_apply, teacher_apply=teacher_apply,
                        loss_fn=loss_fn, optimizer=optimizer, learning_rate=learning_rate,
                        connector=connector, make_views=make_views, prepare_batch=prepare_batch,
                        nonfinite_policy=config.nonfinite.policy,
                        inject_nonfinite_at_step=config.nonfinite.inject_at_step, ema_decay=ema_decay),
      in_shardings=(state_sharding, teacher_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated),
      donate_argnums=0,
  )

  # The stage's identity: a folder holding results of another config is refused, never mixed in.
  resolved = fingerprint.identity(config, stage_name, seed, lambda _: teacher.fingerprint())
  fingerprint.check(stage_dir, stage_name, resolved, fingerprint.recorded(stage_dir), os.path.dirname(run_dir),
                    allow_extension=True)
  if distributed.is_primary():
    fingerprint.write(stage_dir, resolved)

  # State: restored, or fresh.
  manager = checkpoint.train_manager(stage_dir, keep=config.checkpoint.keep)
  abstract_with_shardings = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sharding)
  restored = checkpoint.restore_train_state(manager, abstract_with_shardings)
  log_rows, window = 0, []  # Of metrics.jsonl when the checkpoint was saved; the steps since its last row.
  evaluated_at_restore = True  # Whether the checkpoint's step, if an eval step, was evaluated before the save.
  if restored is not None:
    state, data_state = restored
    if set(data_state) == {"iterator", "log"}:
      evaluated_at_restore = data_state["log"].get("evaluated", True)
      data_state, log_rows, window = (data_state["iterator"], data_state["log"]["rows"],
                                      logs.restore_window(data_state["log"]["window"]))
    else:  # A checkpoint of an earlier kd: the iterator's state alone; its logs resume by step.
      log_rows = None
    iterator.set_state(data_state)
    logging.info("[%s] resuming from step %d", stage_name, int(state.step))
  else:
    state = jax.jit(init, out_shardings=state_sharding)(rng, example_batch, teacher_variables,
                                                         initial_variables)
    source = methods.connector_source(stage.method)
    if source:  # The connector holds what an earlier stage trained (FT's paraphraser): load it once.
      state = _load_pretrained_connector(state, os.path.join(run_dir, source), state_sharding)
  if distributed.is_primary():  # With several processes, one writes the shared files.
    provenance.record(stage_dir, config.to_dict(), seed, sources=_sources(stage, teacher, initial_variables))

  # The loop.
  step = int(state.step)
  writer = (logs.MetricsWriter(stage_dir, keep_rows=log_rows, resume_step=step) if distributed.is_primary()
            else distributed.NullWriter())
  progress = logs.Progress(stage_name, step, stage.num_steps, data_config.batch_size)
  start_step, start_time = step, time.perf_counter()
  predict = evaluation.make_predict(student_apply, mesh)
  if lm.is_language_model(spec):  # Perplexity and next-token accuracy, summed on the device.
    predict = _LanguageModelEval(lm_evaluation.make_evaluate(
        student_apply, mesh, bytes_per_id=lm_evaluation.bytes_per_id(data_config.name, spec.num_classes)))
  if not evaluated_at_restore and _is_eval_step(config, step, stage.num_steps):
    # A stage extended past its old end resumes from that end's checkpoint, where the evaluation of an
    # eval step was written after the save (as the final one) and so was not kept: write it again.
    writer.write(step, _eval_scalars(predict, student_variables(state), eval_sets, data_config.eval_batch_size))
  stop_on_nonfinite = config.nonfinite.policy == "stop"
  state_bytes = models.count_bytes(abstract_state)
  # On an accelerator, batches are gathered and copied ahead, in a thread, while the previous step runs.
  # On the CPU backend the "device" is the host's own cores, where such a thread only competes with the
  # step (benchmarks/pipeline.py measures both).
  batches = data.DevicePrefetch(iterator, functools.partial(shard_batch, sharding=batch_sharding),
                                enabled=jax.default_backend() != "cpu")
  with _StopSignals() as signals, _disk_errors(manager, stage_dir, writer), contextlib.closing(batches):
    while step < stage.num_steps:
      batch = next(batches)
      state, metrics = step_fn(state, teacher_variables, batch)
      step += 1
      window.append(metrics)
      log_now = step % config.log_every_steps == 0 or step == stage.num_steps
      # Read the signal flag once: one arriving later in this iteration is handled after the next step,
      # so a stop is always preceded by its save.
      received_signal = signals.received
      stop_now = received_signal is not None or (stop_after_step is not None and step >= stop_after_step)
      save_now = step % config.checkpoint.every_steps == 0 or step == stage.num_steps or stop_now
      if log_now or save_now:
        window = jax.device_get(window)
        if stop_on_nonfinite:  # Before saving: a checkpoint never holds a stopped run.
          _raise_if_nonfinite(window, step, stage_name, manager)
      if log_now:
        scalars = _summarize(window)
        window = []
        writer.write(step, scalars)
        progress.log(step, scalars)
      if _is_eval_step(config, step, stage.num_steps):
        writer.write(step, _eval_scalars(predict, student_variables(state), eval_sets,
                                         data_config.eval_batch_size))
      if save_now:
        _check_free_space(stage_dir, state_bytes, manager)
        # With the log's position and the steps not yet averaged into a row: a resumed run logs the
        # same rows as an uninterrupted one (see kd.logs.MetricsWriter).
        log_state = {"rows": writer.rows, "window": logs.window_state(window),
                     "evaluated": _is_eval_step(config, step, stage.num_steps)}
        checkpoint.save_train_state(manager, step, state, {"iterator": batches.get_state(), "log": log_state})
      if stop_now and step < stage.num_steps:
        manager.wait_until_finished()
        writer.close()
        if received_signal is not None:
          logging.warning("[%s] received signal %d: saved a checkpoint at step %d in %s; run the same "
                          "command again to resume", stage_name, received_signal, step, stage_dir)
          raise Interrupted(received_signal, step, stage_dir)
        logging.info("[%s] stopped after step %d as asked; run again to resume", stage_name, step)
        return None
    seconds = time.perf_counter() - start_time
    manager.wait_until_finished()

  # Final evaluation, export, and the marker that the stage is finished.
  variables = student_variables(state)
  eval_scalars = _eval_scalars(predict, variables, eval_sets, data_config.eval_batch_size)
  result = {"stage": stage_name, "seed": seed, "step": step, **eval_scalars,
            "examples": {"train": data.num_examples(train_arrays),
                         **{role: data.num_examples(arrays) for role, arrays in eval_sets.items()}},
            "nonzero_params": pruning.count_nonzero(variables["params"]),
            "train_seconds": seconds, "peak_learning_rate": peak_learning_rate,
            "train_examples_per_second": (step - start_step) * data_config.batch_size / max(seconds, 1e-9)}
  with _disk_errors(manager, stage_dir, writer):
    writer.write(step, eval_scalars)
    writer.close()
    # A LoRA student is exported merged into its base's architecture.
    exported_model, exported_variables = lora.exported(stage.model.to_dict(), jax.device_get(variables))
    checkpoint.export_model(stage_dir, exported_model, spec, exported_variables)
    _export_parts(stage_dir, stage, spec, state)
    if distributed.is_primary():
      with open(os.path.join(stage_dir, RESULT_JSON + ".tmp"), "w") as f:
        json.dump(result, f, indent=2)
      os.replace(os.path.join(stage_dir, RESULT_JSON + ".tmp"), os.path.join(stage_dir, RESULT_JSON))
  logging.info("[%s] finished: %s", stage_name, ", ".join(
      f"{role} accuracy {eval_scalars[role + '/accuracy']:.4f} ({data.splits.describe(data_config, role)})"
      for role in sorted(eval_sets, key=("test", "validation").index)))
  return result


def _export_parts(stage_dir: str, stage, spec, state: TrainState) -> None:
  """What a stage trains besides its student: the method's connector (`<stage>/connector/`, e.g. FT's
  paraphraser, mutual learning's peers) and a moving-average teacher (`<stage>/ema_teacher/`, a kd export
  of the student's architecture: `kd.load_model(<stage>/ema_teacher)`)."""
  if methods.exports_connector(stage.method):
    checkpoint.export_connector(stage_dir, jax.device_get(
        {"params": state.params["connector"], **state.model_state["connector"]}))
  if EMA_TEACHER in state.model_state:
    model_config, variables = lora.exported(stage.model.to_dict(), jax.device_get(state.model_state[EMA_TEACHER]))
    checkpoint.export_model(os.path.join(stage_dir, EMA_TEACHER), model_config, spec, variables)


def _teacher_apply(teacher: external.Teacher | None, ema_decay: float, module, input_key: str, feature_paths,
                   preprocess: str):
  """The teacher's apply function: a loaded teacher's, the student's own for a moving-average teacher
  (eval mode, its variables from the train state), or None."""
  if teacher is not None:
    return teacher.make_apply(input_key, feature_paths)
  if ema_decay:
    return models.make_apply(module, input_key, feature_paths, preprocess)
  return None


def _sources(stage, teacher: external.Teacher | None, initial_variables) -> dict[str, Any]:
  """Where the stage's teacher and initial weights came from, with hashes of their variables."""
  sources = {}
  if teacher is not None:
    sources["teacher"] = {**teacher.source, "variables_sha256": teacher.fingerprint(),
                          "preprocess": teacher.preprocess}
  if initial_variables is not None:
    sources["init_from"] = {"path": stage.init_from,
                            "variables_sha256": external.variables_sha256(initial_variables)}
  return sources


def _load_pretrained_connector(state: TrainState, source_dir: str, state_sharding) -> TrainState:
  """`state` with the connector's "pretrained" collection replaced by `source_dir`'s exported connector."""
  connector_state = dict(state.model_state["connector"])
  pretrained = dict(connector_state[methods.PRETRAINED])
  abstract = jax.eval_shape(lambda x: x, pretrained["connector"])
  pretrained["connector"] = checkpoint.load_connector(source_dir, abstract)
  connector_state[methods.PRETRAINED] = pretrained
  state = state.replace(model_state={**state.model_state, "connector": connector_state})
  return jax.device_put(state, state_sharding)


# Metrics that count since the start of the run: the window's last value, not its mean.
_CUMULATIVE_METRICS = ("skipped_updates",)


def _summarize(window: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Means over the steps since the last log line (last values for cumulative counts)."""
  return {f"train/{key}": float(window[-1][key] if key in _CUMULATIVE_METRICS
                                else np.mean([metrics[key] for metrics in window]))
          for key in window[0]}


def _is_eval_step(config, step: int, num_steps: int) -> bool:
  """Whether the loop evaluates after `step` (the last step's evaluation is the final one, written after
  its checkpoint)."""
  return bool(config.eval_every_steps) and step % config.eval_every_steps == 0 and step < num_steps


def _raise_if_nonfinite(window, step: int, stage_name: str, manager) -> None:
  """Under the "stop" policy: fails naming the first NaN/Inf step of `window` and its loss terms."""
  for index, metrics in enumerate(window):
    if metrics["nonfinite"]:
      bad_step = step - len(window) + index + 1
      bad = [f"{key}={float(value)}" for key, value in metrics.items()
             if key not in ("nonfinite", "skipped_updates") and not np.isfinite(value)]
      manager.wait_until_finished()
      raise TrainingError(
          f"[{stage_name}] step {bad_step}: non-finite {', '.join(bad)}; nothing from that step on was "
          f"applied or saved (latest checkpoint: step {manager.latest_step()}). Lower the learning rate "
          "or clip gradients (optimizer.grad_clip_norm), or set --config.nonfinite.policy=skip to skip "
          "such updates")


class _StopSignals:
  """While active, SIGTERM and SIGINT ask the loop to checkpoint and stop after the current step.

  A second SIGINT (Ctrl-C twice) stops at once, without saving.
  """

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Python allows handlers only there.
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def _disk_error(error: BaseException) -> OSError | None:
  """The OSError behind an error, if any: raised as such, or as TensorStore's text in Orbax's errors."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError) and error.errno is not None:
      return error
    code = re.search(r"os_error_code='(\d+)'", str(error))
    if code:
      errno_value = int(code.group(1))
      return OSError(errno_value, os.strerror(errno_value))
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def _check_free_space(stage_dir: str, state_bytes: int, manager) -> None:
  """Refuses to start a checkpoint that cannot fit: a clean error beats a half-written one."""
  needed = int(state_bytes * 1.1) + (1 << 20)  # Arrays plus metadata.
  free = shutil.disk_usage(stage_dir).free
  if free < needed:
    raise WorkdirError(
        f"cannot write to {stage_dir} (No space left on device: a checkpoint needs about "
        f"{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free): the checkpoints already there are intact "
        f"(latest: step {manager.latest_step()}); free space, then run the same command again to resume")


@contextlib.contextmanager
def _disk_errors(manager, stage_dir: str, writer=None):
  """Closes the checkpoint manager however the block ends; a failed write is one line (a WorkdirError).

  On an error, the metrics writer is closed too, and the partial folders of a checkpoint that was being
  written are removed (kd.checkpoint.remove_partial_checkpoints); an OSError behind it (a full, read-only
  or vanished path), or stage files removed under the run even if it went on, become a WorkdirError that
  says what happened and what is intact (WorkdirError.from_os_error).
  """
  try:
    yield
    manager.close()  # Waits for a save in flight: its failure is this block's.
    vanished = checkpoint.vanished_path(None, stage_dir, manager)  # Removed under a run that went on.
    if vanished:
      raise WorkdirError.from_os_error(vanished, stage_dir)
  except BaseException as e:  # pylint: disable=broad-except
    for resource in (writer, manager):  # Their threads would otherwise fail or hang at exit.
      try:
        if resource is not None:
          resource.close()
      except Exception:  # pylint: disable=broad-except  # The first error is the one to report.
        pass
    cause = None
    if isinstance(e, Exception) and not isinstance(e, (WorkdirError, TrainingError, Interrupted)):
      # Orbax reports a file removed under it in many ways, not all of them an OSError.
      cause = _disk_error(e) or checkpoint.vanished_path(e, stage_dir, manager)
    checkpoint.remove_partial_checkpoints(str(manager.directory), failed=cause is not None)
    if cause is None:
      raise
    raise WorkdirError.from_os_error(cause, stage_dir) from e


class _LanguageModelEval:
  """Stands in for `predict` in `_eval_scalars` when the stage trains a language model."""

  def __init__(self, evaluate):
    self.evaluate = evaluate


def _eval_scalars(predict, variables, eval_sets, batch_size) -> dict[str, float]:
  """`<role>/accuracy`, `<role>/loss` (and perplexity for a language model) for each of `eval_sets`
  ({"validation": arrays, "test": arrays}; validation absent without one)."""
  scalars = {}
  for role, arrays in eval_sets.items():
    if isinstance(predict, _LanguageModelEval):
      metrics = predict.evaluate(variables, arrays, batch_size)
    else:
      logits = predict(variables, arrays, batch_size)
      metrics = {"eval/accuracy": evaluation.accuracy(logits, arrays["label"]),
                 "eval/loss": evaluation.cross_entropy(logits, arrays["label"])}
    scalars.update({f"{role}/{key.split('/', 1)[1]}": value for key, value in metrics.items()})
  return scalars
