r"""What the checkpoint manifests cost: hashing a checkpoint against Orbax saving it.

    python benchmarks/checksum.py [--model=resnet32x4] [--repeats=3]

Builds the train state of a CIFAR-100 model (default resnet32x4: params, BatchNorm statistics and SGD
momentum, at their real sizes, filled with random numbers so that nothing compresses away), then, in
one run on one disk: the time of an Orbax save of it (`save` + `wait_until_finished`, as kd saves),
the time to write its manifest (SHA-256 of every file, kd.checkpoint.write_checkpoint_manifest) and to
verify it (what a restore adds), and their ratios. Medians over `--repeats` saves.
"""

import functools
import os
import shutil
import statistics
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from kd import checkpoint
from kd import models
from kd import train

_MODEL = flags.DEFINE_string("model", "resnet32x4", "A model of kd's zoo, built for CIFAR-100 (32x32x3, 100 classes).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Saves timed (the median is reported).")
_DIR = flags.DEFINE_string("dir", "", "Folder to save into (default: a temporary folder, removed after).")


def _train_state(model_name: str):
  module = models.build_model(models.zoo_model_config(model_name), 100)
  example_batch = {"image": jnp.zeros((2, 32, 32, 3)), "label": jnp.zeros((2,), jnp.int32)}
  optimizer = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9, nesterov=True))
  init = functools.partial(train.init_train_state, module=module, optimizer=optimizer)
  abstract = jax.eval_shape(init, jax.random.key(0), example_batch)
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  filled = [jax.random.normal(key, leaf.shape, leaf.dtype) if jnp.issubdtype(leaf.dtype, jnp.floating)
            else jnp.zeros(leaf.shape, leaf.dtype) for key, leaf in zip(keys, leaves)]
  return jax.block_until_ready(jax.tree.unflatten(treedef, filled))


def _folder_bytes(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(parent, name)) for parent, _, files in os.walk(folder) for name in files)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of every save at INFO.
  state = _train_state(_MODEL.value)
  state_bytes = models.count_bytes(state)
  root = _DIR.value or tempfile.mkdtemp(prefix="kd-checksum-")
  # Orbax's own manager, without kd's manifests, so that the save is timed alone.
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(root), "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
                                  item_names=("state", "data"))
  save_seconds, manifest_seconds, verify_seconds = [], [], []
  try:
    for step in range(_REPEATS.value + 1):  # The first save (compiling Orbax's paths) is not timed.
      start = time.perf_counter()
      manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"step": step})))
      manager.wait_until_finished()
      saved = time.perf_counter()
      step_dir = os.path.join(str(manager.directory), str(step))
      checkpoint.write_checkpoint_manifest(step_dir)
      hashed = time.perf_counter()
      status, detail = checkpoint.verify_manifest(os.path.join(step_dir, checkpoint.MANIFEST), step_dir)
      verified = time.perf_counter()
      assert status == "ok", detail
      if step:
        save_seconds.append(saved - start)
        manifest_seconds.append(hashed - saved)
        verify_seconds.append(verified - hashed)
    files_bytes = _folder_bytes(step_dir)
  finally:
    manager.close()
    if not _DIR.value:
      shutil.rmtree(root, ignore_errors=True)
  save, manifest, verify = (statistics.median(x) for x in (save_seconds, manifest_seconds, verify_seconds))
  print(f"{_MODEL.value} train state: {state_bytes / 1e6:.1f} MB of arrays, {files_bytes / 1e6:.1f} MB on disk "
        f"({jax.default_backend()}, medians of {_REPEATS.value} saves)")
  print(f"  Orbax save (save + wait_until_finished)  {save * 1e3:8.1f} ms")
  print(f"  manifest (SHA-256 of every file)         {manifest * 1e3:8.1f} ms   "
        f"{files_bytes / manifest / 1e9:.2f} GB/s")
  print(f"  verify on restore                        {verify * 1e3:8.1f} ms")
  print(f"  manifest / save                          {manifest / save:8.3f}")
  print(f"  verify / save                            {verify / save:8.3f}")


if __name__ == "__main__":
  app.run(main)
