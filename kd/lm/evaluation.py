"""Evaluation of language models: perplexity, next-token accuracy and agreement, decode speed.

All token statistics are sums over the real target tokens of a split (never means of per-batch
means), computed on the device batch by batch: a split's logits ([N, L, V]) never go to the host.

Bits per token is the mean NLL per target token over log 2; bits per byte divides the same total by
the UTF-8 bytes the target tokens stand for (`bytes_per_id`), so models with different tokenizers
compare on it. On byte-level data (`stdlib_text`: each token is one byte) the two are equal; on
tokenized data the bytes come from the tokenizer (kd.lm.tokenizer.token_byte_lengths).
"""

import functools
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kd import data
from kd import losses
from kd.lm import sampling
from kd.lm import tokens as lm_tokens


def _eval_batches(arrays, batch_size: int, sharding):
  for batch in data.eval_batches(arrays, batch_size):
    # Padding examples have an all-False token mask, so they add nothing to any sum.
    yield {"tokens": jax.device_put(batch["tokens"], sharding),
           "mask": jax.device_put(batch["token_mask"], sharding)}


def _sums(apply, mesh, variables, arrays, batch_size: int, reference=None, bytes_per_id=None):
  """Per-split sums over real target tokens: nll, correct, count, with `reference` (the teacher's
  next-token argmax [N, L-1], from `predictions`) agree, and with `bytes_per_id` [V] the targets' bytes."""
  batch_sharding = jax.NamedSharding(mesh, jax.P("data"))
  byte_table_V = jnp.asarray(bytes_per_id if bytes_per_id is not None else np.zeros(1), jnp.float32)

  @functools.partial(jax.jit, out_shardings=jax.NamedSharding(mesh, jax.P()))
  def sums(variables, batch, reference_BxT, byte_table_V):
    logits = apply(variables, batch, train=False)["logits"][:, :-1]
    targets, weights = lm_tokens.next_token_targets(batch)
    nll = losses.token_cross_entropy(logits, targets, where=weights > 0)
    predictions = jnp.argmax(logits, -1)
    target_bytes = byte_table_V[jnp.minimum(targets, byte_table_V.shape[0] - 1)] * weights
    return jnp.stack([jnp.sum(nll), jnp.sum((predictions == targets) * weights), jnp.sum(weights),
                      jnp.sum((predictions == reference_BxT) * weights), jnp.sum(target_bytes)])

  total = np.zeros(5)
  for start, batch in zip(range(0, data.num_examples(arrays), batch_size),
                          _eval_batches(arrays, batch_size, batch_sharding)):
    if reference is None:
      reference_BxT = np.zeros(batch["tokens"].shape[:1] + (batch["tokens"].shape[1] - 1,), np.int32)
    else:
      reference_BxT = _padded(reference[start:start + batch_size], batch_size)
    total += np.asarray(sums(variables, batch, jax.device_put(reference_BxT, batch_sharding), byte_table_V),
                        np.float64)
  return total


def _padded(rows: np.ndarray, batch_size: int) -> np.ndarray:
  return np.concatenate([rows, np.zeros((batch_size - len(rows),) + rows.shape[1:], rows.dtype)])


def _scalars(nll: float, correct: float, count: float, num_bytes: float | None = None) -> dict[str, float]:
  loss = nll / max(count, 1.0)
  scalars = {"eval/accuracy": correct / max(count, 1.0), "eval/loss": loss,
             "eval/perplexity": math.exp(loss), "eval/bits_per_token": loss / math.log(2)}
  if num_bytes is not None:
    scalars["eval/bits_per_byte"] = nll / math.log(2) / max(num_bytes, 1.0)
  return scalars


def bytes_per_id(data_name: str, num_classes: int) -> np.ndarray | None:
  """The UTF-8 bytes each token id of a dataset stands for, [num_classes], or None where unknown.

  `text_files/...`: from its tokenizer (ids beyond it, a padded vocabulary's, never occur: 0). A byte
  vocabulary (256 ids, e.g. `stdlib_text`): one byte each.
  """
  from kd.data import text_files  # pylint: disable=g-import-not-at-top  # kd.data imports kd.lm.
  from kd.lm import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  if data_name.startswith(text_files.FAMILY + "/"):
    lengths = tokenizer_lib.token_byte_lengths(text_files.tokenizer_for(data_name))
    return np.concatenate([lengths, np.zeros(max(num_classes - len(lengths), 0), lengths.dtype)])[:num_classes]
  if num_classes == 256:
    return np.ones(256, np.int64)
  return None


def teacher_tokenization(data_name: str, arrays, teacher_num_classes: int):
  """(arrays as the teacher reads them, its bytes per id) on a dataset that carries the teacher's own
  tokenization (text_files' teacher_tokenizer: `teacher_tokens` / `teacher_mask`); None elsewhere.

  A teacher with another tokenizer is scored on its own tokens of the same text, so its bits per byte
  compare with the student's; its perplexity per token, next-token agreement and KL do not.
  """
  from kd.data import text_files  # pylint: disable=g-import-not-at-top  # kd.data imports kd.lm.
  from kd.lm import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  if "teacher_tokens" not in arrays:
    return None
  source = text_files.parse(data_name.partition("/")[2])
  if source.teacher_tokenizer == text_files.BYTES:
    lengths = np.ones(256, np.int64)
  else:
    lengths = tokenizer_lib.token_byte_lengths(text_files.load_tokenizer(source.teacher_tokenizer))
  lengths = np.concatenate([lengths, np.zeros(max(teacher_num_classes - len(lengths), 0), lengths.dtype)])
  return {"tokens": arrays["teacher_tokens"], "mask": arrays["teacher_mask"]}, lengths[:teacher_num_classes]


def make_evaluate(apply, mesh: jax.sharding.Mesh, bytes_per_id=None) -> Callable[..., dict[str, float]]:
  """`evaluate(variables, arrays, batch_size) -> {"eval/loss", "eval/perplexity", "eval/accuracy", ...}`.

  `eval/loss` is the mean negative log-likelihood per real token (nats), `eval/perplexity` its exp
  (per token), `eval/bits_per_token` it over log 2, `eval/accuracy` next-token accuracy. With
  `bytes_per_id` ([V], see `bytes_per_id`), also `eval/bits_per_byte`: the total NLL in bits over the
  bytes the target tokens stand for. With `reference` (next-token predictions of another model,
  `predictions`), also `agreement`: the fraction of real tokens where this model's most likely next
  token is the reference's.
  """

  def evaluate(variables, arrays, batch_size: int, reference=None) -> dict[str, float]:
    nll, correct, count, agree, num_bytes = _sums(apply, mesh, variables, arrays, batch_size, reference,
                                                  bytes_per_id)
    scalars = _scalars(nll, correct, count, num_bytes if bytes_per_id is not None else None)
    if reference is not None:
      scalars["agreement"] = agree / max(count, 1.0)
    return scalars

  return evaluate


def predictions(apply, variables, arrays, batch_size: int, mesh: jax.sharding.Mesh) -> np.ndarray:
  """The model's most likely next token at every position, [N, L-1] int32 (small: no logits kept)."""
  batch_sharding = jax.NamedSharding(mesh, jax.P("data"))
  argmax = jax.jit(lambda v, b: jnp.argmax(apply(v, b, train=False)["logits"][:, :-1], -1).astype(jnp.int32),
                   out_shardings=jax.NamedSharding(mesh, jax.P()))
  rows = [np.asarray(argmax(variables, batch)) for batch in _eval_batches(arrays, batch_size, batch_sharding)]
  return np.concatenate(rows)[:data.num_examples(arrays)]


def mean_kl(student_apply, student_variables, teacher_apply, teacher_variables, arrays, batch_size: int,
            mesh: jax.sharding.Mesh) -> float:
  """Mean KL(teacher || student) per real next token, in nats."""
  batch_sharding = jax.NamedSharding(mesh, jax.P("data"))

  @functools.partial(jax.jit, out_shardings=jax.NamedSharding(mesh, jax.P()))
  def sums(student_variables, teacher_variables, batch):
    student_logits = student_apply(student_variables, batch, train=False)["logits"][:, :-1]
    teacher_logits = teacher_apply(teacher_variables, batch, train=False)["logits"][:, :-1]
    _, weights = lm_tokens.next_token_targets(batch)
    kl = losses.token_forward_kl(student_logits, teacher_logits, where=weights > 0)
    return jnp.stack([jnp.sum(kl), jnp.sum(weights)])

  total = np.zeros(2)
  for batch in _eval_batches(arrays, batch_size, batch_sharding):
    total += np.asarray(sums(student_variables, teacher_variables, batch), np.float64)
  return float(total[0] / max(total[1], 1.0))


def decode_tokens_per_second(module, variables, *, batch_size: int, prompt_length: int = 16,
                             num_new_tokens: int = 112, recompute: bool = False, repeats: int = 3) -> float:
  """Generated tokens per second (all rows) of greedy decoding on one device, after compiling.

  With `recompute=True`, the reference without a KV cache (`sampling.generate_recompute`).
  """
  generate = sampling.generate_recompute if recompute else sampling.generate
  run = jax.jit(functools.partial(generate, module, num_new_tokens=num_new_tokens, temperature=0.0))
  device = jax.devices()[0]
  variables = jax.device_put(variables, device)
  prompt = jax.device_put(jnp.full((batch_size, prompt_length), ord(" "), jnp.int32), device)
  rng = jax.random.key(0)
  jax.block_until_ready(run(variables, prompt, rng=rng))  # Compile.
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    jax.block_until_ready(run(variables, prompt, rng=rng))
    times.append(time.perf_counter() - tic)
  return batch_size * num_new_tokens / float(np.median(times))
