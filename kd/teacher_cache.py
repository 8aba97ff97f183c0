"""Teacher-output cache: the teacher's forward pass over the training split, computed once.

Offline distillation with a fixed teacher and un-augmented inputs recomputes the same teacher outputs
every epoch. The cache stores them once, per example, and the trainer reads them by the batch's
`index` (the example's position in the split) instead of running the teacher.

Layout, in `<teacher_cache.dir or <run>/teacher_cache>/<teacher stage>__<split>/`:

    outputs.array_record   one record per example, in split order (msgpack of numpy arrays:
                           `logits` [..., V], or `top_log_probs` / `top_indices` [..., k] and
                           `rest_log_mass` [...], plus `features/<path>`); readable with
                           `grain.sources.ArrayRecordDataSource`
    cache.json             the key and what it covers; written last, so its presence means complete

The key is a SHA-256 of the teacher's exported files (`model/`, `model.json`) or, for a teacher with no
export (a checkpoint, a model given in memory), of its variables and model config, the dataset's name,
split and preprocessing (`image_size`), the bytes of the split's arrays, the stored features and
`top_k`. A cache whose key differs (another teacher, other data) is stale: it is rebuilt, never used.

Large vocabularies: `top_k` > 0 stores the k largest log-probabilities, their class indices and the
log of the remaining probability mass (Hinton-style soft targets only need the head of the
distribution). `dense_log_probs` rebuilds [..., V] log-probabilities with the remaining mass spread
evenly over the other V - k classes, so softmax(log p / T) = softmax(logits / T) on the top k for any
temperature T, up to that spread. Both work for logits of any rank, e.g. [B, L, V] for a language model.
"""

import hashlib
import json
import os
import shutil
from typing import Any, Callable

from absl import logging
from array_record.python import array_record_module
import flax.serialization
import grain
import jax
import jax.numpy as jnp
import numpy as np

from kd import data as data_lib

FORMAT_VERSION = 1
RECORDS = "outputs.array_record"
CACHE_JSON = "cache.json"
# Floor on the probability left to each class outside the top k: log(0) would make KL's p log p NaN.
MIN_CLASS_PROB = 1e-30


def top_k_log_probs(logits_xV: jax.Array, k: int) -> dict[str, jax.Array]:
  """The k most likely classes of softmax(logits) along the last axis, any leading shape.

  Returns:
    {"top_log_probs": [..., k] float32 (descending), "top_indices": [..., k] int32,
     "rest_log_mass": [...] float32, log(1 - sum of the top k probabilities)}.
  """
  log_probs = jax.nn.log_softmax(jnp.asarray(logits_xV, jnp.float32), axis=-1)
  values, indices = jax.lax.top_k(log_probs, k)
  rest = jnp.clip(1.0 - jnp.sum(jnp.exp(values), axis=-1), 0.0, 1.0)
  return {"top_log_probs": values, "top_indices": indices.astype(jnp.int32),
          "rest_log_mass": jnp.log(jnp.maximum(rest, MIN_CLASS_PROB))}


def dense_log_probs(top: dict[str, jax.Array], vocab_size: int) -> jax.Array:
  """[..., V] log-probabilities from `top_k_log_probs`: the top k as stored, the remaining mass
  spread evenly over the other V - k classes (each at least MIN_CLASS_PROB)."""
  values, indices = top["top_log_probs"], top["top_indices"]
  others = vocab_size - values.shape[-1]
  fill = top["rest_log_mass"] - np.log(max(others, 1))
  fill = jnp.maximum(fill, np.log(MIN_CLASS_PROB))[..., None]
  leading = values.shape[:-1]
  flat_values = values.reshape(-1, values.shape[-1])
  flat_indices = indices.reshape(-1, indices.shape[-1])
  dense = jnp.broadcast_to(fill, leading + (vocab_size,)).reshape(-1, vocab_size)
  rows = jnp.arange(flat_values.shape[0])[:, None]
  dense = dense.at[rows, flat_indices].set(flat_values)
  return dense.reshape(leading + (vocab_size,))


def _hash_folder(digest, path: str) -> None:
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      file_path = os.path.join(root, name)
      digest.update(os.path.relpath(file_path, path).encode())
      with open(file_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          digest.update(chunk)


def cache_key(teacher_dir: str, *, dataset: str, split: str, image_size: int, arrays: dict[str, np.ndarray],
              feature_paths: tuple[str, ...], top_k: int) -> str:
  """SHA-256 of everything the cached outputs depend on (see the module docstring).

  `teacher_dir` is the teacher's export folder, or the fingerprint of a teacher that has none.
  """
  from kd import checkpoint  # pylint: disable=g-import-not-at-top

  digest = hashlib.sha256()
  description = {"format": FORMAT_VERSION, "dataset": dataset, "split": split, "image_size": image_size,
                 "features": list(feature_paths), "top_k": top_k}
  digest.update(json.dumps(description, sort_keys=True).encode())
  if os.path.isdir(teacher_dir):
    with open(os.path.join(teacher_dir, checkpoint.MODEL_JSON), "rb") as f:
      digest.update(f.read())
    _hash_folder(digest, os.path.join(teacher_dir, checkpoint.MODEL_DIR))
  else:  # A teacher without an export: the fingerprint of its variables (kd.external.Teacher).
    digest.update(teacher_dir.encode())
  for key in sorted(arrays):
    digest.update(key.encode())
    digest.update(str(arrays[key].shape).encode() + arrays[key].dtype.str.encode())
    digest.update(np.ascontiguousarray(arrays[key]).tobytes())
  return digest.hexdigest()


def cache_folder(root: str, teacher_name: str, split: str) -> str:
  safe_split = "".join(c if c.isalnum() else "_" for c in split)
  return os.path.join(root, f"{teacher_name}__{safe_split}")


def _read_meta(folder: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(folder, CACHE_JSON)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def build(folder: str, key: str, teacher_apply, teacher_variables, arrays: dict[str, np.ndarray], *,
          top_k: int, batch_size: int) -> None:
  """Runs the teacher over every example of `arrays` (in order) and writes the cache to `folder`."""
  if os.path.exists(folder):
    shutil.rmtree(folder)
  os.makedirs(folder)

  @jax.jit
  def forward(variables, batch):
    out = teacher_apply(variables, batch, train=False)
    stored = top_k_log_probs(out["logits"], top_k) if top_k else {"logits": out["logits"].astype(jnp.float32)}
    return {**stored, **{f"features/{path}": value for path, value in out.get("features", {}).items()}}

  writer = array_record_module.ArrayRecordWriter(os.path.join(folder, RECORDS), "group_size:1")
  count, shapes = 0, {}
  try:
    for batch in data_lib.eval_batches(arrays, batch_size):
      outputs = jax.device_get(forward(teacher_variables, {k: v for k, v in batch.items() if k != "mask"}))
      for row in range(int(batch["mask"].sum())):
        example = {name: np.asarray(value[row]) for name, value in outputs.items()}
        writer.write(flax.serialization.msgpack_serialize(example))
        count += 1
      shapes = {name: list(value.shape[1:]) for name, value in outputs.items()}
  finally:
    writer.close()
  meta = {"key": key, "num_examples": count, "top_k": top_k, "shapes": shapes}
  with open(os.path.join(folder, CACHE_JSON + ".tmp"), "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(os.path.join(folder, CACHE_JSON + ".tmp"), os.path.join(folder, CACHE_JSON))


def read(folder: str) -> dict[str, np.ndarray]:
  """The cache as stacked arrays, [N, ...] per stored output, indexed by example."""
  source = grain.sources.ArrayRecordDataSource([os.path.join(folder, RECORDS)])
  examples = [flax.serialization.msgpack_restore(source[i]) for i in range(len(source))]
  return {name: np.stack([example[name] for example in examples]) for name in examples[0]}


def load_or_build(root: str, teacher_name: str, teacher_dir: str, *, dataset: str, split: str,
                  image_size: int, arrays: dict[str, np.ndarray], teacher_apply, teacher_variables,
                  feature_paths: tuple[str, ...], top_k: int, batch_size: int) -> dict[str, np.ndarray]:
  """The cached outputs for this teacher and data: read if the key matches, else (re)built first."""
  data_arrays = {k: v for k, v in arrays.items() if k != "index"}
  key = cache_key(teacher_dir, dataset=dataset, split=split, image_size=image_size, arrays=data_arrays,
                  feature_paths=feature_paths, top_k=top_k)
  folder = cache_folder(root, teacher_name, split)
  meta = _read_meta(folder)
  if meta is not None and meta.get("key") == key and meta.get("num_examples") == data_lib.num_examples(arrays):
    logging.info("teacher cache %s: key matches, reading it", folder)
  else:
    if meta is not None:
      logging.warning("teacher cache %s is stale (another teacher or other data): rebuilding it", folder)
    else:
      logging.info("teacher cache %s: building it (%d examples)", folder, data_lib.num_examples(arrays))
    build(folder, key, teacher_apply, teacher_variables, data_arrays, top_k=top_k, batch_size=batch_size)
  return read(folder)


def make_cached_apply(num_classes: int, top_k: int) -> Callable[..., dict[str, Any]]:
  """A `teacher_apply` that reads the cache instead of running the teacher.

  Its "variables" are the cached arrays (an argument of the step, like a teacher's variables);
  it gathers the batch's examples by `batch["index"]`.
  """

  def apply(cache, batch, *, train: bool = False, rngs=None) -> dict[str, Any]:
    del train, rngs
    rows = {name: jnp.take(value, batch["index"], axis=0) for name, value in cache.items()}
    if top_k:
      logits = dense_log_probs(rows, num_classes)
    else:
      logits = rows["logits"]
    features = {name[len("features/"):]: value for name, value in rows.items() if name.startswith("features/")}
    return {"logits": logits, "features": features}

  return apply
