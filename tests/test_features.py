"""Features of unmodified models by module path, connectors, and the feature methods FitNets and AT."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_main
import method_harness
from kd import features
from kd import methods
from kd import models
from kd import train
from kd.errors import ConfigError
from kd.methods import attention_transfer
from kd.methods import fitnets

SMOKE = "--config=experiments/quickstart.py:smoke"
TEACHER = method_harness.TEACHER
_module = method_harness.module


def test_tap_points_list_every_submodule_output_in_call_order():
  taps = features.tap_points(_module(TEACHER), jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
  assert list(taps) == ["conv0", "norm0", "conv1", "norm1", "hidden", "Dropout_0", "head"]
  assert taps["conv1"] == (2, 4, 4, 16) and taps["hidden"] == (2, 32) and taps["head"] == (2, 10)


def test_zoo_tap_points_name_blocks_and_the_pooled_embedding():
  module = models.build_model(models.zoo_model_config("resnet8"), 100)
  taps = features.tap_points(module, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert taps["pool"] == (2, 64) and taps["layer3_0"] == (2, 8, 8, 64)
  assert list(taps).index("layer1_0") < list(taps).index("layer2_0") < list(taps).index("pool")


def test_select_exact_glob_and_regex_patterns():
  available = ["conv0", "norm0", "conv1", "norm1", "hidden", "head"]
  assert features.select(["hidden"], available, "x") == ["hidden"]
  assert features.select(["conv*"], available, "x") == ["conv0", "conv1"]
  assert features.select(["re:norm[0-9]", "conv1"], available, "x") == ["norm0", "norm1", "conv1"]
  assert features.select(["conv*", "conv1"], available, "x") == ["conv0", "conv1"]  # No repeats.
  with pytest.raises(ConfigError, match="'layer9' matches no tap point.*conv0, norm0, conv1"):
    features.select(["layer9"], available, "stages.student.method.student_features")


def test_apply_returns_the_selected_features_in_order():
  module = _module(TEACHER)
  variables = models.init_variables(module, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  batch = {"image": np.random.default_rng(0).integers(0, 255, (3, 8, 8, 1), dtype=np.uint8)}
  apply = models.make_apply(module, "image", ["head", "conv1"])
  out = apply(variables, batch, train=False)
  assert list(out["features"]) == ["head", "conv1"]
  np.testing.assert_array_equal(out["features"]["head"], out["logits"])  # The head's output is the logits.
  plain = models.make_apply(module, "image")(variables, batch, train=False)
  np.testing.assert_array_equal(plain["logits"], out["logits"])
  trained = apply(variables, batch, train=True)
  assert set(trained["state"]) == {"batch_stats"} and "intermediates" not in trained["state"]


def test_hint_regressor_kinds_follow_convreg():
  assert fitnets._regressor_kind((2, 8, 8, 4), (2, 4, 4, 16)) == "stride2"
  assert fitnets._regressor_kind((2, 4, 4, 4), (2, 8, 8, 16)) == "transpose"
  assert fitnets._regressor_kind((2, 8, 8, 4), (2, 8, 8, 16)) == "valid"
  assert fitnets._regressor_kind((2, 7, 7, 4), (2, 5, 5, 16)) == "valid"
  assert fitnets._regressor_kind((2, 3, 3, 4), (2, 8, 8, 16)) is None
  assert fitnets._regressor_kind((2, 32), (2, 64)) == "dense"


def test_hint_loss_and_attention_maps_by_hand():
  s, t = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 2.0], [3.0, 6.0]])
  np.testing.assert_allclose(fitnets.hint_loss([s], [t]), (1 + 0 + 0 + 4) / 4)
  feature = np.zeros((1, 1, 2, 2))
  feature[0, 0, 0] = [1.0, 3.0]  # mean(|a|^2) over channels = 5
  feature[0, 0, 1] = [2.0, 0.0]  # = 2
  np.testing.assert_allclose(attention_transfer.attention_map(feature), [[5 / np.sqrt(29), 2 / np.sqrt(29)]],
                             rtol=1e-6)
  # Equal maps give zero; channel counts may differ.
  a = np.random.default_rng(1).normal(size=(2, 4, 4, 3))
  out = {"features": {"x": a}, "logits": np.zeros((2, 10))}
  loss, terms = attention_transfer.loss(out, out, {"label": np.zeros(2, np.int32)},
                                        **{**attention_transfer.DEFAULTS, "ce_weight": 0.0})
  np.testing.assert_allclose(terms["at"], 0.0, atol=1e-12)
  np.testing.assert_allclose(loss, 0.0, atol=1e-9)


def _step_setup(method):
  return method_harness.build_method_step(method)


def test_fitnets_regressor_is_trained_with_the_student_and_left_out_of_the_export():
  method = methods.method_config("fitnets", student_features=("conv0",), teacher_features=("conv1",))
  state, teacher_variables, batch, step = _step_setup(method)
  # A stride-2 conv (8x8x4 -> 4x4x16) with BatchNorm: parameters and statistics in the state.
  assert state.params["connector"]["regressor0"]["kernel"].shape == (3, 3, 4, 16)
  assert "regressor0_norm" in state.model_state["connector"]["batch_stats"]
  hints = []
  for _ in range(30):
    before = state.params["connector"]["regressor0"]["kernel"]
    state, metrics = step(state, teacher_variables, batch)
    hints.append(float(metrics["hint"]))
  assert not np.array_equal(before, state.params["connector"]["regressor0"]["kernel"])
  assert hints[-1] < 0.7 * hints[0], hints
  exported = train.student_variables(state)
  assert set(exported) == {"params", "batch_stats"}
  assert not any("regressor" in "/".join(map(str, path)) for path, _ in
                 jax.tree_util.tree_flatten_with_path(exported)[0])
  grads = jax.grad(lambda tv: step(state, tv, batch)[1]["loss"])(teacher_variables)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


def test_attention_transfer_trains_and_sends_no_gradient_to_the_teacher():
  method = methods.method_config("at", student_features=("conv0",), teacher_features=("conv0",))
  state, teacher_variables, batch, step = _step_setup(method)
  values = []
  for _ in range(30):
    state, metrics = step(state, teacher_variables, batch)
    values.append(float(metrics["at"]))
  assert values[-1] < values[0]
  grads = jax.grad(lambda tv: step(state, tv, batch)[1]["loss"])(teacher_variables)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


def test_feature_shape_checks():
  with pytest.raises(ConfigError, match="differ and regressor=False"):
    fitnets.check_features({**fitnets.DEFAULTS, "regressor": False}, {"conv0": (2, 8, 8, 4)},
                           {"conv1": (2, 4, 4, 16)}, "m")
  with pytest.raises(ConfigError, match="equal resolution"):
    attention_transfer.check_features({}, {"conv0": (2, 8, 8, 4)}, {"conv1": (2, 4, 4, 16)}, "m")


FEATURE_ERRORS = [
    (["--config.stages.student.method={'name': 'fitnets', 'student_features': ('layer9',)}"],
     ["student_features: feature path 'layer9' matches no tap point", "conv0, norm0"]),
    (["--config.stages.student.method={'name': 'at', 'teacher_features': ('conv1',)}"],
     ["equal resolution", "teacher feature conv1 is (4, 4, 64)"]),
    (["--config.stages.student.method={'name': 'fitnets', 'teacher_features': ('conv1',), 'regressor': False}"],
     ["differ and regressor=False", "regressor=True"]),
]


@pytest.mark.parametrize("extra,words", FEATURE_ERRORS, ids=["no-match", "at-shapes", "no-regressor"])
def test_feature_errors_through_the_command_line(tmp_path, extra, words):
  workdir = tmp_path / "run"
  result = run_main(SMOKE, f"--workdir={workdir}", *extra)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  for word in words:
    assert word in errors[0], errors[0]
  assert not workdir.exists()
