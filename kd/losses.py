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
