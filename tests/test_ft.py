"""Factor transfer: the factor distance by hand, its properties, the paraphraser's stage and its export.

The FT loss is checked against a numpy computation of eq. 3 on small arrays; then the minimum (zero
for proportional factors), finite gradients, no gradient into the teacher or the frozen paraphraser,
agreement under `jax.jit`, the config errors, and two real stages on digits: the paraphraser stage
exports its connector, the FT stage loads it unchanged, never trains it, and trains the translator.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import method_harness

from kd import config as config_lib
from kd import methods
from kd import train
from kd.config import base_config
from kd.config import stage_config
from kd.errors import ConfigError
from kd.methods import ft
from kd.methods import method_config

# The harness's models: student conv0 [8x8x4], teacher conv1 [4x4x16].
FT = method_config("ft", student_features=("conv0",), teacher_features=("conv1",))
PARAPHRASER = method_config("ft_paraphraser", teacher_features=("conv1",))


def _np_factor_distance(student, teacher, p):
  """Eq. 3 loop by loop: flatten each example's factor, L2-normalise, p-norm of the difference."""
  out = []
  for s, t in zip(student, teacher):
    s, t = s.ravel(), t.ravel()
    s, t = s / np.linalg.norm(s), t / np.linalg.norm(t)
    out.append(np.sum(np.abs(t - s) ** p) ** (1 / p))
  return np.array(out)


def test_factor_distance_matches_numpy_and_pools_the_larger_map():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4))
  for p in (1.0, 2.0):
    np.testing.assert_allclose(ft.factor_distance(jnp.asarray(student), jnp.asarray(teacher), p),
                               _np_factor_distance(student, teacher, p), rtol=1e-5)
  # A teacher factor at twice the resolution is average-pooled 2x2 first.
  big = rng.normal(size=(3, 4, 4, 4))
  pooled = big.reshape(3, 2, 2, 2, 2, 4).mean(axis=(2, 4))
  np.testing.assert_allclose(ft.factor_distance(jnp.asarray(student), jnp.asarray(big)),
                             _np_factor_distance(student, pooled, 1.0), rtol=1e-5)


def test_loss_is_beta_times_the_mean_distance_plus_cross_entropy():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(2, 2, 2, 3)), rng.normal(size=(2, 2, 2, 3))
  logits, labels = rng.normal(size=(2, 5)), np.array([1, 4])
  out = {"logits": jnp.asarray(logits), "features": {},
         "connector": {"student_factor": jnp.asarray(student), "teacher_factor": jnp.asarray(teacher)}}
  value, terms = ft.loss(out, {"logits": jnp.zeros((2, 5))}, {"label": jnp.asarray(labels)},
                         **{**ft.DEFAULTS, "beta": 3.0, "ce_weight": 0.5})
  log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  ce = -np.mean(log_probs[np.arange(2), labels])
  distance = _np_factor_distance(student, teacher, 1.0).mean()
  np.testing.assert_allclose(terms["ft"], distance, rtol=1e-5)
  np.testing.assert_allclose(terms["ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(value, 3.0 * distance + 0.5 * ce, rtol=1e-5)


def test_distance_is_zero_for_proportional_factors_positive_otherwise_and_bounded():
  rng = np.random.default_rng(2)
  factor = jnp.asarray(rng.normal(size=(2, 2, 2, 3)))
  np.testing.assert_allclose(ft.factor_distance(3.0 * factor, factor), 0.0, atol=1e-6)
  other = jnp.asarray(rng.normal(size=(2, 2, 2, 3)))
  distance = ft.factor_distance(other, factor, 2.0)
  assert np.all(np.asarray(distance) > 0)
  assert np.all(np.asarray(distance) <= 2.0 + 1e-6)  # Two unit vectors are at most 2 apart.


def test_gradients_are_finite_and_reach_neither_the_teacher_nor_the_paraphraser():
  state, teacher_variables, batch, step = method_harness.build_method_step(FT)
  assert set(state.model_state["connector"]) == {"batch_stats", ft.PRETRAINED}
  assert "translator0" in state.params["connector"] and "encoder_0" not in state.params["connector"]
  pretrained = state.model_state["connector"][ft.PRETRAINED]
  teacher_before = jax.tree.map(np.asarray, teacher_variables)
  pretrained_before = jax.tree.map(np.asarray, pretrained)
  new_state, metrics = step(state, teacher_variables, batch)
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert float(metrics["ft"]) > 0
  jax.tree.map(np.testing.assert_array_equal, teacher_before, jax.tree.map(np.asarray, teacher_variables))
  # The frozen paraphraser is state, not a parameter: unchanged by the update.
  jax.tree.map(np.testing.assert_array_equal, pretrained_before,
               jax.tree.map(np.asarray, new_state.model_state["connector"][ft.PRETRAINED]))
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         state.params["connector"], new_state.params["connector"])
  assert any(jax.tree.leaves(changed))  # The translator learns.


def test_jit_matches_eager():
  rng = np.random.default_rng(3)
  student, teacher = jnp.asarray(rng.normal(size=(2, 4, 4, 2))), jnp.asarray(rng.normal(size=(2, 2, 2, 2)))
  np.testing.assert_allclose(jax.jit(ft.factor_distance)(student, teacher), ft.factor_distance(student, teacher),
                             rtol=1e-6)


def test_the_paraphraser_stage_learns_to_reconstruct():
  state, teacher_variables, batch, step = method_harness.build_method_step(PARAPHRASER, learning_rate=1e-2)
  losses = []
  for _ in range(15):
    state, metrics = step(state, teacher_variables, batch)
    losses.append(float(metrics["reconstruction"]))
  assert losses[-1] < losses[0]
  assert float(metrics["grad_norm"]) > 0


@pytest.mark.parametrize("params, message", [
    ({"rate": 0.0}, "rate"),
    ({"p": 0.5}, "p=0.5"),
    ({"paraphraser_stage": ""}, "paraphraser_stage"),
    ({"student_features": ("conv0", "conv1"), "teacher_features": ("conv0", "conv1")}, "one feature map"),
])
def test_bad_parameters_are_named(params, message):
  with pytest.raises(ConfigError, match=message):
    methods.check_method_config({**FT, **params}, "stages.ft.method")


def _two_stage_config(num_steps: int = 3):
  config = base_config()
  config.data.name = "digits"
  config.data.batch_size = 16
  teacher = {"name": "cnn", "channels": (8, 16), "hidden": 16}
  student = {"name": "cnn", "channels": (4,), "hidden": 8}
  config.stages.teacher = stage_config(teacher, method_config("supervised"), num_steps=num_steps)
  config.stages.paraphraser = stage_config(student, PARAPHRASER, teacher="teacher", num_steps=num_steps)
  config.stages.ft = stage_config(student, FT, teacher="teacher", num_steps=num_steps)
  config.stage_order = ("teacher", "paraphraser", "ft")
  config.report.baseline = "paraphraser"
  config.report.student = "ft"
  config.checkpoint.every_steps = num_steps
  return config


def test_config_errors_for_a_missing_or_wrong_paraphraser_stage():
  config = _two_stage_config()
  config.stage_order = ("teacher", "ft", "paraphraser")
  with pytest.raises(ConfigError, match="must run before 'ft'"):
    config_lib.validate(config)
  config = _two_stage_config()
  config.stages.ft.method.paraphraser_stage = "teacher"
  with pytest.raises(ConfigError, match="exports none"):
    config_lib.validate(config)


def test_ft_stage_loads_the_exported_paraphraser_and_keeps_it_fixed(tmp_path):
  config = _two_stage_config()
  config_lib.validate(config)
  run_dir = str(tmp_path)
  for name in config.stage_order:
    train.train_stage(config, name, run_dir, seed=0)
  assert os.path.isdir(os.path.join(run_dir, "paraphraser", "connector"))
  assert not os.path.isdir(os.path.join(run_dir, "ft", "connector"))  # Only the stage that trains it.
  from kd import checkpoint  # pylint: disable=g-import-not-at-top
  exported = checkpoint.load_connector(os.path.join(run_dir, "paraphraser"), None)
  # The FT stage's final checkpoint holds exactly the exported paraphraser, after its training steps.
  manager = checkpoint.train_manager(os.path.join(run_dir, "ft"), keep=2)
  restored = manager.restore(manager.latest_step(),
                             args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  held = restored.state["model_state"]["connector"][ft.PRETRAINED]["connector"]
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, exported),
               jax.tree.map(np.asarray, held))
  assert train.read_result(os.path.join(run_dir, "ft"))["step"] == 3
