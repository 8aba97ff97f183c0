r"""Token divergences from hidden states and LM heads, in chunks of tokens: no [B, L, V] logits.

The language-model losses of `kd.methods.lm_common` read both models' logits, [B, L, V] each, and
their float32 (log-)softmaxes: at V = 128k-256k and L = 2048 these arrays, not the models, fill the
memory. Here the same loss is computed from what the heads read, the final hidden states
h_s [N, D] and h_t [N, E] of the N = B (L - 1) predicting positions, and the heads' weights, a chunk
of C tokens at a time:

    for each chunk c:   s_c = h_s[c] W_s (+ b_s),   t_c = h_t[c] W_t (+ b_t)     [C, V], float32
                        loss += sum_{n in c} w_n (kd_weight T^2 D(p_n, q_n) + ce_weight CE_n)

with p_n = softmax(t_n / T) the teacher's and q_n = softmax(s_n / T) the student's next-token
distribution, w_n = weight_n / sum_m weight_m (the real target tokens of the batch, as
`kd.lm.tokens.masked_mean` normalises), and D one of `kd.losses.TOKEN_DIVERGENCES`, computed by
those same functions on each chunk's logits, so the definitions are kd's:

    forward_kl        KL(p || q)                                      Kim & Rush 2016, eq. 3 (word-level KD)
    reverse_kl        KL(q || p)                                      Gu et al. 2024 (MiniLLM), eq. 1
    jsd               beta KL(p || m) + (1 - beta) KL(q || m),
                      m = beta p + (1 - beta) q                       Agarwal et al. 2024 (GKD), eq. 1
    tv                1/2 sum_v |p_v - q_v|                           Wen et al. 2023, Table 1
    skew_forward_kl   KL(p || alpha p + (1 - alpha) q)                Ko et al. 2024 (DistiLLM), eq. 3
    skew_reverse_kl   KL(q || (1 - alpha) p + alpha q)                Ko et al. 2024 (DistiLLM), eq. 4

and CE_n = -log softmax(s_n)[x_{n+1}], the cross-entropy on the data.

Only one chunk's logits exist at a time. Under autodiff a plain loop would still keep every chunk's
logits for the backward pass, so the loss is a `jax.custom_vjp` whose forward pass computes, chunk by
chunk, the loss and its gradient with respect to the student's hidden states and head (the gradient
of a chunk's logits, [C, V], is used at once and dropped): the backward pass only scales those by the
incoming cotangent. No gradient reaches the teacher's inputs. The matrix products are those of the
unchunked step (two forward, two backward; none is recomputed), the head's gradient [D, V] being
accumulated over the chunks, in vocabulary blocks so that only one block's product exists at a
time; without differentiation the primal loop runs alone and computes no gradient. Memory grows
with chunk_size (a few [C, V] float32 arrays per chunk), the accumulation's passes over [D, V]
with 1 / chunk_size: `benchmarks/lm_memory.py` measures both. This is the design of
Liger-Kernel's fused linear cross-entropy and fused linear JSD (Hsu et al., "Liger Kernel: Efficient
Triton Kernels for LLM Training", arXiv:2410.10989, Section 3: gradients computed in the forward
pass, chunk by chunk, instead of materialising the logits), here in JAX for every divergence above.

A chunk size that does not divide N is padded: the last chunk is filled with positions of weight 0
(zero hidden states), which add nothing to the loss, its gradient or the metrics; a chunk size at or
above N is one chunk of N tokens.

Models expose what this reads as tap points (`kd.features`), without a change to their outputs:
`final_norm` (the head's input, [B, L, D]) and the head's weights, `head_kernel` ([D, V], logits =
h @ kernel) or, for a head tied to the token embedding, `head_embedding` ([V, D], logits =
h @ embedding^T), and `head_bias` ([V]) where the head has one. `transformer_lm` and the Hugging
Face families of `kd.models.hf_decoders` have them; `FEATURE_PATTERNS` selects them.

The logits are h @ W in h's dtype (the models' compute dtype), then float32 (plus the bias), as the
models' heads compute them.

References: Hinton, Vinyals & Dean, arXiv:1503.02531; Kim & Rush, EMNLP 2016, arXiv:1606.07947;
Gu, Dong, Wei & Huang, ICLR 2024, arXiv:2306.08543; Agarwal et al., ICLR 2024, arXiv:2306.13649;
Wen, Li, Du & Mou, ACL 2023, arXiv:2307.15190; Ko, Kim, Chen & Yun, ICML 2024, arXiv:2402.03898;
Hsu et al. (Liger Kernel), arXiv:2410.10989.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError
from kd.lm import tokens as lm_tokens

HIDDEN_TAP = "final_norm"  # [B, L, D]: the hidden states the head reads.
KERNEL_TAP = "head_kernel"  # [D, V]: an untied head's kernel.
EMBEDDING_TAP = "head_embedding"  # [V, D]: the token embedding a tied head multiplies by.
BIAS_TAP = "head_bias"  # [V], where the head has a bias.
# The feature patterns (kd.features) that select them: one regex, since a head has a kernel or an
# embedding, and a bias or not.
FEATURE_PATTERNS = (HIDDEN_TAP, "re:head_(kernel|embedding|bias)")


class Head(NamedTuple):
  """An LM head: logits = hidden @ weight (or weight^T when vocab_major) + bias."""

  weight: jax.Array  # [D, V], or [V, D] when vocab_major.
  bias: jax.Array | None  # [V] or None.
  vocab_major: bool  # weight is [V, D] (a tied embedding).


def head_of(features: dict[str, Any], who: str) -> Head:
  """The head of a model's captured features (`FEATURE_PATTERNS`); ConfigError if it has none."""
  if KERNEL_TAP in features:
    return Head(features[KERNEL_TAP], features.get(BIAS_TAP), False)
  if EMBEDDING_TAP in features:
    return Head(features[EMBEDDING_TAP], features.get(BIAS_TAP), True)
  raise ConfigError(f"chunk_size > 0 reads the {who}'s head from its tap points {KERNEL_TAP!r} or "
                    f"{EMBEDDING_TAP!r} (and {HIDDEN_TAP!r}), but its outputs have only "
                    f"{sorted(features) or 'logits'}: use a model with these tap points (transformer_lm, "
                    "gpt2, llama, qwen2, qwen3; not the teacher cache) or chunk_size=0")


def head_logits(hidden_CxD: jax.Array, weight: jax.Array, bias: jax.Array | None,
                vocab_major: bool) -> jax.Array:
  """Float32 logits [C, V] of hidden states [C, D], as the models' heads compute them."""
  contract = 1 if vocab_major else 0
  logits = jax.lax.dot_general(hidden_CxD, weight.astype(hidden_CxD.dtype),
                               (((hidden_CxD.ndim - 1,), (contract,)), ((), ())))
  logits = logits.astype(jnp.float32)
  return logits if bias is None else logits + bias.astype(jnp.float32)


class _Spec(NamedTuple):
  """What the fused loss computes (static: hashable, a `nondiff_argnums` argument)."""

  divergence: str
  extra: tuple[tuple[str, float], ...]  # (("beta", 0.5),) for jsd, ...
  temperature: float
  kd_weight: float
  ce_weight: float
  student_vocab_major: bool
  teacher_vocab_major: bool
  with_teacher: bool


def _chunk_terms(spec: _Spec, student_logits_CxV, teacher_logits_CxV, targets_C, weights_C):
  """(this chunk's share of the loss, its share of each metric); the weights are already normalised."""
  real_C = weights_C > 0
  cross_entropy = losses.token_cross_entropy(student_logits_CxV, targets_C, where=real_C)
  predictions_C = jnp.argmax(student_logits_CxV, -1)
  sums = {"ce": jnp.sum(cross_entropy * weights_C),
          "token_accuracy": jnp.sum((predictions_C == targets_C) * weights_C)}
  total = spec.ce_weight * sums["ce"]
  if spec.with_teacher:
    divergence_fn, _ = losses.TOKEN_DIVERGENCES[spec.divergence]
    per_token = divergence_fn(student_logits_CxV, teacher_logits_CxV, temperature=spec.temperature,
                              where=real_C, **dict(spec.extra))
    sums["kd"] = spec.temperature**2 * jnp.sum(per_token * weights_C)
    sums["teacher_agreement"] = jnp.sum(
        (predictions_C == jnp.argmax(teacher_logits_CxV, -1)) * weights_C)
    total = total + spec.kd_weight * sums["kd"]
  return total, sums


def _logits_of_chunk(spec: _Spec, student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                     teacher_bias):
  student_logits = head_logits(student_hidden, student_weight, student_bias, spec.student_vocab_major)
  teacher_logits = (head_logits(teacher_hidden, teacher_weight, teacher_bias, spec.teacher_vocab_major)
                    if spec.with_teacher else None)
  return student_logits, teacher_logits


def _zero_sums(spec: _Spec) -> dict[str, jax.Array]:
  names = ("ce", "token_accuracy") + (("kd", "teacher_agreement") if spec.with_teacher else ())
  return {name: jnp.zeros((), jnp.float32) for name in names}


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(spec, student_hidden_KxCxD, student_weight, student_bias, teacher_hidden_KxCxE, teacher_weight,
           teacher_bias, targets_KxC, weights_KxC):
  """(loss, metrics) over K chunks of C tokens; the primal loop, which computes no gradient."""

  def body(carry, chunk):
    student_hidden, teacher_hidden, targets, weights = chunk
    student_logits, teacher_logits = _logits_of_chunk(spec, student_hidden, student_weight, student_bias,
                                                      teacher_hidden, teacher_weight, teacher_bias)
    return _add(carry, _chunk_terms(spec, student_logits, teacher_logits, targets, weights)), None

  (total, sums), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), _zero_sums(spec)),
                                  (student_hidden_KxCxD, teacher_hidden_KxCxE, targets_KxC, weights_KxC))
  return total, sums


def _vocabulary_block(vocab_size: int, width: int, chunk_size: int) -> int:
  """The size of the vocabulary blocks the weight gradient is accumulated in.

  A block's gradient [D, block] is no larger than a chunk's logits [C, V]: adding each chunk's whole
  [D, V] product to the accumulator would hold a second weight-sized array.
  """
  return max(1, min(vocab_size, (chunk_size * vocab_size) // max(width, 1)))


def _accumulate_weight_gradient(grad_weight, hidden_CxD, grad_logits_CxV, vocab_major: bool, block: int):
  """grad_weight += hidden^T grad_logits ([D, V]; its transpose for a [V, D] weight), block by block.

  The blocks run in a loop (one block's product alive at a time) and each is added in place.
  """
  vocab_size = grad_logits_CxV.shape[1]

  def add_block(grad_weight, start, size):
    block_CxB = jax.lax.dynamic_slice_in_dim(grad_logits_CxV, start, size, axis=1)
    if vocab_major:  # [B, D] += block^T hidden.
      product = jax.lax.dot_general(block_CxB, hidden_CxD, (((0,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32)
      index = (start, 0)
    else:  # [D, B] += hidden^T block.
      product = jax.lax.dot_general(hidden_CxD, block_CxB, (((0,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32)
      index = (0, start)
    current = jax.lax.dynamic_slice(grad_weight, index, product.shape)
    return jax.lax.dynamic_update_slice(grad_weight, current + product.astype(grad_weight.dtype), index)

  num_full = vocab_size // block
  if num_full == 1:
    grad_weight = add_block(grad_weight, 0, block)
  elif num_full > 1:
    grad_weight = jax.lax.fori_loop(0, num_full, lambda i, g: add_block(g, i * block, block), grad_weight)
  if vocab_size % block:  # The last, smaller block.
    grad_weight = add_block(grad_weight, num_full * block, vocab_size % block)
  return grad_weight


def _fused_forward(spec, student_hidden_KxCxD, student_weight, student_bias, teacher_hidden_KxCxE,
                   teacher_weight, teacher_bias, targets_KxC, weights_KxC):
  # Each chunk's gradient with respect to the student's hidden states, weight and bias, taken at once:
  # the chunk's logits and their gradient live only inside one iteration.
  chunk_size, width = student_hidden_KxCxD.shape[1], student_hidden_KxCxD.shape[2]
  vocab_size = student_weight.shape[0 if spec.student_vocab_major else 1]
  block = _vocabulary_block(vocab_size, width, chunk_size)
  terms_and_grad = jax.value_and_grad(functools.partial(_chunk_terms, spec), has_aux=True)

  def body(carry, chunk):
    total, sums, grad_weight, grad_bias = carry
    student_hidden, teacher_hidden, targets, weights = chunk
    student_logits, teacher_logits = _logits_of_chunk(spec, student_hidden, student_weight, student_bias,
                                                      teacher_hidden, teacher_weight, teacher_bias)
    (chunk_total, chunk_sums), grad_logits = terms_and_grad(student_logits, teacher_logits, targets, weights)
    if grad_bias is not None:
      grad_bias = grad_bias + jnp.sum(grad_logits, 0).astype(grad_bias.dtype)
    # Through head_logits: the float32 cast, then h @ W in h's dtype.
    grad_logits = grad_logits.astype(student_hidden.dtype)
    weight = student_weight.astype(student_hidden.dtype)
    grad_hidden = jax.lax.dot_general(grad_logits, weight,
                                      (((1,), (0 if spec.student_vocab_major else 1,)), ((), ())))
    grad_weight = _accumulate_weight_gradient(grad_weight, student_hidden, grad_logits, spec.student_vocab_major,
                                              block)
    carry = (total + chunk_total, _add(sums, chunk_sums), grad_weight, grad_bias)
    return carry, grad_hidden.astype(student_hidden.dtype)

  zeros = lambda x: None if x is None else jnp.zeros(x.shape, jnp.float32)
  init = (jnp.zeros((), jnp.float32), _zero_sums(spec), zeros(student_weight), zeros(student_bias))
  (total, sums, grad_weight, grad_bias), grad_hidden_KxCxD = jax.lax.scan(
      body, init, (student_hidden_KxCxD, teacher_hidden_KxCxE, targets_KxC, weights_KxC))
  cast = lambda grad, like: None if grad is None else grad.astype(like.dtype)
  return (total, sums), (grad_hidden_KxCxD, cast(grad_weight, student_weight), cast(grad_bias, student_bias))


def _fused_backward(spec, residuals, cotangents):
  del spec
  grad_hidden, grad_weight, grad_bias = residuals
  cotangent = cotangents[0]  # The metrics are reported under stop_gradient: their cotangents are 0.
  scale = lambda g: None if g is None else (cotangent * g).astype(g.dtype)
  # None: no cotangent for the teacher's hidden states and head, the targets and the weights.
  return scale(grad_hidden), scale(grad_weight), scale(grad_bias), None, None, None, None, None


_fused.defvjp(_fused_forward, _fused_backward)


def _chunks(x_NxF: jax.Array | None, num_chunks: int, chunk_size: int) -> jax.Array | None:
  """[N, ...] -> [K, C, ...], padding N with zeros to K C."""
  if x_NxF is None:
    return None
  padding = num_chunks * chunk_size - x_NxF.shape[0]
  x_NxF = jnp.pad(x_NxF, [(0, padding)] + [(0, 0)] * (x_NxF.ndim - 1))
  return x_NxF.reshape((num_chunks, chunk_size) + x_NxF.shape[1:])


def fused_distillation(student_hidden_NxD: jax.Array, student_head: Head, teacher_hidden_NxE: jax.Array | None,
                       teacher_head: Head | None, targets_N: jax.Array, weights_N: jax.Array, *,
                       chunk_size: int, divergence: str = "forward_kl", beta: float = 0.5, alpha: float = 0.1,
                       temperature: float = 1.0, kd_weight: float = 1.0,
                       ce_weight: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss of `kd.methods.lm_common` from hidden states and heads, `chunk_size` tokens at a time.

      loss = kd_weight T^2 mean_real D(p, q) + ce_weight mean_real CE

  Args:
    student_hidden_NxD: [N, D] the student's final hidden states at the N predicting positions.
    student_head: the student's head (differentiated: its weight and bias receive the gradient).
    teacher_hidden_NxE: [N, E] the teacher's, or None for the cross-entropy alone.
    teacher_head: the teacher's head (its vocabulary V equal to the student's), or None.
    targets_N: [N] integer next tokens.
    weights_N: [N] 1 for a real target token, 0 for padding (any weights >= 0).
    chunk_size: tokens per chunk, > 0 (see the module docstring for one that does not divide N).
    divergence: a key of `kd.losses.TOKEN_DIVERGENCES`; beta (jsd) and alpha (skew KLs) its parameter.
    temperature: T > 0, dividing both models' logits in the divergence (not in the cross-entropy).
    kd_weight, ce_weight: the two terms' weights.

  Returns:
    (loss, metrics): the scalar loss and {"ce", "token_accuracy", and with a teacher "kd",
    "teacher_agreement"}, each a mean over the real tokens, equal to `lm_common.distillation_loss`'s.
  """
  if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
    raise ConfigError(f"chunk_size={chunk_size!r} must be an integer >= 1 for a chunked loss (0 in a method's "
                      "config: unchunked)")
  if divergence not in losses.TOKEN_DIVERGENCES:
    raise ConfigError(f"divergence={divergence!r}: choose one of {sorted(losses.TOKEN_DIVERGENCES)}")
  with_teacher = teacher_hidden_NxE is not None and bool(kd_weight)
  if with_teacher and _vocab(teacher_head) != _vocab(student_head):
    raise ConfigError(f"the teacher's head has vocabulary {_vocab(teacher_head)} and the student's "
                      f"{_vocab(student_head)}: token divergences need one vocabulary")
  _, extra = losses.TOKEN_DIVERGENCES[divergence]
  spec = _Spec(divergence, ((extra, {"beta": beta, "alpha": alpha}[extra]),) if extra else (),
               float(temperature), float(kd_weight), float(ce_weight), student_head.vocab_major,
               bool(with_teacher and teacher_head.vocab_major), with_teacher)
  num_tokens = student_hidden_NxD.shape[0]
  chunk_size = min(chunk_size, num_tokens)
  num_chunks = -(-num_tokens // chunk_size)
  weights_N = weights_N.astype(jnp.float32)
  normalised_N = weights_N / jnp.maximum(jnp.sum(weights_N), 1.0)
  if not with_teacher:
    teacher_hidden_NxE, teacher_head = None, Head(None, None, False)
  total, metrics = _fused(spec, _chunks(student_hidden_NxD, num_chunks, chunk_size), student_head.weight,
                          student_head.bias, _chunks(teacher_hidden_NxE, num_chunks, chunk_size),
                          jax.lax.stop_gradient(teacher_head.weight),
                          jax.lax.stop_gradient(teacher_head.bias),
                          _chunks(targets_N.astype(jnp.int32), num_chunks, chunk_size),
                          _chunks(jax.lax.stop_gradient(normalised_N), num_chunks, chunk_size))
  return total, jax.lax.stop_gradient(metrics)


def _vocab(head: Head) -> int:
  return head.weight.shape[0] if head.vocab_major else head.weight.shape[1]


def distillation_loss(student_out, teacher_out, batch, *, chunk_size: int, divergence: str, beta: float,
                      alpha: float, temperature: float, kd_weight: float,
                      ce_weight: float) -> tuple[Any, dict[str, Any]]:
  """`kd.methods.lm_common.distillation_loss` from the outputs' `FEATURE_PATTERNS` features, chunked.

  The same (loss, metrics) as the unchunked loss (to float32 rounding); the logits in the outputs are
  not read, so the compiled step never computes them.
  """
  targets_BxT, weights_BxT = lm_tokens.next_token_targets(batch)
  student_features = student_out.get("features", {})
  if HIDDEN_TAP not in student_features:
    raise ConfigError(f"chunk_size > 0 reads the student's {HIDDEN_TAP!r} tap point, which its outputs lack "
                      f"(features: {sorted(student_features)}): use a model with it or chunk_size=0")
  student_hidden = student_features[HIDDEN_TAP][:, :-1]
  batch_size, length = student_hidden.shape[:2]
  flat = lambda x: x.reshape((batch_size * length,) + x.shape[2:])
  teacher_hidden = teacher_head = None
  if teacher_out is not None and kd_weight:
    teacher_features = teacher_out.get("features", {})
    teacher_head = head_of(teacher_features, "teacher")
    if HIDDEN_TAP not in teacher_features:
      raise ConfigError(f"chunk_size > 0 reads the teacher's {HIDDEN_TAP!r} tap point, which its outputs lack "
                        f"(features: {sorted(teacher_features)}): use a model with it or chunk_size=0")
    teacher_hidden = flat(teacher_features[HIDDEN_TAP][:, :-1])
  total, terms = fused_distillation(
      flat(student_hidden), head_of(student_features, "student"), teacher_hidden, teacher_head,
      flat(targets_BxT), flat(weights_BxT), chunk_size=chunk_size, divergence=divergence, beta=beta,
      alpha=alpha, temperature=temperature, kd_weight=kd_weight, ce_weight=ce_weight)
  return total, {"ce": terms["ce"], "tokens": jnp.sum(weights_BxT), "token_accuracy": terms["token_accuracy"],
                 **{key: terms[key] for key in ("kd", "teacher_agreement") if key in terms}}
