"""Teacher-output cache: the teacher's forward pass over the training split, computed once.

Offline distillation with a fixed teacher and un-augmented inputs recomputes the same teacher outputs
every epoch. The cache stores them once, per example, and the trainer reads them by the batch's
`index` (the example's position in the split) instead of running the teacher.

File format (FORMAT_VERSION 1), in `<teacher_cache.dir or <run>/teacher_cache>/<teacher stage>__<split>/`:

    outputs.array_record   one record per example, in split order, each a msgpack of numpy arrays
                           (`flax.serialization.msgpack_serialize`; readable with
                           `grain.sources.ArrayRecordDataSource`), float32 unless said otherwise:
                             top_k = 0:  `logits` [..., V], the teacher's logits;
                             top_k = k:  `top_log_probs` [..., k], the k largest log-probabilities of
                                         softmax(logits), descending; `top_indices` [..., k] int32, their
                                         classes (token ids); `rest_log_mass` [...], log(1 - sum of the
                                         top k probabilities), floored at log(MIN_CLASS_PROB);
                           plus `features/<path>` [...] for each teacher feature a method reads.
                           `...` is the example's own shape: () for a classifier, [L] for a language
                           model's window (a cross-tokenizer teacher's own length, as it reads its own
                           tokenization `teacher_tokens`).
    cache.json             {"format": FORMAT_VERSION, "key", "num_examples", "top_k", "vocab_size" (V, the
                           teacher's number of logits; caches written before it was recorded lack it),
                           "shapes" (each record's arrays)}; written last, so its presence means the
                           records are complete.

The key is a SHA-256 of the teacher's exported files (`model/`, `model.json`) or, for a teacher with no
export (a checkpoint, a model given in memory), of its variables and model config, the dataset's name,
split and preprocessing (`image_size`), the bytes of the split's arrays, the stored features,
`top_k` and the format. A cache whose key differs (another teacher, other data) is stale: it is
rebuilt, never used. A folder written in an older format, or whose cache.json or records lack what this
format stores, is rebuilt (one warning line names why); one written by a newer kd (a larger format) is
refused with one line, never overwritten or misread.

Large vocabularies: `top_k` > 0 stores the k largest log-probabilities, their class indices and the
log of the remaining probability mass (Hinton-style soft targets only need the head of the
distribution). The trainer's teacher (`make_cached_apply`) then gives methods two views of it:

  * `logits`: [..., V] log-probabilities rebuilt by `dense_log_probs`, the remaining mass spread
    evenly over the other V - k classes (each at least MIN_CLASS_PROB), so softmax(log p / T) =
    softmax(logits / T) on the top k for any temperature T, up to that spread. Under `jax.jit` it is
    computed only if a method reads it.
  * `top_k`: the stored arrays themselves (and `vocab_size`, [...] int32), read without any float
    [..., V] teacher array by methods with a sparse path: `kd.methods.lm_common` (method parameter
    `top_k_cache="sparse"`) compares the two models on the k + 1 buckets {the k cached classes, the
    rest} (`teacher_bucket_logits`, `student_bucket_logits`); lm_uld compares sorted probabilities
    with the tail's entries in closed form.

The teacher's tail at temperature T is the dense rebuild's, in closed form: each of the V - k other
classes holds p_rest = exp(rest_log_mass) / (V - k) (floored at MIN_CLASS_PROB), so its tempered weight
is p_rest^(1/T) and the tail bucket's is (V - k) p_rest^(1/T), i.e. the log-weight
log(V - k) + log(p_rest) / T next to log p_i / T of the top k. The bucketed distributions are thus
exactly the dense rebuild's and the student's, each summed over the tail; for an f-divergence (KL, reverse
KL, JSD, TV, the skew KLs) merging classes never increases the divergence (data processing), so the
sparse value is <= the dense-rebuild value, equal when the tail is empty (k = V) or when both models
spread the tail alike. With k < V, top-k distillation is biased (the student is taught nothing about the
tail's shape); Anshumann et al. 2025 show that bias and propose sampled sparse targets instead.

References:
  Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531, Section 2.
  Anshumann, Zaidi, Kedia, Ahn, Kwon, Lee, Lee & Lee, "Sparse Logit Sampling: Accelerating Knowledge
    Distillation in LLMs", ACL 2025, arXiv:2503.16870 (caching the top-k probabilities gives biased
    targets; random sampling of the stored classes gives unbiased ones).
  Csiszar, "Information-type measures of difference of probability distributions and indirect
    observations", Studia Sci. Math. Hungarica 2, 1967 (f-divergences do not grow when classes merge).
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

from kd.errors import ConfigError
from kd.errors import UserError

FORMAT_VERSION = 1
RECORDS = "outputs.array_record"
CACHE_JSON = "cache.json"
# Floor on the probability left to each class outside the top k: log(0) would make KL's p log p NaN.
MIN_CLASS_PROB = 1e-30
TOP_K_KEYS = ("top_log_probs", "top_indices", "rest_log_mass")
# A batch tokenized twice (a cross-tokenizer dataset) holds the teacher's own tokens under this key; the
# teacher reads them as its `tokens`, as in the train step (kd.train.TEACHER_TOKENS).
TEACHER_TOKENS = "teacher_tokens"


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


def _tail_log_prob(rest_log_mass: jax.Array, others) -> jax.Array:
  """log of each of the `others` tail classes' probability under the even spread, floored."""
  return jnp.maximum(rest_log_mass - jnp.log(jnp.maximum(others, 1)), np.log(MIN_CLASS_PROB))


def dense_log_probs(top: dict[str, jax.Array], vocab_size: int) -> jax.Array:
  """[..., V] log-probabilities from `top_k_log_probs`: the top k as stored, the remaining mass
  spread evenly over the other V - k classes (each at least MIN_CLASS_PROB)."""
  values, indices = top["top_log_probs"], top["top_indices"]
  fill = _tail_log_prob(top["rest_log_mass"], vocab_size - values.shape[-1])[..., None]
  leading = values.shape[:-1]
  flat_values = values.reshape(-1, values.shape[-1])
  flat_indices = indices.reshape(-1, indices.shape[-1])
  dense = jnp.broadcast_to(fill, leading + (vocab_size,)).reshape(-1, vocab_size)
  rows = jnp.arange(flat_values.shape[0])[:, None]
  dense = dense.at[rows, flat_indices].set(flat_values)
  return dense.reshape(leading + (vocab_size,))


def teacher_bucket_logits(top: dict[str, jax.Array], vocab_size, temperature: float = 1.0) -> jax.Array:
  """The teacher's k + 1 bucket log-weights at temperature T, [..., k + 1] (unnormalised).

  Buckets: the k cached classes, then the tail (the other V - k). With p_rest the even spread of the
  remaining mass (`dense_log_probs`), the tail's tempered weight is (V - k) p_rest^(1/T) in closed form,
  so softmax of these is `dense_log_probs(top, V) / T` softmaxed and summed over the tail (the module
  docstring). A static `vocab_size` equal to k drops the empty tail ([..., k]); a traced one (a
  cross-tokenizer cache's `vocab_size`, [...]) gives the empty tail weight 0 (log-weight -inf).
  """
  values, rest = top["top_log_probs"], top["rest_log_mass"]
  k = values.shape[-1]
  head = values / temperature
  if isinstance(vocab_size, int) and vocab_size == k:
    return head
  others = jnp.asarray(vocab_size) - k
  tail = jnp.where(others > 0, jnp.log(jnp.maximum(others, 1)) + _tail_log_prob(rest, others) / temperature,
                   -jnp.inf)
  return jnp.concatenate([head, jnp.broadcast_to(tail, rest.shape)[..., None]], axis=-1)


def student_bucket_logits(student_logits_xV: jax.Array, top_indices_xK: jax.Array,
                          temperature: float = 1.0) -> jax.Array:
  """The student's log-weights on the teacher's buckets at temperature T, [..., k + 1] ([..., k] if k = V).

  The cached classes' logits / T, then the exact log-sum-exp of the student's other logits / T (the
  tail's mass, no spread assumed), so softmax of these is softmax(logits / T) summed over the tail.
  """
  scaled = student_logits_xV.astype(jnp.float32) / temperature
  vocab_size, k = scaled.shape[-1], top_indices_xK.shape[-1]
  head = jnp.take_along_axis(scaled, top_indices_xK, axis=-1)
  if k == vocab_size:
    return head
  # The cached classes leave the tail: -inf there, then log-sum-exp over the vocabulary (no subtraction
  # of probabilities, which would cancel when the top k hold almost all the mass). Only a boolean
  # k-hot mask (one byte per class) is scattered, and XLA fuses the select into the sum: no float [..., V]
  # copy of the logits is made.
  cached = jnp.put_along_axis(jnp.zeros(scaled.shape, bool), top_indices_xK, True, axis=-1, inplace=False)
  # Shifted by the tail's own maximum, so that the sum is >= 1 (never underflows).
  shift = jax.lax.stop_gradient(jnp.max(jnp.where(cached, -jnp.inf, scaled), axis=-1, keepdims=True))
  tail = shift + jnp.log(jnp.sum(jnp.where(cached, 0.0, jnp.exp(scaled - shift)), axis=-1, keepdims=True))
  return jnp.concatenate([head, tail], axis=-1)


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
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta if isinstance(meta, dict) else None


def stored_keys(top_k: int, feature_paths: tuple[str, ...]) -> tuple[str, ...]:
  """The arrays each record of this format holds (the module docstring)."""
  return (TOP_K_KEYS if top_k else ("logits",)) + tuple(f"features/{path}" for path in feature_paths)


def _teacher_view(batch):
  """The batch as the teacher reads it: its own tokens where the dataset has a second tokenization."""
  if TEACHER_TOKENS not in batch:
    return batch
  return {**batch, "tokens": batch[TEACHER_TOKENS]}


def build(folder: str, key: str, teacher_apply, teacher_variables, arrays: dict[str, np.ndarray], *,
          top_k: int, batch_size: int) -> None:
  """Runs the teacher over every example of `arrays` (in order) and writes the cache to `folder`."""
  # Imported here: kd.data imports the methods, which import this module.
  from kd import data as data_lib  # pylint: disable=g-import-not-at-top

  if os.path.exists(folder):
    shutil.rmtree(folder)
  os.makedirs(folder)

  @jax.jit
  def forward(variables, batch):
    out = teacher_apply(variables, _teacher_view(batch), train=False)
    if top_k > out["logits"].shape[-1]:
      raise ConfigError(f"teacher_cache.top_k={top_k} is larger than the teacher's {out['logits'].shape[-1]} "
                        f"classes: set teacher_cache.top_k <= {out['logits'].shape[-1]} (or 0 for all logits)")
    stored = top_k_log_probs(out["logits"], top_k) if top_k else {"logits": out["logits"].astype(jnp.float32)}
    return {**stored, **{f"features/{path}": value for path, value in out.get("features", {}).items()}}

  writer = array_record_module.ArrayRecordWriter(os.path.join(folder, RECORDS), "group_size:1")
  count, shapes, vocab_size = 0, {}, None
  try:
    for batch in data_lib.eval_batches(arrays, batch_size):
      inputs = {k: v for k, v in batch.items() if k != "mask"}
      if vocab_size is None:
        logits = jax.eval_shape(lambda v, b: teacher_apply(v, _teacher_view(b), train=False)["logits"],
                                teacher_variables, inputs)
        vocab_size = int(logits.shape[-1])
      outputs = jax.device_get(forward(teacher_variables, inputs))
      for row in range(int(batch["mask"].sum())):
        example = {name: np.asarray(value[row]) for name, value in outputs.items()}
        writer.write(flax.serialization.msgpack_serialize(example))
        count += 1
      shapes = {name: list(value.shape[1:]) for name, value in outputs.items()}
  finally:
    writer.close()
  meta = {"format": FORMAT_VERSION, "key": key, "num_examples": count, "top_k": top_k, "vocab_size": vocab_size,
          "shapes": shapes}
  with open(os.path.join(folder, CACHE_JSON + ".tmp"), "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(os.path.join(folder, CACHE_JSON + ".tmp"), os.path.join(folder, CACHE_JSON))


def read(folder: str) -> dict[str, np.ndarray]:
  """The cache as stacked arrays, [N, ...] per stored output, indexed by example.

  A top-k cache also gets `vocab_size` [N] int32 (from cache.json): the teacher's number of classes,
  which a cross-tokenizer teacher does not share with the student (lm_uld reads it). A cache.json written
  before it was recorded has none: the same-vocabulary methods do not need it.
  """
  source = grain.sources.ArrayRecordDataSource([os.path.join(folder, RECORDS)])
  examples = [flax.serialization.msgpack_restore(source[i]) for i in range(len(source))]
  arrays = {name: np.stack([example[name] for example in examples]) for name in examples[0]}
  meta = _read_meta(folder) or {}
  if "top_log_probs" in arrays and meta.get("vocab_size"):
    arrays["vocab_size"] = np.full(len(examples), meta["vocab_size"], np.int32)
  return arrays


def _why_unusable(folder: str, meta: dict[str, Any] | None, key: str, num_examples: int,
                  expected: tuple[str, ...]) -> str:
  """Why the folder's cache cannot be read as this one ("" if it can); UserError for a newer format."""
  if meta is None:
    return "absent"
  version = meta.get("format", 1)  # cache.json of format 1 first had no "format" entry.
  if not isinstance(version, int) or version > FORMAT_VERSION:
    raise UserError(f"teacher cache {folder} was written in format {version!r} by a newer kd, and this kd reads "
                    f"format {FORMAT_VERSION}: point teacher_cache.dir elsewhere, or remove that folder to rebuild it")
  if version != FORMAT_VERSION:
    return f"it is in format {version}, this kd writes format {FORMAT_VERSION}"
  if meta.get("key") != key or meta.get("num_examples") != num_examples:
    return "stale (another teacher or other data)"
  shapes = meta.get("shapes")
  missing = [name for name in expected if not isinstance(shapes, dict) or name not in shapes]
  if missing:
    return f"its cache.json lacks {missing} (cut short, or written by something else)"
  return ""  # A cache.json of format 1 written before "vocab_size" was recorded is read as it is (see `read`).


def load_or_build(root: str, teacher_name: str, teacher_dir: str, *, dataset: str, split: str,
                  image_size: int, arrays: dict[str, np.ndarray], teacher_apply, teacher_variables,
                  feature_paths: tuple[str, ...], top_k: int, batch_size: int) -> dict[str, np.ndarray]:
  """The cached outputs for this teacher and data: read if the key matches, else (re)built first.

  A folder in another format, or whose cache.json or records lack an array this one stores, is rebuilt
  (one warning line says why); one in a newer format is refused (UserError), never misread.
  """
  from kd import data as data_lib  # pylint: disable=g-import-not-at-top

  data_arrays = {k: v for k, v in arrays.items() if k != "index"}
  key = cache_key(teacher_dir, dataset=dataset, split=split, image_size=image_size, arrays=data_arrays,
                  feature_paths=feature_paths, top_k=top_k)
  folder = cache_folder(root, teacher_name, split)
  expected = stored_keys(top_k, feature_paths)
  num_examples = data_lib.num_examples(arrays)
  why = _why_unusable(folder, _read_meta(folder), key, num_examples, expected)
  if not why:
    logging.info("teacher cache %s: key matches, reading it", folder)
    cached = read(folder)
    missing = [name for name in expected if name not in cached]
    if not missing and all(len(value) == num_examples for value in cached.values()):
      return cached
    why = f"its records lack {missing} or hold another number of examples"
  if why == "absent":
    logging.info("teacher cache %s: building it (%d examples)", folder, num_examples)
  else:
    logging.warning("teacher cache %s: %s; rebuilding it", folder, why)
  build(folder, key, teacher_apply, teacher_variables, data_arrays, top_k=top_k, batch_size=batch_size)
  return read(folder)


def make_cached_apply(num_classes: int, top_k: int) -> Callable[..., dict[str, Any]]:
  """A `teacher_apply` that reads the cache instead of running the teacher.

  Its "variables" are the cached arrays (an argument of the step, like a teacher's variables);
  it gathers the batch's examples by `batch["index"]`. Its output holds `logits` (for a top-k cache,
  [..., num_classes] rebuilt by `dense_log_probs`) and `features`; a top-k cache's output also holds
  `top_k`, the stored arrays and `vocab_size` gathered for the batch, which methods with a sparse path
  read instead (under jit, the dense rebuild is then never computed).
  """

  def apply(cache, batch, *, train: bool = False, rngs=None) -> dict[str, Any]:
    del train, rngs
    rows = {name: jnp.take(value, batch["index"], axis=0) for name, value in cache.items()}
    features = {name[len("features/"):]: value for name, value in rows.items() if name.startswith("features/")}
    if not top_k:
      return {"logits": rows["logits"], "features": features}
    top = {name: rows[name] for name in TOP_K_KEYS}
    if "vocab_size" in rows:  # [B], broadcast over the example's positions.
      top["vocab_size"] = jnp.broadcast_to(
          rows["vocab_size"].reshape(rows["vocab_size"].shape + (1,) * (top["rest_log_mass"].ndim - 1)),
          top["rest_log_mass"].shape)
    return {"logits": dense_log_probs(top, num_classes), "top_k": top, "features": features}

  return apply
