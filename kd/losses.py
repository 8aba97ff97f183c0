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
