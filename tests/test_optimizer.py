"""Weight-decay semantics (optimizer.weight_decay_mode, weight_decay_mask) against updates computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import config as config_lib
from kd import train
from kd.errors import ConfigError

W = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
B = np.array([0.1, -0.2], np.float32)
GRADS = [({"kernel": np.array([[0.1, 0.2], [-0.3, 0.4]], np.float32), "bias": np.array([0.5, -0.5], np.float32)}),
         ({"kernel": np.array([[-0.2, 0.1], [0.3, 0.0]], np.float32), "bias": np.array([0.1, 0.3], np.float32)})]
PEAK, WD, STEPS = 0.1, 0.01, 4


def _params():
  return {"student": {"Dense_0": {"kernel": jnp.asarray(W), "bias": jnp.asarray(B)}}}


def _two_steps(**overrides):
  optimizer, _ = train.make_optimizer(
      config_lib.optimizer_config(**{"learning_rate": PEAK, "weight_decay": WD, "schedule": "cosine", **overrides}),
      STEPS)
  params = _params()
  state = optimizer.init(params)
  for grads in GRADS:
    updates, state = optimizer.update({"student": {"Dense_0": grads}}, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return jax.tree.map(np.asarray, params["student"]["Dense_0"])


def _cosine(count):  # optax.cosine_decay_schedule(PEAK, STEPS) at `count`, over its base.
  return 0.5 * (1 + math.cos(math.pi * count / STEPS))


# Adam's bias corrections 1 - beta^t lose digits in float32 (1 - 0.999 is 0.00100003 there): the hand
# computation is float64, so compare to 1e-4; the modes differ by 1e-2 and more.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def _adam_steps():
  """Adam's bias-corrected step m_hat / (sqrt(v_hat) + eps) at steps 1 and 2, per parameter."""
  m = {k: np.zeros_like(v) for k, v in GRADS[0].items()}
  v = {k: np.zeros_like(x) for k, x in GRADS[0].items()}
  steps = []
  for t, grads in enumerate(GRADS, start=1):
    step = {}
    for key, g in grads.items():
      m[key] = 0.9 * m[key] + 0.1 * g
      v[key] = 0.999 * v[key] + 0.001 * g * g
      step[key] = (m[key] / (1 - 0.9 ** t)) / (np.sqrt(v[key] / (1 - 0.999 ** t)) + 1e-8)
    steps.append(step)
  return steps


def test_decoupled_schedule_is_big_vision_update_rule():
  # big_vision (optax.py `make`): u = -(sched(t) / base) * (lr * adam(g) + wd * w), wd on kernels only.
  params = _two_steps(name="adamw", weight_decay_mode="decoupled_schedule", weight_decay_mask="kernels")
  w, b = W.astype(np.float64), B.astype(np.float64)
  for count, step in enumerate(_adam_steps()):
    w = w - _cosine(count) * (PEAK * step["kernel"] + WD * w)
    b = b - _cosine(count) * (PEAK * step["bias"])  # No decay on the bias.
  np.testing.assert_allclose(params["kernel"], w, **TOLERANCE)
  np.testing.assert_allclose(params["bias"], b, **TOLERANCE)


def test_decoupled_is_adamw_and_decays_every_parameter_by_the_learning_rate():
  params = _two_steps(name="adamw", weight_decay_mode="decoupled")
  w, b = W.astype(np.float64), B.astype(np.float64)
  for count, step in enumerate(_adam_steps()):
    lr = PEAK * _cosine(count)
    w, b = w - lr * (step["kernel"] + WD * w), b - lr * (step["bias"] + WD * b)
  np.testing.assert_allclose(params["kernel"], w, **TOLERANCE)
  np.testing.assert_allclose(params["bias"], b, **TOLERANCE)
  # The default for adamw is the same update; big_vision's decays 1 / lr = 10x more, and not the bias.
  big_vision = _two_steps(name="adamw", weight_decay_mode="decoupled_schedule", weight_decay_mask="kernels")
  assert np.abs(big_vision["kernel"] - params["kernel"]).max() > 1e-2
  default = _two_steps(name="adamw")
  np.testing.assert_array_equal(default["kernel"], params["kernel"])


@pytest.mark.parametrize("nesterov", [False, True])
def test_coupled_sgd_is_torch_sgd_with_weight_decay(nesterov):
  # torch.optim.SGD: d = g + wd * w; buf = momentum * buf + d; d = d + momentum * buf (nesterov) or buf.
  params = _two_steps(name="sgd", momentum=0.9, nesterov=nesterov, weight_decay_mode="coupled",
                      weight_decay_mask="all")
  w, b = W.astype(np.float64), B.astype(np.float64)
  buf_w, buf_b = np.zeros_like(w), np.zeros_like(b)
  for count, grads in enumerate(GRADS):
    d_w, d_b = grads["kernel"] + WD * w, grads["bias"] + WD * b
    buf_w, buf_b = 0.9 * buf_w + d_w, 0.9 * buf_b + d_b
    step_w, step_b = (d_w + 0.9 * buf_w, d_b + 0.9 * buf_b) if nesterov else (buf_w, buf_b)
    lr = PEAK * _cosine(count)
    w, b = w - lr * step_w, b - lr * step_b
  np.testing.assert_allclose(params["kernel"], w, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(params["bias"], b, rtol=1e-6, atol=1e-7)
  assert np.array_equal(_two_steps(name="sgd", momentum=0.9, nesterov=nesterov)["kernel"], params["kernel"])


def test_a_mask_pattern_selects_parameters_by_path():
  decay_bias_only = _two_steps(name="adamw", weight_decay_mode="decoupled", weight_decay_mask="Dense_0/bias$")
  no_decay = _two_steps(name="adamw", weight_decay=0.0)
  decayed = _two_steps(name="adamw", weight_decay_mode="decoupled")
  np.testing.assert_array_equal(decay_bias_only["kernel"], no_decay["kernel"])
  np.testing.assert_array_equal(decay_bias_only["bias"], decayed["bias"])


@pytest.mark.parametrize("key, value, message", [
    ("weight_decay_mode", "l2", "choose one of"),
    ("weight_decay_mask", "kernel(", "neither 'all', 'kernels' nor a regular expression"),
])
def test_bad_weight_decay_settings_are_one_line_errors(key, value, message):
  config = config_lib.base_config()
  config.stages.teacher = config_lib.stage_config({"name": "mlp"}, {"name": "supervised"}, num_steps=2,
                                                  **{key: value})
  config.stage_order = ("teacher",)
  config.report.update(teacher="teacher", baseline="teacher", student="teacher")
  with pytest.raises(ConfigError, match=None) as error:
    config_lib.validate(config)
  assert message in str(error.value) and f"optimizer.{key}" in str(error.value)


# A multistep schedule over four updates with one decay before update 2 (0-based), for the momentum reset.
DECAY_AT, FACTOR = 2, 0.2
GRADS_4 = GRADS + [
    {"kernel": np.array([[0.3, -0.1], [0.2, 0.1]], np.float32), "bias": np.array([-0.4, 0.2], np.float32)},
    {"kernel": np.array([[0.0, 0.5], [-0.1, -0.3]], np.float32), "bias": np.array([0.2, 0.0], np.float32)}]


def _multistep(reset: bool, grads=GRADS_4, state=None, params=None):
  optimizer, _ = train.make_optimizer(config_lib.optimizer_config(
      name="sgd", learning_rate=PEAK, momentum=0.9, nesterov=False, weight_decay=WD, schedule="multistep",
      decay_boundaries=(DECAY_AT,), decay_factor=FACTOR, reset_momentum_at_decays=reset), STEPS)
  params = _params() if params is None else params
  state = optimizer.init(params) if state is None else state
  for g in grads:
    updates, state = optimizer.update({"student": {"Dense_0": g}}, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params, state


def _torch_sgd_rebuilt_at_decay(rebuild: bool):
  """cifar.py's loop by hand: torch SGD (coupled decay, momentum 0.9, dampening 0), lr x 0.2 from update 2,
  and with `rebuild` a new optimizer there (an empty momentum buffer: buf = d on its first step)."""
  w, b = W.astype(np.float64), B.astype(np.float64)
  buf_w = buf_b = None
  for count, grads in enumerate(GRADS_4):
    lr = PEAK * (FACTOR if count >= DECAY_AT else 1.0)
    if rebuild and count == DECAY_AT:
      buf_w = buf_b = None
    d_w, d_b = grads["kernel"] + WD * w, grads["bias"] + WD * b
    buf_w = d_w if buf_w is None else 0.9 * buf_w + d_w
    buf_b = d_b if buf_b is None else 0.9 * buf_b + d_b
    w, b = w - lr * buf_w, b - lr * buf_b
  return w, b


@pytest.mark.parametrize("reset", [False, True])
def test_reset_momentum_at_decays_is_a_new_torch_sgd_at_each_decay(reset):
  params, _ = _multistep(reset)
  w, b = _torch_sgd_rebuilt_at_decay(rebuild=reset)
  np.testing.assert_allclose(params["student"]["Dense_0"]["kernel"], w, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(params["student"]["Dense_0"]["bias"], b, rtol=1e-6, atol=1e-7)
  other, _ = _torch_sgd_rebuilt_at_decay(rebuild=not reset)
  assert np.abs(other - w).max() > 1e-3  # The two loops do differ on these gradients.


def test_reset_momentum_state_resumes_exactly():
  # The reset's counter is in the optimizer state: two updates, then a fresh transform (as after a
  # restore) from that state, equals four updates in one go, and the state holds only arrays.
  whole, _ = _multistep(True)
  half, state = _multistep(True, grads=GRADS_4[:2])
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))
  resumed, _ = _multistep(True, grads=GRADS_4[2:], state=jax.tree.map(np.asarray, state), params=half)
  np.testing.assert_array_equal(resumed["student"]["Dense_0"]["kernel"], whole["student"]["Dense_0"]["kernel"])


def test_reset_momentum_needs_a_multistep_schedule():
  with pytest.raises(ConfigError, match="reset_momentum_at_decays=True restarts the momentum"):
    train.make_optimizer(config_lib.optimizer_config(name="sgd", schedule="cosine", reset_momentum_at_decays=True),
                         STEPS)
