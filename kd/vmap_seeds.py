"""Many small runs in one program: a stage trained for S seeds x a grid of method scalars with `jax.vmap`.

For small models a single run leaves the device mostly idle; vmapping the train step over a stack of
train states trains every member at once, in one compiled program:

    result = vmap_seeds.train_members(config, "student", run_dir, seeds=(0, 1, 2),
                                      grid={"temperature": (2.0, 4.0)})
    result["groups"]  # per temperature: test accuracy mean and std over the 3 seeds

Member (seed, values) is the same computation as `train.train_stage(config, stage, ..., seed=seed)`
with those method values: its initialisation (`PRNGKey(seed)`), its data order (the Grain iterator
seeded with `seed`), and the same step (`train.train_step`). Grid keys are the stage's method
parameters that are plain numbers (temperature, loss weights); they enter the loss as traced values,
so one compile serves the whole grid. The teacher (exported in `<run_dir>/<teacher>`) is shared by all
members. One device, no checkpoints: meant for minutes-long sweeps of small models
(`benchmarks/vmap_seeds.py` measures the gain).
"""

import functools
import itertools
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd import data
from kd import evaluation
from kd import methods
from kd import external
from kd import models
from kd import train
from kd.errors import ConfigError


def _check_grid(method: Mapping[str, Any], grid: Mapping[str, Sequence[float]], where: str) -> None:
  for key, values in grid.items():
    if key == "name" or key not in method:
      numeric = sorted(k for k, v in method.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
      raise ConfigError(f"grid key {key!r} is not a parameter of {where} ({method['name']}): use one of {numeric}")
    if not isinstance(method[key], (int, float)) or isinstance(method[key], bool) or not values:
      raise ConfigError(f"grid key {key!r}: {where}.{key} must be a number and the grid non-empty to vmap over it")


def train_members(config: ml_collections.ConfigDict, stage_name: str, run_dir: str, *,
                  seeds: Sequence[int], grid: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
  """Trains stage `stage_name` for every (seed, grid point) in one vmapped, jitted program.

  Args:
    config: a validated experiment config.
    stage_name: the stage to train; its teacher, if any, is read from `<run_dir>/<teacher>`.
    run_dir: where the teacher's export is (`train.seed_dir(workdir, seed)` of a finished run).
    seeds: S seeds.
    grid: {method parameter: values}; the members are seeds x the product of the grid.

  Returns:
    {"members": [{"seed", grid values..., "accuracy" (test), "validation_accuracy", "loss"}], "groups":
    [{grid values..., "accuracy_mean", "accuracy_std", "validation_accuracy_mean", "validation_accuracy_std",
    "seeds"}] (validation only with data.validation_split), "variables": the members' student variables stacked on a
    leading axis, "num_members", "first_step_seconds" (mostly the compile), "train_seconds" (the other
    steps)}.
  """
  stage = config.stages[stage_name]
  grid = dict(grid or {})
  _check_grid(stage.method, grid, f"stages.{stage_name}.method")
  points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
  members = [(seed, point) for seed in seeds for point in points]
  for point in points:  # Each grid point's values are checked as the config's would be.
    methods.check_method_config({**stage.method, **point}, f"stages.{stage_name}.method (grid {point})")
  num_members = len(members)

  data_config = config.data
  spec = data.load_spec(data_config.name, data_config.data_dir)
  # Members are compared on validation (choose a grid point there) and reported on test.
  loaded = data.splits.load(data_config, "train", "validation", "test")
  train_arrays = loaded.pop("train")
  eval_sets = {role: arrays for role, arrays in loaded.items() if arrays is not None}
  iterators = {seed: data.train_iterator(train_arrays, batch_size=data_config.batch_size, seed=seed)
               for seed in seeds}

  stage_features = train.resolve_stage_features(config, stage_name, spec)
  module = models.build_model(stage.model, spec.num_classes)
  student_apply = models.make_apply(module, spec.input_key)
  student_train_apply = models.make_apply(module, spec.input_key, stage_features.student_paths)
  teacher = external.load_teacher(config, stage_name, run_dir, spec)
  teacher_apply = teacher.make_apply(spec.input_key, stage_features.teacher_paths) if teacher else None
  teacher_variables = teacher.variables if teacher else {}
  connector = methods.build_connector(stage.method, stage_features.student_shapes,
                                      stage_features.teacher_shapes, len(train_arrays["label"]))
  optimizer, learning_rate = train.make_optimizer(stage.optimizer, stage.num_steps, data_config.batch_size)
  base_loss = methods.build_loss(stage.method)
  example_batch = {spec.input_key: jnp.zeros((2,) + spec.input_shape, spec.input_dtype),
                   "label": jnp.zeros((2,), jnp.int32), "index": jnp.zeros((2,), jnp.int32)}
  init = functools.partial(train.init_train_state, module=module, optimizer=optimizer,
                           input_key=spec.input_key, connector=connector,
                           student_apply=student_train_apply, teacher_apply=teacher_apply)

  def member_step(state, teacher_variables, batch, values):
    # The grid's values are traced: one program for every grid point.
    loss_fn = functools.partial(base_loss, **values)
    return train.train_step(state, teacher_variables, batch, student_apply=student_train_apply,
                            teacher_apply=teacher_apply, loss_fn=loss_fn, optimizer=optimizer,
                            learning_rate=learning_rate, connector=connector,
                            nonfinite_policy=config.nonfinite.policy)

  step_fn = jax.jit(jax.vmap(member_step, in_axes=(0, None, 0, 0)), donate_argnums=0)
  rngs = jnp.stack([jax.random.PRNGKey(seed) for seed, _ in members])
  state = jax.jit(jax.vmap(init, in_axes=(0, None, None)))(rngs, example_batch, teacher_variables)
  values = {key: jnp.asarray([point[key] for _, point in members], jnp.float32) for key in grid}
  seed_index = np.asarray([list(seeds).index(seed) for seed, _ in members])

  def next_batch():
    per_seed = [next(iterators[seed]) for seed in seeds]
    return {key: np.stack([per_seed[i][key] for i in seed_index]) for key in per_seed[0]}

  start = time.perf_counter()
  state, metrics = jax.block_until_ready(step_fn(state, teacher_variables, next_batch(), values))
  first_step_seconds = time.perf_counter() - start  # Mostly the compile.
  start = time.perf_counter()
  for _ in range(stage.num_steps - 1):
    state, metrics = step_fn(state, teacher_variables, next_batch(), values)
  jax.block_until_ready(state)
  train_seconds = time.perf_counter() - start

  variables = train.student_variables(state)
  logits_fn = jax.jit(jax.vmap(lambda v, batch: student_apply(v, batch, train=False)["logits"],
                               in_axes=(0, None)))
  def accuracies(arrays):  # [M]
    logits = []
    for batch in data.eval_batches(arrays, data_config.eval_batch_size):
      mask = batch.pop("mask")
      logits.append(np.asarray(logits_fn(variables, batch))[:, mask])
    logits = np.concatenate(logits, axis=1)  # [M, N, C]
    return [evaluation.accuracy(logits[m], arrays["label"]) for m in range(num_members)]

  by_role = {role: accuracies(arrays) for role, arrays in eval_sets.items()}
  final_loss = np.asarray(metrics["loss"])
  results = [{"seed": seed, **point, "accuracy": by_role["test"][m], "loss": float(final_loss[m]),
              **({"validation_accuracy": by_role["validation"][m]} if "validation" in by_role else {})}
             for m, (seed, point) in enumerate(members)]
  groups = []
  for point in points:
    group = {**point, "seeds": list(seeds)}
    for key in ("accuracy", "validation_accuracy"):
      values = np.asarray([r[key] for r in results if key in r and all(r[k] == v for k, v in point.items())])
      if len(values):
        group[f"{key}_mean"] = float(values.mean())
        group[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    groups.append(group)
  return {"members": results, "groups": groups, "variables": jax.device_get(variables),
          "num_members": num_members, "first_step_seconds": first_step_seconds,
          "train_seconds": train_seconds}
