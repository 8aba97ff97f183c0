"""Primitive divergences between a student's and a teacher's outputs.

Written like `optax.losses`: pure functions, prediction (student) first and target (teacher)
second, per-example results (callers reduce over the batch), an `axis` for the class dimension and a
`where` mask over it. None of them stops gradients: methods decide what is differentiated.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def kl_divergence_with_logits(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  """KL(p_teacher || p_student) between temperature-softened distributions.

  With p = softmax(teacher_logits / T) and q = softmax(student_logits / T):

      KL(p || q) = sum_i p_i (log p_i - log q_i)

  Terms with p_i = 0 contribute 0 (the limit of p log p), so a teacher that puts no mass on a class
  never produces NaN.

  Args:
    student_logits: [..., C] unnormalised log-probabilities of the student.
    teacher_logits: [..., C] unnormalised log-probabilities of the teacher.
    temperature: T > 0; larger values soften both distributions.
    axis: the class axis.
    where: optional boolean [..., C] mask of classes to include (both distributions are
      renormalised over them).

  Returns:
    [...] the divergence of each example, >= 0, zero iff the softened distributions match.

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531,
    2015, Section 2.
  """
  student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=axis, where=where)
  teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=axis, where=where)
  teacher_probs = jnp.exp(teacher_log_probs)
  terms = jnp.where(teacher_probs > 0, teacher_probs * (teacher_log_probs - student_log_probs), 0.0)
  if where is not None:
    terms = jnp.where(where, terms, 0.0)
  return jnp.sum(terms, axis=axis)


def soft_cross_entropy_with_logits(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  """Cross-entropy H(p_teacher, p_student) = -sum_i p_i log q_i at temperature T.

  Equals `kl_divergence_with_logits` plus the teacher's entropy, which does not depend on the
  student: the gradients with respect to the student are the same.

  Args:
    student_logits: [..., C].
    teacher_logits: [..., C].
    temperature: T > 0.
    axis: the class axis.
    where: optional boolean [..., C] mask of classes to include.

  Returns:
    [...] the cross-entropy of each example.

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531,
    2015, Section 2.
  """
  student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=axis, where=where)
  teacher_probs = jax.nn.softmax(teacher_logits / temperature, axis=axis, where=where)
  terms = teacher_probs * student_log_probs
  if where is not None:
    terms = jnp.where(where, terms, 0.0)
  return -jnp.sum(terms, axis=axis)


def cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
) -> jax.Array:
  """-log softmax(logits)[label] for each example.

  Args:
    logits: [..., C] unnormalised log-probabilities.
    labels: [...] integer class indices.
    axis: the class axis.

  Returns:
    [...] the cross-entropy of each example.
  """
  log_probs = jax.nn.log_softmax(logits, axis=axis)
  labels = jnp.expand_dims(labels, axis)
  return -jnp.squeeze(jnp.take_along_axis(log_probs, labels, axis=axis), axis)


def _target_mask(logits: jax.Array, labels: ArrayLike, axis: int) -> jax.Array:
  """Boolean mask, shaped like `logits`, that is True at each example's label along `axis`."""
  axis = axis % logits.ndim
  classes = jnp.arange(logits.shape[axis]).reshape([-1 if i == axis else 1 for i in range(logits.ndim)])
  return classes == jnp.expand_dims(jnp.asarray(labels), axis)


def _binary_target_log_probs(logits: jax.Array, target: jax.Array, axis: int,
                             where: ArrayLike | None) -> jax.Array:
  """[..., 2] log of b = (p_t, p_\\t): the target class against all other classes together."""
  log_probs = jax.nn.log_softmax(logits, axis=axis, where=where)
  log_p_target = jnp.sum(jnp.where(target, log_probs, 0.0), axis=axis)
  others = ~target if where is None else (~target) & where
  # log p_\t from the non-target logits directly rather than log(1 - p_t), which loses every digit
  # when p_t rounds to 1 (a confident teacher at a low temperature).
  log_p_others = (jax.nn.logsumexp(jnp.where(others, logits, -jnp.inf), axis=axis)
                  - jax.nn.logsumexp(jnp.where(where, logits, -jnp.inf) if where is not None else logits,
                                     axis=axis))
  return jnp.stack([log_p_target, log_p_others], axis=-1)


def target_class_kl_divergence_with_logits(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: float = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  """Target-class KD (TCKD): KL between the binary target / non-target distributions.

  With p = softmax(logits / T) and t the label, b = (p_t, p_\\t) where p_\\t = sum_{i != t} p_i:

      TCKD = KL(b_teacher || b_student)
           = p_t^T log(p_t^T / p_t^S) + p_\\t^T log(p_\\t^T / p_\\t^S)

  It transfers only how confident the teacher is in the label (the "difficulty" of the example).

  Args:
    student_logits: [..., C] unnormalised log-probabilities of the student.
    teacher_logits: [..., C] unnormalised log-probabilities of the teacher.
    labels: [...] integer index of the target class of each example.
    temperature: T > 0, applied to both before the softmax.
    axis: the class axis.
    where: optional boolean [..., C] mask of classes to include; the label must be among them.

  Returns:
    [...] the divergence of each example, >= 0, zero iff the teacher and student give the label
    the same probability.

  References:
    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022,
    arXiv:2203.08679, Section 3.1: b in Eq. (2), TCKD in Eq. (6).
  """
  student_logits = jnp.asarray(student_logits) / temperature
  teacher_logits = jnp.asarray(teacher_logits) / temperature
  target = _target_mask(student_logits, labels, axis)
  student_binary = _binary_target_log_probs(student_logits, target, axis, where)
  teacher_binary = _binary_target_log_probs(teacher_logits, target, axis, where)
  # Both are already log-probabilities, so their log-softmax is themselves.
  return kl_divergence_with_logits(student_binary, teacher_binary, axis=-1)


def non_target_class_kl_divergence_with_logits(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: float = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  """Non-target-class KD (NCKD): KL between the distributions over the non-target classes only.

  With t the label and p-hat the softmax renormalised over the classes other than t,

      p-hat_i = exp(z_i / T) / sum_{j != t} exp(z_j / T)      (i != t)
      NCKD    = KL(p-hat_teacher || p-hat_student) = sum_{i != t} p-hat_i^T log(p-hat_i^T / p-hat_i^S)

  Args:
    student_logits: [..., C] unnormalised log-probabilities of the student.
    teacher_logits: [..., C] unnormalised log-probabilities of the teacher.
    labels: [...] integer index of the target class of each example.
    temperature: T > 0, applied to both before the softmax.
    axis: the class axis.
    where: optional boolean [..., C] mask of further classes to leave out.

  Returns:
    [...] the divergence of each example, >= 0, zero iff the non-target classes are ranked with the
    same relative probabilities; it ignores the target logit entirely.

  References:
    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022,
    arXiv:2203.08679, Section 3.1: p-hat in Eq. (3), NCKD in Eq. (6).
  """
  target = _target_mask(jnp.asarray(student_logits), labels, axis)
  others = ~target if where is None else (~target) & where
  return kl_divergence_with_logits(student_logits, teacher_logits, temperature=temperature, axis=axis,
                                   where=others)


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt with a zero (not infinite) gradient at 0, so a constant input yields no NaN."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def pearson_correlation(
    x: ArrayLike,
    y: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    epsilon: float = 1e-8,
) -> jax.Array:
  """Pearson correlation coefficient between x and y along `axis`.

      rho(u, v) = Cov(u, v) / (Std(u) Std(v))
                = sum_i (u_i - mean(u)) (v_i - mean(v))
                  / (||u - mean(u)|| ||v - mean(v)|| + epsilon)

  It is unchanged when either argument is scaled by a positive number or shifted by a constant
  (rho(a u + b, v) = rho(u, v) for a > 0), and changes sign for a < 0. The epsilon in the
  denominator makes a constant slice (zero variance) correlate 0 with anything instead of NaN.

  Args:
    x: [..., N] the first variable (e.g. the student's probabilities).
    y: [..., N] the second variable (e.g. the teacher's probabilities).
    axis: the axis of the N observations; 0 correlates columns, -1 rows.
    where: optional boolean [..., N] mask of the observations to include.
    epsilon: added to the product of the norms.

  Returns:
    [...] the correlation of each slice, in [-1, 1]; 1 iff x is a positive affine function of y.

  References:
    Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022,
    arXiv:2205.10536: the Pearson coefficient rho_p(u, v) and the distance d_p(u, v) = 1 - rho_p(u, v)
    from which L_inter (rows, axis=-1) and L_intra (columns, axis=0) are built.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  x_centered = x - jnp.mean(x, axis=axis, keepdims=True, where=where)
  y_centered = y - jnp.mean(y, axis=axis, keepdims=True, where=where)
  if where is not None:
    x_centered = jnp.where(where, x_centered, 0.0)
    y_centered = jnp.where(where, y_centered, 0.0)
  covariance = jnp.sum(x_centered * y_centered, axis=axis)
  x_norm = _safe_sqrt(jnp.sum(jnp.square(x_centered), axis=axis))
  y_norm = _safe_sqrt(jnp.sum(jnp.square(y_centered), axis=axis))
  return covariance / (x_norm * y_norm + epsilon)


def standardize(
    logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    epsilon: float = 1e-7,
) -> jax.Array:
  """Z-score of each example's logits: subtract their mean, divide by their standard deviation.

      Z(z) = (z - mean(z)) / sigma(z),  mean(z) = (1/K) sum_k z_k,
      sigma(z) = sqrt((1/K) sum_k (z_k - mean(z))^2 + epsilon)

  The result has mean 0 and standard deviation 1 along `axis` and is the same for z and a z + b
  for any a > 0 and b: only the relations between the logits remain, not their range.

  Args:
    logits: [..., K] the logits of each example.
    axis: the class axis.
    where: optional boolean [..., K] mask of the classes whose statistics are used (all entries
      are transformed with them).
    epsilon: added to the variance, so constant logits give zeros rather than NaN.

  Returns:
    [..., K] the standardized logits.

  References:
    Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024,
    arXiv:2403.01427, Algorithm 1 (the Z-score function, with the population standard deviation).
  """
  logits = jnp.asarray(logits)
  mean = jnp.mean(logits, axis=axis, keepdims=True, where=where)
  centered = logits - mean
  # Two-pass variance: mean(z^2) - mean(z)^2 cancels catastrophically for large, close logits.
  variance = jnp.mean(jnp.square(centered), axis=axis, keepdims=True, where=where)
  return centered / jnp.sqrt(variance + epsilon)


def logit_squared_error(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
  """Half the squared Euclidean distance between the student's and the teacher's logits.

      L = 1/2 ||z_student - z_teacher||_2^2 = 1/2 sum_i (z_student_i - z_teacher_i)^2

  Unlike a KL between softmaxes, it is not invariant to shifting the logits: the student must
  match the teacher's logits, not only its probabilities. Equals C/2 times the mean over classes
  (what `torch.nn.functional.mse_loss` reports).

  Args:
    student_logits: [..., C].
    teacher_logits: [..., C].
    axis: the class axis.
    where: optional boolean [..., C] mask of classes to include.

  Returns:
    [...] the error of each example, >= 0, zero iff the logits are equal.

  References:
    Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014, arXiv:1312.6184,
    Section 2: the mimic objective 1/(2T) sum_t ||g(x_t; W, beta) - z_t||_2^2 over T examples.
  """
  squares = jnp.square(jnp.asarray(student_logits) - jnp.asarray(teacher_logits))
  if where is not None:
    squares = jnp.where(where, squares, 0.0)
  return 0.5 * jnp.sum(squares, axis=axis)


# Relation primitives. They compare examples with each other, so they take a whole batch of
# embeddings and return a matrix over pairs (or triplets) of examples instead of a value per example.


def l2_normalize(x: ArrayLike, *, axis: int = -1) -> jax.Array:
  """x / ||x||_2 along `axis`, and 0 for a zero vector, with finite gradients everywhere.

  The same values as PyTorch's `F.normalize` (which divides by max(||x||, 1e-12)) except for norms
  below 1e-12. A plain `x / jnp.linalg.norm(x)` has a 0/0 gradient at x = 0 (the norm's), which
  poisons the whole batch with NaN; here the norm is only taken where it is positive, and a zero
  vector, whose direction is undefined, gets a zero gradient.

  Args:
    x: [..., D, ...] vectors along `axis`.
    axis: the vector axis.

  Returns:
    [..., D, ...] unit vectors (or zeros).
  """
  squared = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  positive = squared > 0
  return jnp.where(positive, x * jax.lax.rsqrt(jnp.where(positive, squared, 1.0)), 0.0)


def pairwise_distances(x_BxD: ArrayLike) -> jax.Array:
  """Euclidean distances ||x_i - x_j||_2 between all rows of x.

  Computed from the differences, not from ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j: that expansion loses
  small distances to cancellation in float32 (a duplicate's distance comes out as rounding noise,
  about 1e-3 for norms near 100, instead of 0). The square root is only taken where the squared
  distance is positive, so the diagonal and duplicate rows give exactly 0 with a zero gradient
  rather than NaN. Memory is B x B x D.

  Args:
    x_BxD: [B, D] one embedding per example.

  Returns:
    [B, B] symmetric distances with a zero diagonal.

  References:
    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019, arXiv:1904.05068, eq. 4.
  """
  diff_BxBxD = x_BxD[:, None, :] - x_BxD[None, :, :]
  squared_BxB = jnp.sum(jnp.square(diff_BxBxD), axis=-1)
  positive = squared_BxB > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared_BxB, 1.0)), 0.0)


def angle_potentials(x_BxD: ArrayLike) -> jax.Array:
  """Cosines of the angles that triplets of rows of x form: [i, j, k] = <e_ij, e_ik>.

  e_ij = (x_j - x_i) / ||x_j - x_i||, so entry [i, j, k] is the cosine of the angle at x_i between
  x_j and x_k (Park et al.'s eq. 6 with the vertex first). Degenerate triplets follow from
  `l2_normalize`'s zero vector: 0 when j = i or k = i (or x_j = x_i), 1 when j = k and x_j != x_i.
  Memory is B x B x B plus B x B x D.

  Args:
    x_BxD: [B, D] one embedding per example.

  Returns:
    [B, B, B] cosines in [-1, 1], symmetric in j and k.

  References:
    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019, arXiv:1904.05068, eq. 6.
  """
  unit_BxBxD = l2_normalize(x_BxD[None, :, :] - x_BxD[:, None, :], axis=-1)
  return jnp.einsum("ijd,ikd->ijk", unit_BxBxD, unit_BxBxD)


def cosine_similarities(x_BxD: ArrayLike) -> jax.Array:
  """Cosine similarities x_i.x_j / (||x_i|| ||x_j||) between all rows of x; 0 for a zero row.

  Built on `l2_normalize`, so a zero row has similarities of 0 and a zero gradient.

  Args:
    x_BxD: [B, D] one embedding per example.

  Returns:
    [B, B] symmetric similarities in [-1, 1].

  References:
    Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
    ECCV 2018, arXiv:1803.10837, Section 3 (the cosine-similarity kernel).
  """
  unit_BxD = l2_normalize(x_BxD, axis=-1)
  return unit_BxD @ unit_BxD.T


# Token-level divergences for language models.
#
# Each compares, at every position, the student's next-token distribution q = softmax(s / T) with
# the teacher's p = softmax(t / T) over the vocabulary axis, and returns one value per position
# ([B, L] for [B, L, V] logits). `where` is a mask over the *positions* (the output's shape):
# masked positions (padding, a prompt) return exactly 0, and nothing of theirs reaches a gradient.
# Callers normalise by the number of real tokens (`kd.lm.tokens.masked_mean`), not by B x L.


def _positions_only(logits, where, axis):
  # Masked positions' logits are replaced before any arithmetic, so garbage there (NaN, inf) cannot
  # reach the gradient through the zero branch of the final `where`.
  logits = jnp.asarray(logits)
  return logits if where is None else jnp.where(jnp.expand_dims(where, axis), logits, 0.0)


def _token_log_probs(student_logits, teacher_logits, temperature, axis, where):
  return (jax.nn.log_softmax(_positions_only(student_logits, where, axis) / temperature, axis=axis),
          jax.nn.log_softmax(_positions_only(teacher_logits, where, axis) / temperature, axis=axis))


def _kl_of_log_probs(log_p: jax.Array, log_q: jax.Array, axis: int) -> jax.Array:
  """sum_v p_v (log p_v - log q_v); a term with p_v = 0 is 0 (the limit of p log p)."""
  p = jnp.exp(log_p)
  return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=axis)


def _log_mixture(log_p: jax.Array, log_q: jax.Array, weight_p: float) -> jax.Array:
  """log(w p + (1 - w) q), mixing *probabilities* (not log-probabilities), stable for w in [0, 1]."""
  # log(0) = -inf at the ends of w, which logaddexp absorbs exactly: the mixture is then p or q.
  return jnp.logaddexp(jnp.log(weight_p) + log_p, jnp.log1p(-weight_p) + log_q)


def _at_positions(values: jax.Array, where: ArrayLike | None) -> jax.Array:
  return values if where is None else jnp.where(where, values, 0.0)


def token_forward_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
                     axis: int = -1, where: ArrayLike | None = None) -> jax.Array:
  """Forward KL(p || q) = sum_v p_v (log p_v - log q_v) per position, p the teacher, q the student.

  Mean-seeking: the student is pushed to cover every token the teacher gives mass to.

  Args:
    student_logits: [..., V] the student's next-token logits.
    teacher_logits: [..., V] the teacher's.
    temperature: T > 0, dividing both.
    axis: the vocabulary axis.
    where: optional boolean [...] mask of positions; masked positions are 0.

  Returns:
    [...] >= 0, zero where the distributions match.

  References:
    Hinton, Vinyals & Dean, arXiv:1503.02531, Section 2 (applied per token: Kim & Rush, "Sequence-Level
    Knowledge Distillation", EMNLP 2016, arXiv:1606.07947, eq. 3, word-level KD).
  """
  log_q, log_p = _token_log_probs(student_logits, teacher_logits, temperature, axis, where)
  return _at_positions(_kl_of_log_probs(log_p, log_q, axis), where)


def token_reverse_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
                     axis: int = -1, where: ArrayLike | None = None) -> jax.Array:
  """Reverse KL(q || p) = sum_v q_v (log q_v - log p_v) per position, q the student, p the teacher.

  Mode-seeking: the student may drop tokens the teacher finds unlikely.

  Args:
    student_logits: [..., V].
    teacher_logits: [..., V].
    temperature: T > 0.
    axis: the vocabulary axis.
    where: optional boolean [...] mask of positions.

  Returns:
    [...] >= 0, zero where the distributions match.

  References:
    Gu, Dong, Wei & Huang, "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024,
    arXiv:2306.08543, eq. 1.
  """
  log_q, log_p = _token_log_probs(student_logits, teacher_logits, temperature, axis, where)
  return _at_positions(_kl_of_log_probs(log_q, log_p, axis), where)


def token_generalized_jsd(student_logits: ArrayLike, teacher_logits: ArrayLike, *, beta: float = 0.5,
                          temperature: float = 1.0, axis: int = -1,
                          where: ArrayLike | None = None) -> jax.Array:
  """Generalized Jensen-Shannon divergence JSD(beta) of GKD, per position.

  With P the teacher's and Q the student's distribution and M the mixture of the *probabilities*
  (never of log-probabilities):

      M = beta P + (1 - beta) Q
      JSD(beta)(P || Q) = beta KL(P || M) + (1 - beta) KL(Q || M)

  Convention: beta is the teacher's weight in the mixture. beta = 0.5 is the symmetric JSD. At both
  ends JSD(beta) vanishes, and scaled it tends to a KL, continuously:

      JSD(beta) / beta         -> KL(P || Q)  (forward KL) as beta -> 0
      JSD(beta) / (1 - beta)   -> KL(Q || P)  (reverse KL) as beta -> 1

  So the loss is continuous in beta (no special case at 0 or 1); train with `token_forward_kl` or
  `token_reverse_kl` to get the ends themselves.

  Args:
    student_logits: [..., V].
    teacher_logits: [..., V].
    beta: in [0, 1], the teacher's weight in M.
    temperature: T > 0.
    axis: the vocabulary axis.
    where: optional boolean [...] mask of positions.

  Returns:
    [...] in [0, H(beta)] with H the binary entropy (<= log 2), zero where P = Q.

  References:
    Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist & Bachem, "On-Policy Distillation of Language
    Models: Learning from Self-Generated Mistakes" (GKD), ICLR 2024, arXiv:2306.13649, eq. 1 and
    the remark after it; Huszar, arXiv:1511.05101 (the skewed JSD family).
  """
  log_q, log_p = _token_log_probs(student_logits, teacher_logits, temperature, axis, where)
  log_m = _log_mixture(log_p, log_q, beta)
  jsd = beta * _kl_of_log_probs(log_p, log_m, axis) + (1.0 - beta) * _kl_of_log_probs(log_q, log_m, axis)
  return _at_positions(jsd, where)


def token_total_variation(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
                          temperature: float = 1.0, axis: int = -1,
                          where: ArrayLike | None = None) -> jax.Array:
  """Total variation distance TV(p, q) = 1/2 sum_v |p_v - q_v| per position, in [0, 1].

  Args:
    student_logits: [..., V].
    teacher_logits: [..., V].
    temperature: T > 0.
    axis: the vocabulary axis.
    where: optional boolean [...] mask of positions.

  Returns:
    [...] in [0, 1], zero where the distributions match.

  References:
    Wen, Li, Du & Mou, "f-Divergence Minimization for Sequence-Level Knowledge Distillation",
    ACL 2023, arXiv:2307.15190, Table 1 (TVD).
  """
  log_q, log_p = _token_log_probs(student_logits, teacher_logits, temperature, axis, where)
  return _at_positions(0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=axis), where)


def token_skew_forward_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *, alpha: float = 0.1,
                          temperature: float = 1.0, axis: int = -1,
                          where: ArrayLike | None = None) -> jax.Array:
  """alpha-skew KL of DistiLLM: KL(p || alpha p + (1 - alpha) q) per position, p the teacher.

  alpha = 0 is the forward KL; mixing in alpha p bounds the divergence (by -log alpha) and its
  gradient where the student gives a token almost no mass.

  Args:
    student_logits: [..., V].
    teacher_logits: [..., V].
    alpha: in [0, 1), the teacher's weight in the mixture (DistiLLM uses 0.1).
    temperature: T > 0.
    axis: the vocabulary axis.
    where: optional boolean [...] mask of positions.

  Returns:
    [...] >= 0, zero where the distributions match.

  References:
    Ko, Kim, Chen & Yun, "DistiLLM: Towards Streamlined Distillation for Large Language Models",
    ICML 2024, arXiv:2402.03898, eq. 3 (SKL).
  """
  log_q, log_p = _token_log_probs(student_logits, teacher_logits, temperature, axis, where)
  return _at_positions(_kl_of_log_probs(log_p, _log_mixture(log_p, log_q, alpha), axis), where)


def token_skew_reverse_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *, alpha: float = 0.1,
                          temperature: float = 1.0, axis: int = -1,
                          where: ArrayLike | None = None) -> jax.Array:
  """alpha-skew reverse KL of DistiLLM: KL(q || (1 - alpha) p + alpha q) per position, q the student.

  alpha = 0 is the reverse KL.

  Args:
    student_logits: [..., V].
    teacher_logits: [..., V].
    alpha: in [0, 1), the student's weight in the mixture (DistiLLM uses 0.1).
    temperature: T > 0.
    axis: the vocabulary axis.
    where: optional boolean [...] mask of positions.

  Returns:
    [...] >= 0, zero where the distributions match.

  References:
    Ko, Kim, Chen & Yun, "DistiLLM: Towards Streamlined Distillation for Large Language Models",
    ICML 2024, arXiv:2402.03898, eq. 4 (SRKL).
  """
  log_q, log_p = _token_log_probs(student_logits, teacher_logits, temperature, axis, where)
  return _at_positions(_kl_of_log_probs(log_q, _log_mixture(log_p, log_q, 1.0 - alpha), axis), where)


def token_cross_entropy(logits: ArrayLike, targets: ArrayLike, *, axis: int = -1,
                        where: ArrayLike | None = None) -> jax.Array:
  """Cross-entropy on the data, -log softmax(logits)[target], per position.

  Args:
    logits: [..., V] next-token logits.
    targets: [...] integer next tokens.
    axis: the vocabulary axis.
    where: optional boolean [...] mask of positions.

  Returns:
    [...] the negative log-likelihood of each target.

  References:
    Bengio, Ducharme, Vincent & Jauvin, "A Neural Probabilistic Language Model", JMLR 2003, eq. 1
    (the log-likelihood objective).
  """
  return _at_positions(cross_entropy_with_integer_labels(_positions_only(logits, where, axis), targets,
                                                           axis=axis), where)


# The divergences a language-model method can name (`divergence=...`), with their extra parameter.
TOKEN_DIVERGENCES = {
    "forward_kl": (token_forward_kl, None),
    "reverse_kl": (token_reverse_kl, None),
    "jsd": (token_generalized_jsd, "beta"),
    "tv": (token_total_variation, None),
    "skew_forward_kl": (token_skew_forward_kl, "alpha"),
    "skew_reverse_kl": (token_skew_reverse_kl, "alpha"),
}
