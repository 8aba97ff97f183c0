"""Universal Logit Distillation (ULD): distillation between language models with different tokenizers.

The teacher reads its own tokenization of the same text (a `text_files` dataset with
`teacher_tokenizer=...` stores it as `teacher_tokens` / `teacher_mask` / `teacher_loss_mask`, and the train
step feeds those to the teacher as its `tokens` / `mask` / `loss_mask`). The two vocabularies share no
ids, so no token's probability can be compared with another's; ULD compares the *sorted* distributions
instead (Boizard et al. 2024, Sec. 3): at each matched response position, each model's
next-token probabilities are sorted in decreasing order, the smaller vocabulary is padded with zeros,
and the loss is the L1 distance between the sorted vectors (the paper's closed form of the
Wasserstein distance between the two distributions, which needs no map between the vocabularies):

    ULD_t = sum_i | sort(p_student(t))_i - sort(p_teacher(t))_i |     (Sec. 3: W1 over sorted probabilities)
    loss  = ce_weight * CE(student, data) + uld_weight * mean_matched_t ULD_t      (Sec. 3: CE + lambda * ULD)

It depends on the two distributions only up to a permutation of either vocabulary, which is what makes
it tokenizer-free (and also what it cannot see: which token the teacher prefers).

Positions (the paper's "the sequences are truncated to the shorter one", Sec. 3): each side's response
positions are those whose next-token target counts in that side's loss (the student's `mask` and
`loss_mask`, the teacher's `teacher_mask` and `teacher_loss_mask`, shifted by one as for
cross-entropy). In each example the k-th response position of the student is matched with the k-th of
the teacher, in order, for k below the smaller of the two counts; the longer side's remaining positions
get no ULD term (the student's still get cross-entropy). No alignment of tokens is attempted: where the
tokenizers cut the text at different places, matched positions predict different pieces of text, which
is the approximation the paper makes (its Sec. 3 and 5.4 discuss it).

`temperature` divides both models' logits before their softmaxes (the reference code's student and
teacher temperatures, both 1 by default); unlike KL-based KD there is no T^2 factor (the paper has
none). The mean is over the matched positions of the batch, never over batch x length.

Teacher cache: the teacher's outputs over its own tokenization can be cached (`teacher_cache.enabled`;
the cache is built on `teacher_tokens`). With `teacher_cache.top_k = k > 0` the teacher's sorted
distribution is read without its [B, K, V_t] array: its k largest probabilities as stored, then the
V_t - k tail entries of the dense rebuild, each the remaining mass spread evenly, tempered in closed form
(`kd.teacher_cache.teacher_bucket_logits`); the even spread keeps them sorted (each tail entry is at most
the smallest of the k). The L1 against the student's sorted vector is then summed in closed form
(`uld_distance_top_k`): equal to ULD against the dense rebuild, and to ULD against the live teacher when
k = V_t. The student's [B, K, V_s] sorted probabilities remain.

Reference: N. Boizard, K. El Haddad, C. Hudelot, P. Colombo, "Towards Cross-Tokenizer Distillation: the
Universal Logit Distillation Loss for LLMs", arXiv:2402.12030, Sec. 3; reference code
github.com/Nicolas-BZRD/llm-recipes (models/distillation_model.py).
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import teacher_cache
from kd.errors import ConfigError
from kd.lm import tokens as lm_tokens
from kd.methods import lm_common

LANGUAGE_MODEL = True  # Reads next-token targets of a token dataset (kd.lm.check_stages).
NEEDS_TEACHER = True
# Reads the teacher's logits on its own tokenization of the windows only: kd.teacher_cache holds them.
CACHEABLE = True
CROSS_TOKENIZER = True  # The teacher reads its own tokenization of the text (batch["teacher_tokens"]).
DEFAULTS: dict[str, Any] = {"uld_weight": 1.0, "ce_weight": 1.0, "temperature": 1.0}


def check(params: dict[str, Any], where: str) -> None:
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0 (1: the models' own distributions)")
  for key in ("uld_weight", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if params["uld_weight"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: uld_weight and ce_weight are both 0, so nothing is learned; set one > 0")


def check_tokenizers(method_name: str, method_module, data_name: str, student_vocab_size: int,
                     teacher_vocab_size: int, where: str) -> None:
  """ConfigError unless the method, the dataset and the two models agree on one or two tokenizers.

  A cross-tokenizer method (`CROSS_TOKENIZER = True`) needs a dataset that carries the teacher's
  tokenization (text_files' `teacher_tokenizer`), and a teacher whose vocabulary covers that
  tokenizer's ids; a same-tokenizer method (lm_kd, ...) needs a teacher with the student's vocabulary
  and a dataset without a second tokenization (whose `teacher_tokens` it would feed the teacher while
  comparing its probabilities id by id with the student's).

  Args:
    method_name: the stage's method.name, for the message.
    method_module: its module (kd.methods.METHODS[method_name]).
    data_name: data.name.
    student_vocab_size: the student's number of logits (the dataset's num_classes).
    teacher_vocab_size: the teacher model's number of logits.
    where: the config path of the stage's method, for the message.
  """
  from kd.data import text_files  # pylint: disable=g-import-not-at-top  # kd.data imports kd.lm, which imports kd.methods.

  data_teacher_vocab = text_files.teacher_vocab_size_of(data_name)
  if getattr(method_module, "CROSS_TOKENIZER", False):
    if not data_teacher_vocab:
      raise ConfigError(
          f"{where}.name={method_name!r} distils across tokenizers, but data.name={data_name!r} carries no "
          "teacher tokenization: add teacher_tokenizer=<the teacher's tokenizer.json or folder, or bytes> to "
          "the text_files dataset name, or use lm_kd for a teacher with the student's tokenizer")
    if teacher_vocab_size < data_teacher_vocab:
      raise ConfigError(
          f"{where}: the teacher has {teacher_vocab_size} logits but the dataset's teacher_tokenizer has "
          f"{data_teacher_vocab} ids: give the teacher its own tokenizer's data (teacher_tokenizer=...)")
    return
  if data_teacher_vocab:
    raise ConfigError(
        f"{where}.name={method_name!r} compares the two models' probabilities id by id, but data.name carries "
        f"a second (teacher) tokenization of {data_teacher_vocab} ids: use a cross-tokenizer method (lm_uld, lm_alm), "
        "or leave teacher_tokenizer out of the dataset name for a teacher with the student's tokenizer")
  if teacher_vocab_size != student_vocab_size:
    raise ConfigError(
        f"{where}.name={method_name!r} needs one vocabulary, but the student has {student_vocab_size} logits "
        f"and the teacher {teacher_vocab_size}: the models have different tokenizers; use lm_uld or lm_alm with "
        "text_files' teacher_tokenizer=<the teacher's tokenizer>")


def _response_order(weights_BxT: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
  """(positions [B, length] of the response positions first, in order; their count [B])."""
  on_BxT = weights_BxT > 0
  # A stable sort of "not on" puts the on positions first, each group in position order.
  order_BxT = jnp.argsort(~on_BxT, axis=-1, stable=True)
  return order_BxT[:, :length], jnp.sum(on_BxT, axis=-1)


def sorted_probabilities(logits_BxKxV: jax.Array, temperature: float) -> jax.Array:
  """softmax(logits / temperature), sorted in decreasing order along the vocabulary (float32)."""
  probabilities = jax.nn.softmax(logits_BxKxV.astype(jnp.float32) / temperature, axis=-1)
  return -jnp.sort(-probabilities, axis=-1)


def uld_distance(student_sorted_BxKxVs: jax.Array, teacher_sorted_BxKxVt: jax.Array) -> jax.Array:
  """sum_i |s_i - t_i| of two decreasingly sorted distributions, the shorter padded with zeros: [B, K].

  Boizard et al. 2024, Sec. 3. Only the first min(Vs, Vt) entries are compared pairwise; the longer
  vocabulary's tail is compared with the zeros, so it adds its own mass (the tail's entries are >= 0).
  """
  shared = min(student_sorted_BxKxVs.shape[-1], teacher_sorted_BxKxVt.shape[-1])
  head = jnp.sum(jnp.abs(student_sorted_BxKxVs[..., :shared] - teacher_sorted_BxKxVt[..., :shared]), axis=-1)
  return (head + jnp.sum(student_sorted_BxKxVs[..., shared:], axis=-1)
          + jnp.sum(teacher_sorted_BxKxVt[..., shared:], axis=-1))


def uld_distance_top_k(student_sorted_BxKxVs: jax.Array, teacher_head_BxKxk: jax.Array,
                       teacher_tail_entry_BxK: jax.Array, teacher_vocab_BxK: jax.Array) -> jax.Array:
  """`uld_distance` against a teacher given as its k largest probabilities (decreasing) followed by
  V_t - k equal tail entries, without building the teacher's [B, K, V_t] vector: [B, K].

  Args:
    student_sorted_BxKxVs: the student's probabilities, sorted in decreasing order.
    teacher_head_BxKxk: the teacher's k largest probabilities, decreasing.
    teacher_tail_entry_BxK: each tail entry (<= the smallest of the k).
    teacher_vocab_BxK: V_t, the teacher's number of classes (>= k), per position.
  """
  vocab_s, k = student_sorted_BxKxVs.shape[-1], teacher_head_BxKxk.shape[-1]
  shared = min(vocab_s, k)
  head = jnp.sum(jnp.abs(student_sorted_BxKxVs[..., :shared] - teacher_head_BxKxk[..., :shared]), axis=-1)
  # Student entries k..V_s-1 face tail entries up to the teacher's V_t, zeros after.
  rest = student_sorted_BxKxVs[..., shared:]
  facing_tail = jnp.arange(shared, vocab_s) < teacher_vocab_BxK[..., None]
  against_tail = jnp.sum(jnp.where(facing_tail, jnp.abs(rest - teacher_tail_entry_BxK[..., None]), rest), axis=-1)
  # The teacher's entries beyond the student's vocabulary face zeros: its head beyond V_s, its tail beyond.
  beyond = (jnp.sum(teacher_head_BxKxk[..., shared:], axis=-1)
            + teacher_tail_entry_BxK * jnp.maximum(teacher_vocab_BxK - max(vocab_s, k), 0))
  return head + against_tail + beyond


def uld_terms(student_logits_BxTsxVs: jax.Array, student_weights_BxTs: jax.Array,
              teacher_logits_BxTtxVt: jax.Array, teacher_weights_BxTt: jax.Array,
              temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(ULD per matched position [B, K], matched [B, K] as 0/1 float) of the module docstring.

  Args:
    student_logits_BxTsxVs: the student's next-token logits at its positions.
    student_weights_BxTs: > 0 at the student's response positions.
    teacher_logits_BxTtxVt: the teacher's, on its own tokenization (any length and vocabulary).
    teacher_weights_BxTt: > 0 at the teacher's response positions.
    temperature: divides both models' logits.

  Returns:
    the L1 distance of the sorted distributions at the k-th matched position of each example, and
    whether that k is below both sides' counts of response positions.
  """
  length = min(student_logits_BxTsxVs.shape[1], teacher_logits_BxTtxVt.shape[1])
  student_order, student_count = _response_order(student_weights_BxTs, length)
  teacher_order, teacher_count = _response_order(teacher_weights_BxTt, length)
  student_BxKxV = jnp.take_along_axis(student_logits_BxTsxVs, student_order[..., None], axis=1)
  teacher_BxKxV = jnp.take_along_axis(teacher_logits_BxTtxVt, teacher_order[..., None], axis=1)
  per_position = uld_distance(sorted_probabilities(student_BxKxV, temperature),
                              sorted_probabilities(teacher_BxKxV, temperature))
  matched = jnp.arange(length)[None] < jnp.minimum(student_count, teacher_count)[:, None]
  return per_position, matched.astype(jnp.float32)


def uld_terms_top_k(student_logits_BxTsxVs: jax.Array, student_weights_BxTs: jax.Array,
                    teacher_top: dict[str, jax.Array], teacher_weights_BxTt: jax.Array,
                    temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """`uld_terms` with the teacher read from a top-k cache (the module docstring).

  Args:
    student_logits_BxTsxVs, student_weights_BxTs, teacher_weights_BxTt, temperature: as for `uld_terms`.
    teacher_top: the teacher's cached `top_log_probs` [B, Tt, k], `rest_log_mass` [B, Tt] and
      `vocab_size` [B, Tt] (`kd.teacher_cache.make_cached_apply`'s `top_k`) at its positions.
  """
  length = min(student_logits_BxTsxVs.shape[1], teacher_top["top_log_probs"].shape[1])
  student_order, student_count = _response_order(student_weights_BxTs, length)
  teacher_order, teacher_count = _response_order(teacher_weights_BxTt, length)
  student_BxKxV = jnp.take_along_axis(student_logits_BxTsxVs, student_order[..., None], axis=1)
  top = {"top_log_probs": jnp.take_along_axis(teacher_top["top_log_probs"], teacher_order[..., None], axis=1),
         "rest_log_mass": jnp.take_along_axis(teacher_top["rest_log_mass"], teacher_order, axis=1)}
  vocab_BxK = jnp.take_along_axis(teacher_top["vocab_size"], teacher_order, axis=1)
  buckets = jax.nn.softmax(teacher_cache.teacher_bucket_logits(top, vocab_BxK, temperature), axis=-1)
  k = top["top_log_probs"].shape[-1]
  tail_entry = buckets[..., k] / jnp.maximum(vocab_BxK - k, 1)  # The tail's mass, spread evenly.
  per_position = uld_distance_top_k(sorted_probabilities(student_BxKxV, temperature), buckets[..., :k],
                                    tail_entry, vocab_BxK)
  matched = jnp.arange(length)[None] < jnp.minimum(student_count, teacher_count)[:, None]
  return per_position, matched.astype(jnp.float32)


def _teacher_targets(batch) -> jax.Array:
  """The teacher's next-token weights [B, Tt-1]: its own tokenization's masks, as the train step feeds them."""
  teacher_batch = {"tokens": batch["teacher_tokens"]}
  if "teacher_mask" in batch:
    teacher_batch["mask"] = batch["teacher_mask"]
  if "teacher_loss_mask" in batch:
    teacher_batch["loss_mask"] = batch["teacher_loss_mask"]
  return lm_tokens.next_token_targets(teacher_batch)[1]


def loss(student_out, teacher_out, batch, *, uld_weight: float, ce_weight: float,
         temperature: float) -> tuple[Any, dict[str, Any]]:
  """ce_weight * CE + uld_weight * mean ULD over the matched response positions; and the terms."""
  student_logits, targets_BxT, weights_BxT, ce, metrics = lm_common.student_terms(student_out, batch)
  total = ce_weight * ce
  if teacher_out is not None and uld_weight:
    if "teacher_tokens" not in batch:
      raise ConfigError("lm_uld needs the teacher's own tokenization in the batch (teacher_tokens): tokenize "
                        "the data with text_files' teacher_tokenizer=<the teacher's tokenizer>")
    if "top_k" in teacher_out:  # A top-k teacher cache: read without the teacher's [B, Tt, V_t] array.
      if "vocab_size" not in teacher_out["top_k"]:
        raise ConfigError("lm_uld reads a top-k teacher cache whose teacher vocabulary is unknown: rebuild the "
                          "cache with this kd (remove the teacher_cache folder), or set teacher_cache.top_k=0")
      teacher_top = jax.lax.stop_gradient({name: teacher_out["top_k"][name][:, :-1]
                                           for name in ("top_log_probs", "rest_log_mass", "vocab_size")})
      per_position, matched = uld_terms_top_k(student_logits, weights_BxT, teacher_top, _teacher_targets(batch),
                                              temperature)
    else:
      teacher_logits = jax.lax.stop_gradient(teacher_out["logits"][:, :-1])
      per_position, matched = uld_terms(student_logits, weights_BxT, teacher_logits, _teacher_targets(batch),
                                        temperature)
    uld = lm_tokens.masked_mean(per_position, matched)
    total = total + uld_weight * uld
    metrics.update({"uld": uld, "matched_positions": jnp.sum(matched)})
  return total, metrics
