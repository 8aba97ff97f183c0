"""Approximate Likelihood Matching (ALM): distillation between language models with different tokenizers.

The two models read their own tokenizations of the same text (a `text_files` dataset with
`teacher_tokenizer=...`; the train step feeds the teacher its `teacher_tokens`). ALM compares what both
can say about the same text: the likelihood of a *chunk*, a piece of the text whose both ends are token
boundaries of both tokenizations (Minixhofer, Vulić & Ponti 2025, Sec. 3). The dataset stores which
chunk each token belongs to (`chunk_ids`, `teacher_chunk_ids`; kd.data.text_files aligns the two
tokenizations by their character offsets when it prepares the data: the shortest such chunks, as the
reference code's `unconstrained` alignment). A chunk's log-likelihood under a model is the sum of the
log-probabilities its tokens get as next tokens on that model's side:

    log p(c) = sum_{k in c} log p(token_k | tokens_<k)

and the loss compares the two models' chunk likelihoods through a binarised f-divergence (Sec. 3): the
outcome "this chunk" with probability p^(1/tau) against "anything else" with 1 - p^(1/tau), so no sum
over the infinitely many other texts is needed. With t = p_teacher(c)^(1/tau), s = p_student(c)^(1/tau):

    binary_kl          KL(Bern(t) || Bern(s)) = t log(t/s) + (1-t) log((1-t)/(1-s))
    reverse_binary_kl  KL(Bern(s) || Bern(t))
    loss = ce_weight * CE(student, data) + alm_weight * mean over aligned chunks of the divergence

`temperature` is tau, the binarisation temperature (the reference code's `binarization_temp`, 100 by
default): chunk likelihoods are tiny, and raising them to 1/tau brings them to where the two outcomes
are both likely, so the divergence's gradient does not vanish. It does not touch the softmax. The
reference code's default distance is the binary cross-entropy -(t log s + (1-t) log(1-s)) (`binary_ce`),
which is `binary_kl` plus the teacher's binary entropy, a constant for the student: the same gradients,
but `binary_kl` is 0 when the two likelihoods agree. As there, log t and log s are shifted by -1e-6 so
that 1 - t and 1 - s never vanish.

A chunk counts (`aligned_chunks`) where every token of it, on both sides, is a next-token target that
counts in that side's loss (the student's `mask` & `loss_mask`, the teacher's `teacher_mask` &
`teacher_loss_mask`, shifted by one as for cross-entropy): a chunk half inside a prompt or behind
padding has no comparable likelihood. The mean is over the batch's aligned chunks (the reference code's
chunk_count numerator and denominator), never over batch x length; the cross-entropy is the student's
over its own tokens. No gradient reaches the teacher.

Not done here: the paper's outcome-chunk debiasing (the reference code's `append_space` and
`merge_by_space_prob` modes, which add the probability that the next token starts a new word and merge
chunks whose end is uncertain) and its hidden-state distillation (`alm_latents`): this is the naive ALM of
the reference's from-scratch guide (docs/pytorch_alm_from_scratch.ipynb), on the unconstrained chunks.

Reference: B. Minixhofer, I. Vulić, E. M. Ponti, "Universal Cross-Tokenizer Distillation via Approximate
Likelihood Matching", arXiv:2503.20083 (2025), Sec. 3; reference code github.com/bminixhofer/tokenkit
(tokenkit/training/losses.py `compute_alm_loss`, tokenkit/align.py `get_unconstrained_alignments`).
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd.errors import ConfigError
from kd.lm import tokens as lm_tokens
from kd.methods import lm_common

LANGUAGE_MODEL = True  # Reads next-token targets of a token dataset (kd.lm.check_stages).
NEEDS_TEACHER = True
CROSS_TOKENIZER = True  # The teacher reads its own tokenization of the text (batch["teacher_tokens"]).
DIVERGENCES = ("binary_kl", "reverse_binary_kl")
DEFAULTS: dict[str, Any] = {"alm_weight": 1.0, "ce_weight": 1.0, "temperature": 100.0, "divergence": "binary_kl"}
EPSILON = 1e-6  # log p^(1/tau) is shifted by -EPSILON (as the reference code), so 1 - p^(1/tau) > 0.
CHUNK_KEYS = ("chunk_ids", "teacher_chunk_ids")


def check(params: dict[str, Any], where: str) -> None:
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0 (the binarisation temperature "
                      "tau; the paper's default is 100)")
  for key in ("alm_weight", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if params["alm_weight"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: alm_weight and ce_weight are both 0, so nothing is learned; set one > 0")
  if params["divergence"] not in DIVERGENCES:
    raise ConfigError(f"{where}.divergence={params['divergence']!r} is not a binarised divergence; choose one "
                      f"of {list(DIVERGENCES)}")


def token_log_likelihoods(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log softmax(logits)[target] at each position: [B, T] float32."""
  log_probabilities = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probabilities, targets_BxT[..., None], axis=-1)[..., 0]


def chunk_log_likelihoods(token_log_likelihoods_BxT: jax.Array, chunk_ids_BxT: jax.Array, weights_BxT: jax.Array,
                          num_chunks: int) -> tuple[jax.Array, jax.Array]:
  """(sum of each chunk's token log-likelihoods [B, C], whether every token of it counts [B, C]).

  Args:
    token_log_likelihoods_BxT: log p(token_k | tokens_<k) at the positions that predict them.
    chunk_ids_BxT: the chunk of each predicted token, -1 (or >= num_chunks) for none.
    weights_BxT: > 0 where the target counts in the loss.
    num_chunks: C, the number of chunk slots per example.

  Returns:
    the chunk log-likelihoods (0 for a chunk without tokens), and True where the chunk has tokens and
    none of them has weight 0.
  """
  batch = chunk_ids_BxT.shape[0]
  valid_BxT = (chunk_ids_BxT >= 0) & (chunk_ids_BxT < num_chunks)
  # One segment per (example, chunk), one more for the tokens in no chunk.
  segments = jnp.where(valid_BxT, jnp.arange(batch)[:, None] * num_chunks + chunk_ids_BxT, batch * num_chunks)
  segments = segments.reshape(-1)

  def per_chunk(values_BxT):
    summed = jax.ops.segment_sum(values_BxT.reshape(-1), segments, num_segments=batch * num_chunks + 1)
    return summed[:-1].reshape(batch, num_chunks)

  sums = per_chunk(jnp.where(valid_BxT, token_log_likelihoods_BxT, 0.0))
  tokens = per_chunk(valid_BxT.astype(jnp.float32))
  uncounted = per_chunk((valid_BxT & ~(weights_BxT > 0)).astype(jnp.float32))
  return sums, (tokens > 0) & (uncounted == 0)


def log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, accurate on both sides of log(1/2) (as the reference code)."""
  return jnp.where(x < -jnp.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def binarised_divergence(teacher_log_likelihood: jax.Array, student_log_likelihood: jax.Array, temperature: float,
                         divergence: str = "binary_kl") -> jax.Array:
  """The binarised f-divergence of the module docstring, elementwise (Minixhofer et al. 2025, Sec. 3).

  Args:
    teacher_log_likelihood: log p_teacher(chunk), <= 0, any shape.
    student_log_likelihood: log p_student(chunk), the same shape.
    temperature: tau; both likelihoods are raised to 1/tau.
    divergence: binary_kl (KL of the teacher's binary outcome to the student's) or reverse_binary_kl.

  Returns:
    the divergence, >= 0, 0 where the two likelihoods are equal.
  """
  log_t = jnp.minimum(teacher_log_likelihood, 0.0) / temperature - EPSILON
  log_s = jnp.minimum(student_log_likelihood, 0.0) / temperature - EPSILON
  if divergence == "reverse_binary_kl":
    log_t, log_s = log_s, log_t
  return jnp.exp(log_t) * (log_t - log_s) + (-jnp.expm1(log_t)) * (log1mexp(log_t) - log1mexp(log_s))


def alm_terms(student_logits_BxTsxVs: jax.Array, student_targets_BxTs: jax.Array, student_weights_BxTs: jax.Array,
              student_chunk_ids_BxTs: jax.Array, teacher_logits_BxTtxVt: jax.Array, teacher_targets_BxTt: jax.Array,
              teacher_weights_BxTt: jax.Array, teacher_chunk_ids_BxTt: jax.Array, temperature: float,
              divergence: str = "binary_kl") -> tuple[jax.Array, jax.Array]:
  """(divergence per chunk slot [B, C], aligned [B, C] as 0/1 float) of the module docstring.

  Each side's arguments are at its next-token positions (logits[:, :-1], tokens[:, 1:], the shifted
  weights and chunk_ids[:, 1:]); the two sides may differ in length and vocabulary.
  """
  num_chunks = min(student_chunk_ids_BxTs.shape[1], teacher_chunk_ids_BxTt.shape[1])
  student_chunks, student_complete = chunk_log_likelihoods(
      token_log_likelihoods(student_logits_BxTsxVs, student_targets_BxTs), student_chunk_ids_BxTs,
      student_weights_BxTs, num_chunks)
  teacher_chunks, teacher_complete = chunk_log_likelihoods(
      token_log_likelihoods(teacher_logits_BxTtxVt, teacher_targets_BxTt), teacher_chunk_ids_BxTt,
      teacher_weights_BxTt, num_chunks)
  aligned = student_complete & teacher_complete
  # Slots without an aligned chunk get equal stand-in likelihoods: a divergence (and gradient) of 0.
  per_chunk = binarised_divergence(jnp.where(aligned, teacher_chunks, -1.0), jnp.where(aligned, student_chunks, -1.0),
                                   temperature, divergence)
  return per_chunk * aligned, aligned.astype(jnp.float32)


def _teacher_targets(batch) -> tuple[jax.Array, jax.Array]:
  """The teacher's next-token targets and weights [B, Tt-1]: its own tokenization, as the train step feeds it."""
  teacher_batch = {"tokens": batch["teacher_tokens"]}
  if "teacher_mask" in batch:
    teacher_batch["mask"] = batch["teacher_mask"]
  if "teacher_loss_mask" in batch:
    teacher_batch["loss_mask"] = batch["teacher_loss_mask"]
  return lm_tokens.next_token_targets(teacher_batch)


def loss(student_out, teacher_out, batch, *, alm_weight: float, ce_weight: float, temperature: float,
         divergence: str) -> tuple[Any, dict[str, Any]]:
  """ce_weight * CE + alm_weight * mean binarised divergence over the aligned chunks; and the terms."""
  student_logits, targets_BxT, weights_BxT, ce, metrics = lm_common.student_terms(student_out, batch)
  total = ce_weight * ce
  if teacher_out is not None and alm_weight:
    missing = [key for key in ("teacher_tokens",) + CHUNK_KEYS if key not in batch]
    if missing:
      raise ConfigError(f"lm_alm needs the aligned chunks of two tokenizations in the batch ({', '.join(missing)} "
                        "missing): tokenize the data with text_files' teacher_tokenizer=<the teacher's tokenizer>")
    teacher_targets, teacher_weights = _teacher_targets(batch)
    teacher_logits = jax.lax.stop_gradient(teacher_out["logits"][:, :-1])
    per_chunk, aligned = alm_terms(student_logits, targets_BxT, weights_BxT, batch["chunk_ids"][:, 1:],
                                   teacher_logits, teacher_targets, teacher_weights, batch["teacher_chunk_ids"][:, 1:],
                                   temperature, divergence)
    alm = jnp.sum(per_chunk) / jnp.maximum(jnp.sum(aligned), 1.0)
    total = total + alm_weight * alm
    metrics.update({"alm": alm, "aligned_chunks": jnp.sum(aligned)})
  return total, metrics
