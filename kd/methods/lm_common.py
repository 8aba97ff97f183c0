"""What the language-model methods share: next-token divergence + cross-entropy, over real tokens.

    loss = kd_weight * T^2 * mean_real_tokens D(p_teacher, q_student) + ce_weight * mean_real_tokens CE

D is one of `kd.losses.TOKEN_DIVERGENCES` (`divergence`), with its `beta` (JSD) or `alpha` (skew KL).
Every mean is over the real target tokens of the batch (mask and, when set, loss_mask), never over
batch x length, so padding neither dilutes nor weights the loss. The T^2 factor keeps the soft
term's gradient size independent of T (Hinton et al. 2015, Section 2).

With `chunk_size > 0` (lm_kd, lm_gkd) the same loss is computed by `kd.lm.chunked` from the models'
final hidden states and heads (their tap points `final_norm` and `head_kernel` / `head_embedding` /
`head_bias`), `chunk_size` tokens at a time, so that neither model's [B, L, V] logits exist in the
step: the values and gradients are the unchunked ones to float32 rounding. A method with a
`chunk_size` parameter asks for those features through `feature_patterns(params)`.

With `top_k_cache="sparse"` (lm_kd, lm_distilbert; the teacher read from a top-k teacher cache,
`teacher_cache.top_k = k > 0`) D is computed on k + 1 buckets instead of the vocabulary: the k classes
the cache holds for the position, and the rest. The student's rest is its exact mass outside those k
(a log-sum-exp of its other logits); the teacher's is the cached remaining mass, tempered as the dense
rebuild's even spread would be, in closed form (`kd.teacher_cache.teacher_bucket_logits`). No float
[B, L, V] teacher array exists in the step (a boolean k-hot mask, one byte per entry, selects the student's
tail). For every divergence here (all f-divergences) the bucketed value is
<= the value on the dense rebuild (`top_k_cache="dense"`, the default: data processing, Csiszar 1967),
and equal to it, and to the live teacher's, when k = V. Top-k targets are biased for k < V (Anshumann
et al., ACL 2025, arXiv:2503.16870); the sparse path changes what is computed, not that bias.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd import teacher_cache
from kd.errors import ConfigError
from kd.lm import chunked
from kd.lm import tokens as lm_tokens

DECODINGS = ("sample", "greedy", "beam")

TOP_K_CACHES = ("dense", "sparse")

DIVERGENCE_DEFAULTS: dict[str, Any] = {"divergence": "forward_kl", "beta": 0.5, "alpha": 0.1,
                                       "temperature": 1.0, "kd_weight": 1.0, "ce_weight": 0.0}


def check_divergence(params: dict[str, Any], where: str) -> None:
  if params["divergence"] not in losses.TOKEN_DIVERGENCES:
    raise ConfigError(f"{where}.divergence={params['divergence']!r}: choose one of "
                      f"{sorted(losses.TOKEN_DIVERGENCES)}")
  if params["divergence"] == "jsd" and not 0 < params["beta"] < 1:
    raise ConfigError(f"{where}.beta={params['beta']} must be in (0, 1) for the generalized JSD (it "
                      "vanishes at 0 and 1): use divergence=forward_kl or reverse_kl for the ends")
  if not 0 <= params["alpha"] < 1:
    raise ConfigError(f"{where}.alpha={params['alpha']} must be in [0, 1) (DistiLLM uses 0.1)")
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0")
  for key in ("kd_weight", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if params["kd_weight"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: kd_weight and ce_weight are both 0, so nothing is learned; set one > 0")


def check_chunk_size(params: dict[str, Any], where: str) -> None:
  chunk_size = params["chunk_size"]
  if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 0:
    raise ConfigError(f"{where}.chunk_size={chunk_size!r} must be an integer >= 0 (0: the full logits; "
                      "e.g. 1024: the divergence from hidden states and heads, 1024 tokens at a time)")


def feature_patterns(params: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(student, teacher) feature patterns: the hidden states and heads when the loss is chunked."""
  if not params.get("chunk_size"):
    return (), ()
  return chunked.FEATURE_PATTERNS, chunked.FEATURE_PATTERNS if params["kd_weight"] else ()


def check_top_k_cache(params: dict[str, Any], where: str) -> None:
  if params["top_k_cache"] not in TOP_K_CACHES:
    raise ConfigError(f"{where}.top_k_cache={params['top_k_cache']!r}: choose one of {TOP_K_CACHES} (dense: the "
                      "top-k cache rebuilt to [B, L, V]; sparse: the divergence on its k + 1 buckets)")
  if params["top_k_cache"] == "sparse" and params.get("chunk_size"):
    raise ConfigError(f"{where}.top_k_cache='sparse' reads the teacher's cached top k but chunk_size="
                      f"{params['chunk_size']} reads its hidden states and head: set one of them back (chunk_size=0 "
                      "or top_k_cache='dense')")


def sparse_token_divergence(student_logits_BxTxV: jax.Array, top: dict[str, jax.Array], *, divergence: str,
                            beta: float, alpha: float, temperature: float, where=None) -> jax.Array:
  """D on the k + 1 buckets of a top-k teacher cache, per position [B, T] (the module docstring).

  Args:
    student_logits_BxTxV: the student's next-token logits.
    top: the teacher's cached `top_log_probs` [B, T, k], `top_indices` [B, T, k], `rest_log_mass` [B, T]
      (`kd.teacher_cache.top_k_log_probs`), at the same positions; no gradient flows into them.
    divergence, beta, alpha, temperature: as for the dense divergence (kd.losses.TOKEN_DIVERGENCES).
    where: [B, T] the real positions.

  Returns:
    [B, T] >= 0, zero at masked positions; <= the dense divergence against `dense_log_probs(top, V)`,
    equal to it when k = V.
  """
  top = jax.lax.stop_gradient({name: top[name] for name in teacher_cache.TOP_K_KEYS})
  student_buckets = teacher_cache.student_bucket_logits(student_logits_BxTxV, top["top_indices"], temperature)
  teacher_buckets = teacher_cache.teacher_bucket_logits(top, student_logits_BxTxV.shape[-1], temperature)
  divergence_fn, extra = losses.TOKEN_DIVERGENCES[divergence]
  extra_kwargs = {extra: {"beta": beta, "alpha": alpha}[extra]} if extra else {}
  # The buckets are tempered already: T = 1 here, the T^2 factor stays with the caller.
  return divergence_fn(student_buckets, teacher_buckets, temperature=1.0, where=where, **extra_kwargs)


def check_features(params: dict[str, Any], student_shapes: dict, teacher_shapes: dict, where: str) -> None:
  """A chunked loss needs each model's head and one vocabulary: ConfigError before anything compiles."""
  if not params.get("chunk_size"):
    return
  vocabularies = {}
  for who, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
    if who == "teacher" and not params["kd_weight"]:
      continue
    if chunked.KERNEL_TAP in shapes:
      vocabularies[who] = shapes[chunked.KERNEL_TAP][-1]
    elif chunked.EMBEDDING_TAP in shapes:
      vocabularies[who] = shapes[chunked.EMBEDDING_TAP][0]
    else:
      raise ConfigError(f"{where}.chunk_size={params['chunk_size']} reads the {who}'s head, but its tap points "
                        f"matching {chunked.FEATURE_PATTERNS} are {sorted(shapes)}: the model needs a "
                        f"{chunked.KERNEL_TAP!r} or {chunked.EMBEDDING_TAP!r} tap point, or set chunk_size=0")
  if len(set(vocabularies.values())) > 1:
    raise ConfigError(f"{where}: the student's vocabulary has {vocabularies['student']} tokens and the "
                      f"teacher's {vocabularies['teacher']}: token divergences need one vocabulary")


def check_prompt(params: dict[str, Any], where: str) -> None:
  if params["prompt_length"] < 1:
    raise ConfigError(f"{where}.prompt_length={params['prompt_length']} must be >= 1")
  if params["sample_temperature"] < 0:
    raise ConfigError(f"{where}.sample_temperature={params['sample_temperature']} must be >= 0 (0: greedy)")
  if params["top_k"] < 0:
    raise ConfigError(f"{where}.top_k={params['top_k']} must be >= 0 (0: no top-k filter)")
  if not 0 < params["top_p"] <= 1:
    raise ConfigError(f"{where}.top_p={params['top_p']} must be in (0, 1] (1: no nucleus filter)")
  eos_token = params["eos_token"]
  if not isinstance(eos_token, int) or isinstance(eos_token, bool) or eos_token < -1:
    raise ConfigError(f"{where}.eos_token={eos_token!r} must be a token id >= 0, or -1 for none")


def check_decoding(params: dict[str, Any], where: str) -> None:
  if params["decoding"] not in DECODINGS:
    raise ConfigError(f"{where}.decoding={params['decoding']!r}: choose one of {DECODINGS}")
  beam_size = params["beam_size"]
  if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
    raise ConfigError(f"{where}.beam_size={beam_size!r} must be an integer >= 1 (Kim & Rush use 5)")


def student_terms(student_out, batch) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
  """What every LM loss measures of the student on the data, over real target tokens.

  Returns:
    (its next-token logits [B, T, V], the targets [B, T], their weights [B, T], the cross-entropy, and
    the metrics ce, tokens, token_accuracy).
  """
  targets_BxT, weights_BxT = lm_tokens.next_token_targets(batch)
  student_logits = student_out["logits"][:, :-1]
  ce = lm_tokens.masked_mean(losses.token_cross_entropy(student_logits, targets_BxT, where=weights_BxT > 0),
                             weights_BxT)
  metrics = {"ce": ce, "tokens": jnp.sum(weights_BxT),
             "token_accuracy": lm_tokens.masked_mean(jnp.argmax(student_logits, -1) == targets_BxT, weights_BxT)}
  return student_logits, targets_BxT, weights_BxT, ce, metrics


def distillation_loss(student_out, teacher_out, batch, *, divergence: str, beta: float, alpha: float,
                      temperature: float, kd_weight: float, ce_weight: float,
                      chunk_size: int = 0, top_k_cache: str = "dense") -> tuple[Any, dict[str, Any]]:
  """The combined loss of the module docstring, and its terms (chunked when chunk_size > 0, on the
  cache's k + 1 buckets when top_k_cache="sparse")."""
  if chunk_size:
    return chunked.distillation_loss(student_out, teacher_out, batch, chunk_size=chunk_size,
                                     divergence=divergence, beta=beta, alpha=alpha, temperature=temperature,
                                     kd_weight=kd_weight, ce_weight=ce_weight)
  student_logits, targets_BxT, weights_BxT, ce, metrics = student_terms(student_out, batch)
  real_BxT = weights_BxT > 0
  predictions = jnp.argmax(student_logits, -1)
  total = ce_weight * ce
  if teacher_out is not None and kd_weight and top_k_cache == "sparse":
    if "top_k" not in teacher_out:
      raise ConfigError("top_k_cache='sparse' reads a top-k teacher cache, but the teacher's outputs hold none: "
                        "set teacher_cache.enabled=True and teacher_cache.top_k=k > 0, or top_k_cache='dense'")
    top = {name: teacher_out["top_k"][name][:, :-1] for name in teacher_cache.TOP_K_KEYS}
    per_token = sparse_token_divergence(student_logits, top, divergence=divergence, beta=beta, alpha=alpha,
                                        temperature=temperature, where=real_BxT)
    teacher_predictions = top["top_indices"][..., 0]  # Stored in decreasing order.
  elif teacher_out is not None and kd_weight:
    teacher_logits = jax.lax.stop_gradient(teacher_out["logits"][:, :-1])
    divergence_fn, extra = losses.TOKEN_DIVERGENCES[divergence]
    extra_kwargs = {extra: {"beta": beta, "alpha": alpha}[extra]} if extra else {}
    per_token = divergence_fn(student_logits, teacher_logits, temperature=temperature, where=real_BxT,
                              **extra_kwargs)
    teacher_predictions = jnp.argmax(teacher_logits, -1)
  if teacher_out is not None and kd_weight:
    kd = temperature**2 * lm_tokens.masked_mean(per_token, weights_BxT)
    total = total + kd_weight * kd
    metrics["kd"] = kd
    metrics["teacher_agreement"] = lm_tokens.masked_mean(predictions == teacher_predictions, weights_BxT)
  return total, metrics
