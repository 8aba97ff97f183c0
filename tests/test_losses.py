"""The divergences and the Hinton KD method against hand computations and their properties."""

import math

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from kd import losses
from kd.methods import hinton_kd
from kd.methods import supervised


def _softmax(x):
  e = np.exp(x - np.max(x))
  return e / e.sum()


def test_kl_matches_hand_computation():
  student, teacher = np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 0.0])
  p, q = _softmax(teacher / 2.0), _softmax(student / 2.0)
  expected = sum(p_i * math.log(p_i / q_i) for p_i, q_i in zip(p, q))
  got = jax.jit(lambda s, t: losses.kl_divergence_with_logits(s, t, temperature=2.0))(student, teacher)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_kl_of_two_point_distributions():
  # p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 log 2 + 1/2 log(2/3).
  teacher = np.log(np.array([0.5, 0.5]))
  student = np.log(np.array([0.25, 0.75]))
  expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
  np.testing.assert_allclose(losses.kl_divergence_with_logits(student, teacher), expected, rtol=1e-6)


def test_kl_is_per_example_non_negative_and_zero_on_match():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)) * 3
  kl = losses.kl_divergence_with_logits(student, teacher, temperature=1.5)
  assert kl.shape == (5,)
  assert np.all(np.asarray(kl) > 0)
  np.testing.assert_allclose(losses.kl_divergence_with_logits(teacher, teacher, temperature=1.5),
                             np.zeros(5), atol=1e-6)
  # Shifting logits by a constant does not change a distribution.
  np.testing.assert_allclose(losses.kl_divergence_with_logits(teacher + 4.0, teacher), np.zeros(5), atol=1e-5)


def test_kl_axis_and_mask():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  np.testing.assert_allclose(losses.kl_divergence_with_logits(student.T, teacher.T, axis=0),
                             losses.kl_divergence_with_logits(student, teacher), rtol=1e-6)
  # Masking the last class equals dropping it.
  where = np.array([True, True, True, False])
  np.testing.assert_allclose(
      losses.kl_divergence_with_logits(student, teacher, where=where),
      losses.kl_divergence_with_logits(student[:, :3], teacher[:, :3]), rtol=1e-5)


def test_kl_handles_a_teacher_with_zero_probabilities():
  teacher = np.array([0.0, -1e9, -1e9])  # Probability ~1 on the first class, exactly 0 elsewhere.
  student = np.array([1.0, 2.0, 0.5])
  value = losses.kl_divergence_with_logits(student, teacher)
  assert np.isfinite(value)
  np.testing.assert_allclose(value, -np.log(_softmax(student)[0]), rtol=1e-5)
  grads = jax.grad(lambda s: losses.kl_divergence_with_logits(s, teacher))(student)
  assert np.all(np.isfinite(grads))


def test_kl_gradients_are_correct():
  rng = np.random.default_rng(2)
  teacher = rng.normal(size=(2, 5))
  jtu.check_grads(lambda s: losses.kl_divergence_with_logits(s, teacher, temperature=3.0),
                  (rng.normal(size=(2, 5)),), order=2, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_soft_cross_entropy_is_kl_plus_teacher_entropy():
  rng = np.random.default_rng(3)
  student, teacher = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  p = jax.nn.softmax(teacher / 2.0)
  entropy = -jnp.sum(p * jnp.log(p), -1)
  np.testing.assert_allclose(
      losses.soft_cross_entropy_with_logits(student, teacher, temperature=2.0),
      losses.kl_divergence_with_logits(student, teacher, temperature=2.0) + entropy, rtol=1e-5)


def test_cross_entropy_with_integer_labels():
  logits = np.array([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0]])
  labels = np.array([0, 2])
  expected = [-np.log(_softmax(logits[0])[0]), np.log(3.0)]
  np.testing.assert_allclose(losses.cross_entropy_with_integer_labels(logits, labels), expected, rtol=1e-6)


def _hinton(student_logits, teacher_logits, labels, **params):
  params = {**hinton_kd.DEFAULTS, **params}
  return hinton_kd.loss({"logits": student_logits}, {"logits": teacher_logits}, {"label": labels}, **params)


def test_hinton_kd_matches_hand_computation():
  student = np.array([[1.0, 0.0, -1.0]])
  teacher = np.array([[2.0, 1.0, 0.0]])
  labels = np.array([1])
  temperature, kd_weight, ce_weight = 2.0, 0.7, 0.3
  p, q = _softmax(teacher[0] / temperature), _softmax(student[0] / temperature)
  soft = temperature**2 * np.sum(p * np.log(p / q))
  hard = -np.log(_softmax(student[0])[1])
  loss, metrics = jax.jit(lambda s, t, y: _hinton(s, t, y, temperature=temperature, kd_weight=kd_weight,
                                                   ce_weight=ce_weight))(student, teacher, labels)
  np.testing.assert_allclose(loss, kd_weight * soft + ce_weight * hard, rtol=1e-5)
  np.testing.assert_allclose(metrics["kd"], soft, rtol=1e-5)
  np.testing.assert_allclose(metrics["ce"], hard, rtol=1e-5)


def test_hinton_kd_is_zero_when_student_equals_teacher():
  logits = np.random.default_rng(4).normal(size=(8, 10))
  _, metrics = _hinton(logits, logits, np.zeros(8, np.int32), temperature=4.0)
  np.testing.assert_allclose(metrics["kd"], 0.0, atol=1e-6)


def test_hinton_kd_sends_no_gradient_to_the_teacher():
  rng = np.random.default_rng(5)
  student, teacher = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
  labels = np.arange(4)
  teacher_grad = jax.grad(lambda t: _hinton(student, t, labels)[0])(teacher)
  np.testing.assert_array_equal(teacher_grad, np.zeros_like(teacher))
  student_grad = jax.grad(lambda s: _hinton(s, teacher, labels)[0])(student)
  assert np.all(np.isfinite(student_grad)) and np.abs(student_grad).sum() > 0


@pytest.mark.parametrize("temperature", [2.0, 8.0])
def test_t_squared_keeps_soft_gradients_comparable_across_temperatures(temperature):
  # Hinton et al., Section 2.1: for large T the gradient of the soft term is ~ (s - t) / (N T^2)
  # per logit, so T^2 * KL has a gradient ~ (s - t) / N whatever T (zero-mean logits).
  rng = np.random.default_rng(6)
  student = rng.normal(size=(1, 10)) * 0.1
  teacher = rng.normal(size=(1, 10)) * 0.1
  student, teacher = student - student.mean(), teacher - teacher.mean()
  grad = jax.grad(lambda s: _hinton(s, teacher, np.array([0]), temperature=temperature,
                                    kd_weight=1.0, ce_weight=0.0)[0])(student)
  np.testing.assert_allclose(grad, (student - teacher) / 10, rtol=0.1, atol=2e-3)


def test_supervised_ignores_the_teacher():
  logits = np.array([[0.0, 0.0]])
  loss, metrics = supervised.loss({"logits": logits}, None, {"label": np.array([1])})
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  assert set(metrics) == {"ce"}
