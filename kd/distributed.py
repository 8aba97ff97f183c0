"""Devices and hosts: the mesh, how the train state, the teacher and the batch are laid out on it,
and starting JAX on several processes.

The mesh has two axes, `("data", "fsdp")`, of sizes `mesh.data` x `mesh.fsdp`:

  batch          split over both axes (every device gets `batch_size / (data * fsdp)` examples);
  student        parameters, optimizer state and BatchNorm statistics: replicated when `mesh.fsdp`
                 is 1, else fully sharded (FSDP): each array's largest dimension that divides by
                 `mesh.fsdp` is split over the "fsdp" axis (arrays with no such dimension stay
                 replicated). XLA gathers the parameters for the forward pass and reduce-scatters
                 the gradients, so the update is the same as on one device;
  teacher        `mesh.teacher`: "replicated", "fsdp" (as the student), or "all" (the largest dimension
                 that divides by every device of the mesh is split over both axes), so that a teacher
                 larger than one device's memory fits.

Only the layout changes: the same global batch gives the same loss and parameters (up to the order
of floating-point sums) on any mesh.
"""

import os
from typing import Any

from absl import logging
import jax
import ml_collections

from kd.errors import ConfigError

DATA, FSDP = "data", "fsdp"
TEACHER_SHARDINGS = ("replicated", "fsdp", "all")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes; `mesh.data` -1 takes every device left over by `mesh.fsdp`."""
  fsdp = mesh_config.get("fsdp", 1)
  data = num_devices // fsdp if mesh_config.data == -1 else mesh_config.data
  return data, fsdp


def check_mesh(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """ConfigError for a mesh that does not fit the devices or the batch."""
  mesh_config = config.mesh
  fsdp = mesh_config.get("fsdp", 1)
  if fsdp < 1:
    raise ConfigError(f"mesh.fsdp={fsdp} must be >= 1 (1: no FSDP)")
  if mesh_config.get("teacher", "replicated") not in TEACHER_SHARDINGS:
    raise ConfigError(f"mesh.teacher={mesh_config.teacher!r}: choose one of {TEACHER_SHARDINGS}")
  if mesh_config.data == -1 and num_devices % fsdp:
    raise ConfigError(f"mesh.fsdp={fsdp} does not divide the {num_devices} devices: use a divisor of "
                      f"{num_devices}, or set mesh.data too")
  data, fsdp = mesh_shape(mesh_config, num_devices)
  if data < 1 or data * fsdp > num_devices:
    raise ConfigError(f"mesh.data={mesh_config.data} x mesh.fsdp={fsdp} needs {data * fsdp} devices but "
                      f"{num_devices} are available: lower mesh.data or mesh.fsdp")
  for key in ("batch_size", "eval_batch_size"):
    if config.data[key] % (data * fsdp):
      raise ConfigError(f"data.{key}={config.data[key]} does not divide over the {data}x{fsdp} mesh "
                        f"(mesh.data x mesh.fsdp): use a multiple of {data * fsdp}")


def make_mesh(mesh_config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The ("data", "fsdp") mesh over the first data x fsdp devices (Auto axes: plain indexing works)."""
  data, fsdp = mesh_shape(mesh_config, jax.device_count())
  return jax.make_mesh((data, fsdp), (DATA, FSDP), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=jax.devices()[:data * fsdp])


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  """The leading (batch) dimension split over every device of the mesh."""
  return jax.NamedSharding(mesh, jax.P((DATA, FSDP)))


def shard_spec(shape: tuple[int, ...], axis_size: int, axes) -> jax.P:
  """Splits the largest dimension of `shape` that divides by `axis_size` over `axes`; else replicated.

  Ties go to the first such dimension; a size-1 axis means replicated.
  """
  if axis_size == 1:
    return jax.P()
  candidates = [(size, -index) for index, size in enumerate(shape) if size % axis_size == 0 and size > 1]
  if not candidates:
    return jax.P()
  _, negative_index = max(candidates)
  spec = [None] * len(shape)
  spec[-negative_index] = axes
  return jax.P(*spec)


def fsdp_shardings(tree: Any, mesh: jax.sharding.Mesh, axes=FSDP) -> Any:
  """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs): see `shard_spec`."""
  axes_tuple = axes if isinstance(axes, tuple) else (axes,)
  axis_size = 1
  for axis in axes_tuple:
    axis_size *= mesh.shape[axis]
  return jax.tree.map(lambda leaf: jax.NamedSharding(mesh, shard_spec(tuple(leaf.shape), axis_size, axes)), tree)


def state_shardings(abstract_state, mesh: jax.sharding.Mesh):
  """The TrainState's shardings: params, model state and optimizer state FSDP-sharded over "fsdp"
  (replicated when its size is 1); the step counter, RNG key and counters replicated."""
  replicated = jax.NamedSharding(mesh, jax.P())
  shardings = jax.tree.map(lambda _: replicated, abstract_state)
  if mesh.shape[FSDP] == 1:
    return shardings
  return shardings.replace(params=fsdp_shardings(abstract_state.params, mesh),
                           model_state=fsdp_shardings(abstract_state.model_state, mesh),
                           opt_state=fsdp_shardings(abstract_state.opt_state, mesh))


def teacher_shardings(variables, mesh: jax.sharding.Mesh, mode: str = "replicated"):
  """Shardings of the teacher's variables for `mesh.teacher` (see the module docstring)."""
  if mode == "fsdp":
    return fsdp_shardings(variables, mesh, FSDP)
  if mode == "all":
    return fsdp_shardings(variables, mesh, (DATA, FSDP))
  return jax.tree.map(lambda _: jax.NamedSharding(mesh, jax.P()), variables)


# Several processes (hosts).

COORDINATOR_ENV = ("KD_COORDINATOR_ADDRESS", "KD_NUM_PROCESSES", "KD_PROCESS_ID")


def initialize() -> bool:
  """Starts JAX's multi-process runtime when this process is one of several; True if it did.

  In a Slurm job step of several tasks (`srun -n N ...`), `jax.distributed.initialize()`
  finds the coordinator, the number of processes and this process's id itself. Elsewhere, set
  KD_COORDINATOR_ADDRESS (host:port of process 0), KD_NUM_PROCESSES and KD_PROCESS_ID. A single
  process (the default) starts nothing. Each process then loads its own part of every global batch
  (`kd.data.train_iterator(shard_index=...)`), and Orbax writes each process's shards of a checkpoint.
  """
  if jax.distributed.is_initialized():
    return True
  address = os.environ.get(COORDINATOR_ENV[0])
  if address:
    try:
      num_processes, process_id = int(os.environ[COORDINATOR_ENV[1]]), int(os.environ[COORDINATOR_ENV[2]])
    except (KeyError, ValueError):
      raise ConfigError(f"{COORDINATOR_ENV[0]} is set, so {COORDINATOR_ENV[1]} and {COORDINATOR_ENV[2]} must be "
                        "integers too (the number of processes, and this one's id from 0)") from None
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes, process_id=process_id)
  elif int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:  # A job step of several tasks (srun -n N).
    jax.distributed.initialize()
  else:
    return False
  logging.info("process %d of %d, %d local of %d devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def is_primary() -> bool:
  """Whether this process writes the files that all processes share (logs, results)."""
  return jax.process_index() == 0


def shutdown(*outputs) -> None:
  """Waits for `outputs` and for every process, then stops the multi-process runtime.

  A process that leaves while a collective is still running can hang at exit: `float()` and
  `np.asarray()` wait only for the local shards, so wait for everything, then meet at a barrier.
  """
  if not jax.distributed.is_initialized():
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(outputs)
  multihost_utils.sync_global_devices("kd-shutdown")
  jax.distributed.shutdown()


class NullWriter:
  """A MetricsWriter for processes other than the primary one: the primary writes the shared logs."""

  rows = 0

  def write(self, step: int, scalars: dict[str, float]) -> None:
    del step, scalars

  def close(self) -> None:
    pass


def prepare_dataset(config: ml_collections.ConfigDict) -> None:
  """The primary process prepares the dataset (TFDS) first; the others wait, then read it.

  Processes on one host that prepare a dataset at the same time race to rename TFDS's folders.
  """
  from kd import data  # pylint: disable=g-import-not-at-top

  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if is_primary():
    data.load_spec(config.data.name, config.data.data_dir)
  multihost_utils.sync_global_devices("kd-dataset-prepared")


# The learning rate and the global batch size.

LR_SCALING_RULES = ("none", "linear", "sqrt")


def scaled_learning_rate(learning_rate: float, rule: str, batch_size: int, base_batch_size: int) -> float:
  """The peak learning rate for a global `batch_size`, given the rate tuned at `base_batch_size`.

  "linear": lr x batch / base (Goyal et al., "Accurate, Large Minibatch SGD", arXiv:1706.02677, sec. 2.1);
  "sqrt": lr x sqrt(batch / base) (Krizhevsky, "One weird trick", arXiv:1404.5997; suits Adam);
  "none": lr unchanged.
  """
  if rule == "linear":
    return learning_rate * batch_size / base_batch_size
  if rule == "sqrt":
    return learning_rate * (batch_size / base_batch_size) ** 0.5
  return learning_rate
