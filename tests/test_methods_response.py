"""Response-based methods (DKD, DIST, logit standardization, logit MSE) and their primitives.

Expected values come from numpy written from the papers' equations, independently of the JAX code.
"""

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from kd import losses
from kd.errors import ConfigError
from kd.methods import dist
from kd.methods import dkd
from kd.methods import hinton_kd
from kd.methods import logit_mse
from kd.methods import logit_std

METHODS = {"dkd": dkd, "dist": dist, "logit_std": logit_std, "logit_mse": logit_mse}


def _softmax(x):
  e = np.exp(x - np.max(x, axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _kl(p, q):
  return float(np.sum(p * np.log(p / q)))


def _ce(logits, labels):
  return float(np.mean([-np.log(_softmax(row)[y]) for row, y in zip(logits, labels)]))


def _run(module, student_logits, teacher_logits, labels, **params):
  params = {**module.DEFAULTS, **params}
  return module.loss({"logits": student_logits}, {"logits": teacher_logits}, {"label": labels}, **params)


def _batch(seed, batch_size=4, num_classes=6):
  rng = np.random.default_rng(seed)
  student = rng.normal(size=(batch_size, num_classes)).astype(np.float32) * 2
  teacher = rng.normal(size=(batch_size, num_classes)).astype(np.float32) * 3
  labels = rng.integers(0, num_classes, size=batch_size).astype(np.int32)
  return student, teacher, labels


# --- DKD -----------------------------------------------------------------------------------------


def _dkd_terms_reference(student, teacher, labels, temperature):
  """Per-example TCKD and NCKD from Zhao et al., Eqs. (1)-(3) and (6), in float64."""
  tckd, nckd = [], []
  for s, t, y in zip(student.astype(np.float64), teacher.astype(np.float64), labels):
    p_s, p_t = _softmax(s / temperature), _softmax(t / temperature)
    b_s = np.array([p_s[y], 1.0 - p_s[y]])
    b_t = np.array([p_t[y], 1.0 - p_t[y]])
    others = np.arange(len(s)) != y
    hat_s = np.exp(s[others] / temperature) / np.exp(s[others] / temperature).sum()
    hat_t = np.exp(t[others] / temperature) / np.exp(t[others] / temperature).sum()
    tckd.append(_kl(b_t, b_s))
    nckd.append(_kl(hat_t, hat_s))
  return np.array(tckd), np.array(nckd)


def test_dkd_matches_hand_computation():
  student = np.array([[1.0, 0.0, -1.0, 0.5], [0.2, 2.0, 0.1, -0.3]], np.float32)
  teacher = np.array([[3.0, 1.0, 0.0, -1.0], [-1.0, 1.5, 2.5, 0.0]], np.float32)
  labels = np.array([0, 2], np.int32)
  alpha, beta, temperature, ce_weight = 1.5, 8.0, 2.0, 0.7
  tckd, nckd = _dkd_terms_reference(student, teacher, labels, temperature)
  expected_tckd = temperature**2 * tckd.mean()
  expected_nckd = temperature**2 * nckd.mean()
  expected_ce = _ce(student.astype(np.float64), labels)
  loss, metrics = jax.jit(lambda s, t, y: _run(dkd, s, t, y, alpha=alpha, beta=beta, temperature=temperature,
                                               ce_weight=ce_weight))(student, teacher, labels)
  np.testing.assert_allclose(metrics["tckd"], expected_tckd, rtol=1e-5)
  np.testing.assert_allclose(metrics["nckd"], expected_nckd, rtol=1e-5)
  np.testing.assert_allclose(metrics["ce"], expected_ce, rtol=1e-5)
  np.testing.assert_allclose(loss, alpha * expected_tckd + beta * expected_nckd + ce_weight * expected_ce,
                             rtol=1e-5)


@pytest.mark.parametrize("step, factor", [(0, 1 / 20), (780, 1 / 20), (782, 2 / 20), (14844, 20 / 20),
                                          (100_000, 1.0)])
def test_dkd_warmup_scales_the_dkd_term_by_the_epoch_counted_from_one(step, factor):
  # mdistiller: min(epoch / 20, 1) * (alpha TCKD + beta NCKD), epochs from 1; CE unscaled.
  student, teacher, labels = _batch(3)
  params = {**dkd.DEFAULTS, "warmup_epochs": 20, "steps_per_epoch": 50000 / 64}
  loss, metrics = dkd.loss({"logits": student}, {"logits": teacher}, {"label": labels, "step": int(step)}, **params)
  dkd_term = params["alpha"] * metrics["tckd"] + params["beta"] * metrics["nckd"]
  np.testing.assert_allclose(metrics["warmup"], factor, rtol=1e-6)
  np.testing.assert_allclose(loss, factor * dkd_term + metrics["ce"], rtol=1e-5)
  with pytest.raises(ValueError, match="needs the batch's 'step'"):
    dkd.loss({"logits": student}, {"logits": teacher}, {"label": labels}, **params)


def test_tckd_of_a_two_point_example():
  # Three classes, label 0. Teacher p = (1/2, 1/4, 1/4): b_T = (1/2, 1/2).
  # Student p = (1/4, 1/2, 1/4): b_S = (1/4, 3/4). TCKD = 1/2 log 2 + 1/2 log(2/3).
  teacher = np.log(np.array([[0.5, 0.25, 0.25]]))
  student = np.log(np.array([[0.25, 0.5, 0.25]]))
  value = losses.target_class_kl_divergence_with_logits(student, teacher, np.array([0]))
  np.testing.assert_allclose(value, [0.5 * np.log(2.0) + 0.5 * np.log(2.0 / 3.0)], rtol=1e-5)
  # Among the non-targets the teacher is uniform (1/2, 1/2), the student (2/3, 1/3).
  value = losses.non_target_class_kl_divergence_with_logits(student, teacher, np.array([0]))
  np.testing.assert_allclose(value, [0.5 * np.log(0.5 / (2 / 3)) + 0.5 * np.log(0.5 / (1 / 3))], rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_is_tckd_plus_one_minus_teacher_target_probability_times_nckd(temperature):
  # Zhao et al., Eq. (6): KD = TCKD + (1 - p_t^T) NCKD, per example, at any temperature.
  student, teacher, labels = _batch(0, batch_size=8, num_classes=10)
  kd = losses.kl_divergence_with_logits(student, teacher, temperature=temperature)
  tckd = losses.target_class_kl_divergence_with_logits(student, teacher, labels, temperature=temperature)
  nckd = losses.non_target_class_kl_divergence_with_logits(student, teacher, labels, temperature=temperature)
  p_target = _softmax(teacher.astype(np.float64) / temperature)[np.arange(8), labels]
  np.testing.assert_allclose(kd, tckd + (1.0 - p_target) * nckd, rtol=1e-4, atol=1e-6)
  # So DKD with alpha = beta = 1 is not KD: it exceeds it by T^2 mean(p_t^T NCKD), the NCKD that KD
  # suppresses.
  _, hinton = _run(hinton_kd, student, teacher, labels, temperature=temperature)
  loss, metrics = _run(dkd, student, teacher, labels, alpha=1.0, beta=1.0, temperature=temperature,
                       ce_weight=0.0)
  np.testing.assert_allclose(loss - hinton["kd"], temperature**2 * np.mean(p_target * nckd),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["tckd"] + metrics["nckd"], loss, rtol=1e-6)


def test_dkd_terms_are_zero_when_student_equals_teacher():
  # TCKD and NCKD vanish; the cross-entropy does not (it compares with the label).
  _, teacher, labels = _batch(1)
  loss, metrics = _run(dkd, teacher, teacher, labels)
  np.testing.assert_allclose(metrics["tckd"], 0.0, atol=1e-6)
  np.testing.assert_allclose(metrics["nckd"], 0.0, atol=1e-6)
  np.testing.assert_allclose(loss, metrics["ce"], rtol=1e-6)
  assert metrics["ce"] > 0


def test_dkd_terms_are_non_negative_and_nckd_ignores_the_target_logit():
  student, teacher, labels = _batch(2, batch_size=16, num_classes=10)
  tckd = losses.target_class_kl_divergence_with_logits(student, teacher, labels, temperature=2.0)
  nckd = losses.non_target_class_kl_divergence_with_logits(student, teacher, labels, temperature=2.0)
  assert tckd.shape == nckd.shape == (16,)
  assert np.all(np.asarray(tckd) >= 0) and np.all(np.asarray(nckd) >= 0)
  moved = student.copy()
  moved[np.arange(16), labels] += 5.0
  np.testing.assert_allclose(
      losses.non_target_class_kl_divergence_with_logits(moved, teacher, labels, temperature=2.0), nckd,
      rtol=1e-5)
  assert not np.allclose(
      losses.target_class_kl_divergence_with_logits(moved, teacher, labels, temperature=2.0), tckd)


def test_dkd_primitives_axis_and_mask():
  student, teacher, _ = _batch(3)
  labels = np.array([0, 4, 2, 1], np.int32)
  where = np.array([True, True, True, True, True, False])
  for primitive in (losses.target_class_kl_divergence_with_logits,
                    losses.non_target_class_kl_divergence_with_logits):
    np.testing.assert_allclose(primitive(student.T, teacher.T, labels, temperature=3.0, axis=0),
                               primitive(student, teacher, labels, temperature=3.0), rtol=1e-5)
    # Masking the last class equals dropping it.
    np.testing.assert_allclose(primitive(student, teacher, labels, temperature=3.0, where=where),
                               primitive(student[:, :5], teacher[:, :5], labels, temperature=3.0), rtol=1e-5)


def test_dkd_is_finite_for_a_teacher_certain_of_the_label():
  # p_t^T rounds to 1 in float32: 1 - p_t would be 0 and its log -inf.
  teacher = np.array([[60.0, 0.0, -2.0, 1.0]], np.float32)
  student = np.array([[1.0, 2.0, 0.0, -1.0]], np.float32)
  labels = np.array([0], np.int32)
  loss, metrics = _run(dkd, student, teacher, labels, temperature=1.0)
  assert np.isfinite(loss) and np.isfinite(metrics["tckd"]) and np.isfinite(metrics["nckd"])
  # b_T = (1 - e, e) with e ~ exp(-59), so TCKD = -log p_t^S up to e log e.
  np.testing.assert_allclose(metrics["tckd"], -np.log(_softmax(student[0].astype(np.float64))[0]), rtol=1e-5)
  grad = jax.jit(jax.grad(lambda s: _run(dkd, s, teacher, labels, temperature=1.0)[0]))(student)
  assert np.all(np.isfinite(grad))


def test_dkd_primitive_gradients_are_correct():
  student, teacher, labels = _batch(4, batch_size=2, num_classes=5)
  for primitive in (losses.target_class_kl_divergence_with_logits,
                    losses.non_target_class_kl_divergence_with_logits):
    jtu.check_grads(jax.jit(lambda s, f=primitive: f(s, teacher, labels, temperature=2.0)), (student,), order=1,
                    modes=["rev"], atol=1e-2, rtol=1e-2)


# --- DIST ----------------------------------------------------------------------------------------


def _dist_reference(student, teacher, temperature):
  """tau^2 L_inter and tau^2 L_intra of Huang et al. with numpy's own Pearson coefficient."""
  y_s = _softmax(student.astype(np.float64) / temperature)
  y_t = _softmax(teacher.astype(np.float64) / temperature)
  inter = np.mean([1.0 - np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(y_s.shape[0])])
  intra = np.mean([1.0 - np.corrcoef(y_s[:, j], y_t[:, j])[0, 1] for j in range(y_s.shape[1])])
  return temperature**2 * inter, temperature**2 * intra


def test_pearson_correlation_matches_hand_computation():
  x = np.array([1.0, 2.0, 3.0, 4.0])
  y = np.array([2.0, 1.0, 4.0, 3.0])
  # Centered: x = (-1.5, -.5, .5, 1.5), y = (-.5, -1.5, 1.5, .5); sum xy = 3, sum x^2 = sum y^2 = 5.
  np.testing.assert_allclose(jax.jit(losses.pearson_correlation)(x, y), 0.6, rtol=1e-6)
  np.testing.assert_allclose(losses.pearson_correlation(x, x), 1.0, rtol=1e-6)
  np.testing.assert_allclose(losses.pearson_correlation(x, -x), -1.0, rtol=1e-6)


def test_pearson_correlation_ignores_positive_affine_maps_per_slice():
  # Huang et al.: rho_p(a u + b, v) = rho_p(u, v) for a > 0, which is what frees the student from
  # matching the teacher's scale. L_inter maps each row, L_intra each column.
  rng = np.random.default_rng(5)
  x, y = rng.uniform(size=(4, 7)), rng.uniform(size=(4, 7))
  expected_rows = [np.corrcoef(x[i], y[i])[0, 1] for i in range(4)]
  expected_columns = [np.corrcoef(x[:, j], y[:, j])[0, 1] for j in range(7)]
  row_scale, row_shift = rng.uniform(0.1, 5.0, size=(4, 1)), rng.normal(size=(4, 1))
  column_scale, column_shift = rng.uniform(0.1, 5.0, size=(1, 7)), rng.normal(size=(1, 7))
  np.testing.assert_allclose(losses.pearson_correlation(row_scale * x + row_shift, y), expected_rows, rtol=1e-5)
  np.testing.assert_allclose(losses.pearson_correlation(x, column_scale * y + column_shift, axis=0),
                             expected_columns, rtol=1e-5)
  np.testing.assert_allclose(losses.pearson_correlation(-row_scale * x, y), -np.array(expected_rows), rtol=1e-5)


def test_pearson_correlation_mask_and_constant_slices():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
  where = np.array([True, True, False, True, True])
  np.testing.assert_allclose(losses.pearson_correlation(x, y, where=where),
                             losses.pearson_correlation(x[:, where], y[:, where]), rtol=1e-5)
  # A constant slice has no variance: correlation 0, and a finite gradient.
  constant = np.ones(5, np.float32)
  np.testing.assert_allclose(losses.pearson_correlation(constant, y[0]), 0.0, atol=1e-6)
  grad = jax.grad(lambda a: losses.pearson_correlation(a, y[0]))(constant)
  assert np.all(np.isfinite(grad))
  jtu.check_grads(jax.jit(lambda a: losses.pearson_correlation(a, y)), (x,), order=1, modes=["rev"],
                  atol=1e-2, rtol=1e-2)


def test_dist_matches_hand_computation():
  student, teacher, labels = _batch(7, batch_size=5, num_classes=4)
  beta, gamma, temperature, ce_weight = 1.5, 0.5, 3.0, 0.3
  inter, intra = _dist_reference(student, teacher, temperature)
  hard = _ce(student.astype(np.float64), labels)
  loss, metrics = jax.jit(lambda s, t, y: _run(dist, s, t, y, beta=beta, gamma=gamma, temperature=temperature,
                                               ce_weight=ce_weight))(student, teacher, labels)
  np.testing.assert_allclose(metrics["inter"], inter, rtol=1e-4)
  np.testing.assert_allclose(metrics["intra"], intra, rtol=1e-4)
  np.testing.assert_allclose(metrics["ce"], hard, rtol=1e-5)
  np.testing.assert_allclose(loss, beta * inter + gamma * intra + ce_weight * hard, rtol=1e-4)


def test_dist_relations_are_zero_for_an_affine_image_of_the_teacher():
  # Student probabilities q = (a p + b) / (a + C b): an affine map of the teacher's p with the same
  # positive slope for every example, so every row and every column correlates perfectly (both
  # relation terms are 0) although KL says the distributions differ.
  _, teacher, labels = _batch(8, batch_size=6, num_classes=5)
  temperature, a, b = 4.0, 0.3, 0.05
  p = _softmax(teacher.astype(np.float64) / temperature)
  student = (temperature * np.log(a * p + b)).astype(np.float32)
  _, metrics = _run(dist, student, teacher, labels, temperature=temperature)
  np.testing.assert_allclose(metrics["inter"], 0.0, atol=1e-4)
  np.testing.assert_allclose(metrics["intra"], 0.0, atol=1e-4)
  _, hinton = _run(hinton_kd, student, teacher, labels, temperature=temperature)
  assert hinton["kd"] > 0.05
  _, equal = _run(dist, teacher, teacher, labels, temperature=temperature)
  np.testing.assert_allclose([equal["inter"], equal["intra"]], [0.0, 0.0], atol=1e-4)


def test_dist_relations_are_between_zero_and_two_tau_squared():
  for seed in range(5):
    student, teacher, labels = _batch(seed, batch_size=8, num_classes=10)
    _, metrics = _run(dist, student, teacher, labels, temperature=2.0)
    for key in ("inter", "intra"):
      assert -1e-5 <= float(metrics[key]) <= 2 * 2.0**2 + 1e-5


def test_dist_intra_with_a_single_example_is_constant():
  student, teacher, labels = _batch(9, batch_size=1)
  _, metrics = _run(dist, student, teacher, labels, temperature=4.0)
  np.testing.assert_allclose(metrics["intra"], 4.0**2, rtol=1e-6)
  grad = jax.jit(jax.grad(lambda s: _run(dist, s, teacher, labels, beta=0.0, ce_weight=0.0)[0]))(student)
  np.testing.assert_array_equal(grad, np.zeros_like(student))


# --- Logit standardization -----------------------------------------------------------------------


def _zscore(logits):
  logits = logits.astype(np.float64)
  mean = logits.mean(axis=-1, keepdims=True)
  sigma = np.sqrt(np.mean((logits - mean) ** 2, axis=-1, keepdims=True))  # Population (1/K), as the paper.
  return (logits - mean) / sigma


def test_standardize_matches_hand_computation():
  # mean 2.5, population variance (2.25 + .25 + .25 + 2.25) / 4 = 1.25.
  logits = np.array([1.0, 2.0, 3.0, 4.0])
  expected = (logits - 2.5) / np.sqrt(1.25)
  np.testing.assert_allclose(jax.jit(losses.standardize)(logits), expected, rtol=1e-5)
  rng = np.random.default_rng(10)
  batch = rng.normal(size=(3, 6)) * 5 + 2
  standardized = np.asarray(losses.standardize(batch))
  np.testing.assert_allclose(standardized.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(standardized.std(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(losses.standardize(batch.T, axis=0), standardized.T, rtol=1e-5)


def test_standardize_of_constant_logits_is_zero_with_finite_gradients():
  constant = np.full((2, 5), 3.0, np.float32)
  np.testing.assert_allclose(losses.standardize(constant), np.zeros((2, 5)), atol=1e-6)
  grad = jax.grad(lambda z: jnp.sum(losses.standardize(z) * np.arange(5)))(constant)
  assert np.all(np.isfinite(grad))


def test_logit_std_matches_hand_computation():
  student, teacher, labels = _batch(11)
  temperature, kd_weight, ce_weight = 2.0, 9.0, 0.1
  q_teacher = _softmax(_zscore(teacher) / temperature)
  q_student = _softmax(_zscore(student) / temperature)
  soft = temperature**2 * np.mean([_kl(p, q) for p, q in zip(q_teacher, q_student)])
  hard = _ce(student.astype(np.float64), labels)  # On the raw logits.
  loss, metrics = jax.jit(lambda s, t, y: _run(logit_std, s, t, y, temperature=temperature, kd_weight=kd_weight,
                                               ce_weight=ce_weight))(student, teacher, labels)
  np.testing.assert_allclose(metrics["kd"], soft, rtol=1e-4)
  np.testing.assert_allclose(metrics["ce"], hard, rtol=1e-5)
  np.testing.assert_allclose(loss, kd_weight * soft + ce_weight * hard, rtol=1e-4)


def test_logit_std_ignores_the_shift_and_scale_of_the_student_logits():
  student, teacher, labels = _batch(12, batch_size=5, num_classes=8)
  rng = np.random.default_rng(12)
  scale = rng.uniform(0.2, 6.0, size=(5, 1)).astype(np.float32)
  shift = rng.normal(size=(5, 1)).astype(np.float32) * 10
  _, metrics = _run(logit_std, student, teacher, labels)
  _, moved = _run(logit_std, scale * student + shift, teacher, labels)
  np.testing.assert_allclose(moved["kd"], metrics["kd"], rtol=1e-4)
  # Hence zero for any positive affine image of the teacher's logits, unlike plain KD.
  _, image = _run(logit_std, scale * teacher + shift, teacher, labels)
  np.testing.assert_allclose(image["kd"], 0.0, atol=1e-5)
  _, hinton = _run(hinton_kd, scale * teacher + shift, teacher, labels)
  assert hinton["kd"] > 0.01
  assert metrics["kd"] > 0


# --- Logit MSE -----------------------------------------------------------------------------------


def test_logit_mse_matches_hand_computation():
  student = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]], np.float32)
  teacher = np.array([[2.0, 1.0, 0.0], [0.5, -0.5, 1.5]], np.float32)
  labels = np.array([1, 0], np.int32)
  # Example 1: differences (-1, -1, -1) -> 1/2 * 3 = 1.5; example 2: (0, 1, -1) -> 1/2 * 2 = 1.
  expected_mse = (1.5 + 1.0) / 2
  hard = _ce(student.astype(np.float64), labels)
  loss, metrics = jax.jit(lambda s, t, y: _run(logit_mse, s, t, y, mse_weight=2.0, ce_weight=0.5))(
      student, teacher, labels)
  np.testing.assert_allclose(metrics["mse"], expected_mse, rtol=1e-6)
  np.testing.assert_allclose(metrics["ce"], hard, rtol=1e-5)
  np.testing.assert_allclose(loss, 2.0 * expected_mse + 0.5 * hard, rtol=1e-6)
  # Not shift-invariant: the first example has the same probabilities, but not the same logits.
  np.testing.assert_allclose(losses.kl_divergence_with_logits(student[0], teacher[0]), 0.0, atol=1e-6)


def test_logit_mse_is_zero_only_when_the_logits_match():
  student, teacher, labels = _batch(13)
  _, metrics = _run(logit_mse, teacher, teacher, labels)
  np.testing.assert_allclose(metrics["mse"], 0.0, atol=1e-7)
  errors = losses.logit_squared_error(student, teacher)
  assert errors.shape == (4,) and np.all(np.asarray(errors) > 0)
  where = np.array([True, False, True, True, True, True])
  np.testing.assert_allclose(losses.logit_squared_error(student, teacher, where=where),
                             losses.logit_squared_error(student[:, where], teacher[:, where]), rtol=1e-6)


# --- Every method --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_no_gradient_reaches_the_teacher(name):
  student, teacher, labels = _batch(14, batch_size=4, num_classes=10)
  module = METHODS[name]
  teacher_grad = jax.jit(jax.grad(lambda t: _run(module, student, t, labels)[0]))(teacher)
  np.testing.assert_array_equal(teacher_grad, np.zeros_like(teacher))
  student_grad = jax.jit(jax.grad(lambda s: _run(module, s, teacher, labels)[0]))(student)
  assert np.all(np.isfinite(student_grad)) and np.abs(student_grad).sum() > 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_runs_under_jit_with_scalar_metrics(name):
  student, teacher, labels = _batch(15)
  module = METHODS[name]
  loss, metrics = jax.jit(lambda s, t, y: _run(module, s, t, y))(student, teacher, labels)
  eager_loss, eager_metrics = _run(module, student, teacher, labels)
  assert np.shape(loss) == () and all(np.shape(value) == () for value in metrics.values())
  np.testing.assert_allclose(loss, eager_loss, rtol=1e-5)
  assert set(metrics) == set(eager_metrics) and "ce" in metrics
  assert module.NEEDS_TEACHER
  module.check(dict(module.DEFAULTS), "method")


def _bad_params():
  cases = []
  for name, module in sorted(METHODS.items()):
    for key in module.DEFAULTS:
      cases.append((name, key, -1.0))
      if key == "temperature":
        cases.append((name, key, 0.0))
  return cases


@pytest.mark.parametrize("name,key,value", _bad_params())
def test_check_rejects_impossible_values(name, key, value):
  module = METHODS[name]
  with pytest.raises(ConfigError, match=f"method.{key}="):
    module.check({**module.DEFAULTS, key: value}, "method")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_check_rejects_all_weights_zero(name):
  module = METHODS[name]
  zeros = {key: 0.0 for key in module.DEFAULTS if key != "temperature"}
  with pytest.raises(ConfigError, match="nothing is learned"):
    module.check({**module.DEFAULTS, **zeros}, "method")
