"""Token-level divergences and the language-model methods: hand computations and properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import losses
from kd.methods import lm_common
from kd.methods import lm_kd

DIVERGENCES = sorted(losses.TOKEN_DIVERGENCES)


def _softmax(x):
  e = np.exp(x - np.max(x, -1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _kl(p, q):
  return float(np.sum(p * np.log(p / q)))


def _call(name, student, teacher, **kwargs):
  fn, _ = losses.TOKEN_DIVERGENCES[name]
  return fn(student, teacher, **kwargs)


S = np.array([1.0, 2.0, 0.5, -1.0])
T = np.array([0.3, -1.0, 2.0, 0.0])


def test_each_divergence_matches_a_hand_computation():
  temperature = 2.0
  p, q = _softmax(T / temperature), _softmax(S / temperature)
  beta, alpha = 0.3, 0.1
  m = beta * p + (1 - beta) * q  # Mixture of probabilities.
  expected = {
      "forward_kl": _kl(p, q),
      "reverse_kl": _kl(q, p),
      "jsd": beta * _kl(p, m) + (1 - beta) * _kl(q, m),
      "tv": 0.5 * float(np.abs(p - q).sum()),
      "skew_forward_kl": _kl(p, alpha * p + (1 - alpha) * q),
      "skew_reverse_kl": _kl(q, (1 - alpha) * p + alpha * q),
  }
  for name in DIVERGENCES:
    extra = {"jsd": {"beta": beta}, "skew_forward_kl": {"alpha": alpha},
             "skew_reverse_kl": {"alpha": alpha}}.get(name, {})
    got = jax.jit(lambda s, t: _call(name, s, t, temperature=temperature, **extra))(S, T)
    np.testing.assert_allclose(got, expected[name], rtol=1e-5, err_msg=name)


def test_jsd_mixes_probabilities_not_log_probabilities():
  # Two-point distributions by hand: P = (1/2, 1/2), Q = (1/4, 3/4), beta = 1/2, M = (3/8, 5/8).
  teacher, student = np.log([0.5, 0.5]), np.log([0.25, 0.75])
  expected = 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)) + 0.5 * (
      0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625))
  np.testing.assert_allclose(losses.token_generalized_jsd(student, teacher, beta=0.5), expected, rtol=1e-6)
  # Swapping the roles swaps beta: JSD(beta)(P||Q) = JSD(1-beta)(Q||P), so beta's side is fixed.
  np.testing.assert_allclose(losses.token_generalized_jsd(S, T, beta=0.2),
                             losses.token_generalized_jsd(T, S, beta=0.8), rtol=1e-5)
  assert not np.isclose(losses.token_generalized_jsd(S, T, beta=0.2),
                        losses.token_generalized_jsd(S, T, beta=0.8))


@pytest.mark.parametrize("name", DIVERGENCES)
def test_non_negative_and_zero_when_distributions_match(name):
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(3, 5, 11)), 3 * rng.normal(size=(3, 5, 11))
  values = _call(name, student, teacher)
  assert values.shape == (3, 5) and np.all(np.asarray(values) > 0)
  np.testing.assert_allclose(_call(name, teacher + 2.0, teacher), np.zeros((3, 5)), atol=1e-6)


def test_jsd_tends_to_the_matching_kl_at_both_ends_continuously():
  p, q = _softmax(T), _softmax(S)
  forward, reverse = _kl(p, q), _kl(q, p)
  for small in (1e-2, 1e-3):
    np.testing.assert_allclose(losses.token_generalized_jsd(S, T, beta=small) / small, forward,
                               rtol=6 * small)  # The next term of the expansion is O(beta).
    np.testing.assert_allclose(losses.token_generalized_jsd(S, T, beta=1 - small) / small, reverse,
                               rtol=6 * small)  # The next term of the expansion is O(beta).
  # Continuous at the ends: no jump to a KL at beta = 0 or 1, it vanishes like beta (1 - beta).
  for end in (0.0, 1.0):
    assert float(losses.token_generalized_jsd(S, T, beta=end)) == 0.0
  assert 0 < float(losses.token_generalized_jsd(S, T, beta=1e-4)) < 2e-4 * forward
  # The skew KLs reach the plain KLs at alpha = 0.
  np.testing.assert_allclose(losses.token_skew_forward_kl(S, T, alpha=0.0), forward, rtol=1e-5)
  np.testing.assert_allclose(losses.token_skew_reverse_kl(S, T, alpha=0.0), reverse, rtol=1e-5)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_masked_positions_contribute_nothing_and_get_no_gradient(name):
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(2, 4, 7)), rng.normal(size=(2, 4, 7))
  where = np.array([[True, True, False, False], [True, False, False, False]])
  values = _call(name, student, teacher, where=where)
  assert np.all(np.asarray(values)[~where] == 0.0)
  np.testing.assert_allclose(np.asarray(values)[where], np.asarray(_call(name, student, teacher))[where],
                             rtol=1e-6)
  # NaN logits at masked positions neither leak into the value nor into the gradient.
  poisoned = np.where(where[..., None], student, np.nan)
  grad = jax.grad(lambda s: jnp.sum(_call(name, s, teacher, where=where)))(poisoned)
  assert np.all(np.isfinite(np.asarray(grad)[where])) and np.all(np.asarray(grad)[~where] == 0)


def _batch(mask):
  mask = np.asarray(mask, bool)
  return {"tokens": np.arange(mask.size).reshape(mask.shape) % 7, "mask": mask}


def test_loss_is_normalised_by_the_number_of_real_tokens():
  rng = np.random.default_rng(2)
  student, teacher = rng.normal(size=(2, 5, 7)), rng.normal(size=(2, 5, 7))
  mask = [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]  # Targets (positions 1..4): 4 + 1 = 5 real tokens.
  batch = _batch(mask)
  total, metrics = lm_kd.loss({"logits": student}, {"logits": teacher}, batch,
                              **{**lm_kd.DEFAULTS, "ce_weight": 0.0})
  per_token = np.asarray(losses.token_forward_kl(student[:, :-1], teacher[:, :-1]))
  weights = np.asarray(mask, float)[:, 1:]
  np.testing.assert_allclose(total, (per_token * weights).sum() / 5.0, rtol=1e-5)
  assert float(metrics["tokens"]) == 5.0
  # Padding the batch with fully masked windows changes nothing (the divisor is not B x L).
  padded_total, _ = lm_kd.loss({"logits": np.concatenate([student, student])},
                               {"logits": np.concatenate([teacher, teacher])},
                               _batch(mask + [[0] * 5, [0] * 5]), **{**lm_kd.DEFAULTS, "ce_weight": 0.0})
  np.testing.assert_allclose(padded_total, total, rtol=1e-6)


def test_cross_entropy_term_by_hand():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1, 3, 5))
  batch = {"tokens": np.array([[4, 1, 2]]), "mask": np.array([[True, True, True]])}
  total, _ = lm_common.distillation_loss({"logits": logits}, None, batch, divergence="forward_kl", beta=0.5,
                                         alpha=0.1, temperature=1.0, kd_weight=0.0, ce_weight=1.0)
  log_probs = np.log(_softmax(logits[0]))
  np.testing.assert_allclose(total, -(log_probs[0, 1] + log_probs[1, 2]) / 2, rtol=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "skew_reverse_kl"])
def test_no_gradient_into_the_teacher_and_the_teacher_term_counts(divergence):
  rng = np.random.default_rng(4)
  student, teacher = jnp.asarray(rng.normal(size=(2, 4, 6))), jnp.asarray(rng.normal(size=(2, 4, 6)))
  batch = _batch(np.ones((2, 4)))
  params = {**lm_kd.DEFAULTS, "divergence": divergence, "ce_weight": 0.5}

  def objective(s, t):
    return lm_kd.loss({"logits": s}, {"logits": t}, batch, **params)[0]

  student_grad, teacher_grad = jax.jit(jax.grad(objective, argnums=(0, 1)))(student, teacher)
  assert np.all(np.asarray(teacher_grad) == 0)
  assert np.all(np.isfinite(np.asarray(student_grad))) and np.abs(np.asarray(student_grad)).sum() > 0
  # The teacher's loss is not dropped: another teacher gives another loss.
  assert not np.isclose(objective(student, teacher), objective(student, teacher * 2.0))
