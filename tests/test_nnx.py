"""Flax NNX models through the same pure apply contract, trainer, checkpoints and features."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from conftest import REPO
from kd import checkpoint
from kd import experiment
from kd import features
from kd import models
from kd import train

NNX_STUDENT = {"name": "nnx_cnn", "channels": (8, 16), "hidden": 32, "dropout": 0.3}


def _model():
  return models.build_model(models.model_config(**NNX_STUDENT), 10)


def test_nnx_apply_contract_features_and_state():
  model = _model()
  variables = models.init_variables(model, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  assert set(variables) == {"params", "nnx_state"}
  taps = features.tap_points(model, jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
  assert taps["convs/0"] == (2, 8, 8, 8) and taps["convs/1"] == (2, 4, 4, 16) and taps["head"] == (2, 10)
  apply = models.make_apply(model, "image", ["head", "convs/1"])
  batch = {"image": np.random.default_rng(0).integers(0, 255, (4, 8, 8, 1), dtype=np.uint8)}
  evaluated = jax.jit(lambda v, b: apply(v, b, train=False))(variables, batch)
  np.testing.assert_array_equal(evaluated["features"]["head"], evaluated["logits"])
  assert "state" not in evaluated
  step = jax.jit(lambda v, b, key: apply(v, b, train=True, rngs={"dropout": key}))
  first, again = step(variables, batch, jax.random.PRNGKey(1)), step(variables, batch, jax.random.PRNGKey(1))
  other = step(variables, batch, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(first["logits"], again["logits"])  # Randomness is a function of the key.
  assert not np.array_equal(first["logits"], other["logits"])  # Dropout is on in training.
  old_mean = variables["nnx_state"]["norms"][0]["mean"][...]
  new_mean = first["state"]["nnx_state"]["norms"][0]["mean"][...]
  assert not np.array_equal(old_mean, new_mean)  # BatchNorm statistics move in training.


def test_nnx_student_distils_checkpoints_and_resumes_exactly(tmp_path):
  config = experiment.load_config(os.path.join(REPO, "experiments", "quickstart.py"), "smoke")
  config.stages.student.model = models.model_config(**NNX_STUDENT)
  config.stages.student.method = {"name": "at", "student_features": ("convs/0",),
                                  "teacher_features": ("conv0",), "p": 2.0, "at_weight": 1000.0,
                                  "ce_weight": 1.0}
  config.stages.student.num_steps = 24
  config.checkpoint.every_steps = 8
  for run in ("straight", "interrupted"):
    run_dir = str(tmp_path / run)
    assert train.train_stage(config, "teacher", run_dir, seed=0) is not None
    if run == "interrupted":
      assert train.train_stage(config, "student", run_dir, seed=0, stop_after_step=11) is None
    result = train.train_stage(config, "student", run_dir, seed=0)
    assert result is not None and result["step"] == 24
  straight, resumed = (checkpoint.load_model(str(tmp_path / run / "student")) for run in ("straight", "interrupted"))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, straight.variables),
               jax.tree.map(np.asarray, resumed.variables))
  assert straight.model_config["name"] == "nnx_cnn"
