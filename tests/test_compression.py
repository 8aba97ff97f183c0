"""Students made by pruning (kd.pruning): the schedule of Zhu & Gupta's Eq. 1, masks that keep pruned
weights at zero through training and across a resume."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from kd import checkpoint
from kd import config as config_lib
from kd import experiment
from kd import pruning
from kd import train
from kd.errors import ConfigError

QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "quickstart.py")


def _prune(**overrides):
  return ml_collections.ConfigDict(pruning.prune_config(**overrides))


def test_sparsity_follows_the_cubic_schedule_at_pruning_steps():
  prune = _prune(sparsity=0.8, initial_sparsity=0.1, start_step=10, end_step=50, every_steps=10)
  # s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, held between pruning steps.
  by_hand = {0: 0.1, 10: 0.1, 19: 0.1, 20: 0.8 - 0.7 * 0.75**3, 30: 0.8 - 0.7 * 0.5**3, 45: 0.8 - 0.7 * 0.25**3,
             50: 0.8, 99: 0.8}
  for step, expected in by_hand.items():
    np.testing.assert_allclose(pruning.sparsity_at(jnp.int32(step), prune, 100), expected, rtol=1e-6)


def test_magnitude_mask_drops_the_smallest_weights_and_ties_by_position():
  weights = jnp.array([[0.5, -3.0, 0.1], [2.0, -0.1, 1.0]])
  np.testing.assert_array_equal(pruning.magnitude_mask(weights, 0.5), [[False, True, False], [True, False, True]])
  np.testing.assert_array_equal(pruning.magnitude_mask(weights, 0.34), [[True, True, False], [True, False, True]])


def test_pruned_weights_stay_zero_whatever_the_momentum_and_biases_are_never_pruned():
  prune = _prune(sparsity=0.5, every_steps=2, start_step=0, end_step=4)
  optimizer = pruning.wrap(optax.sgd(0.1, momentum=0.9), prune, 10)
  params = {"student": {"Dense_0": {"kernel": jnp.arange(1.0, 9.0).reshape(2, 4), "bias": jnp.ones(4)}},
            "connector": {}}
  state = optimizer.init(params)
  zeros = []
  for _ in range(10):
    updates, state = optimizer.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
    zeros.append(int(jnp.sum(params["student"]["Dense_0"]["kernel"] == 0)))
  # floor(s_t * 8) zeros from each pruning step on (s_2 = 0.4375, s_4 = 0.5); momentum never revives one.
  assert zeros == [0, 3, 3, 4, 4, 4, 4, 4, 4, 4]
  np.testing.assert_array_equal(params["student"]["Dense_0"]["kernel"][0], 0.0)  # The smallest four.
  assert bool(jnp.all(params["student"]["Dense_0"]["bias"] != 0))


def _config():
  config = experiment.load_config(QUICKSTART, "smoke")
  config.stages.student.prune = ml_collections.ConfigDict(
      pruning.prune_config(sparsity=0.75, every_steps=4, end_step=16))
  config.stages.student.num_steps = 24
  config.checkpoint.every_steps = 8
  return config


def test_a_pruned_student_resumes_with_its_masks_and_exports_its_zeros(tmp_path):
  config = _config()
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  for run_dir in (straight, interrupted):
    os.makedirs(run_dir)
    train.train_stage(config, "teacher", run_dir, seed=0)
  result = train.train_stage(config, "student", straight, seed=0)
  assert train.train_stage(config, "student", interrupted, seed=0, stop_after_step=8) is None
  train.train_stage(config, "student", interrupted, seed=0)
  expected = jax.tree.map(np.asarray, checkpoint.load_model(os.path.join(straight, "student")).variables)
  got = jax.tree.map(np.asarray, checkpoint.load_model(os.path.join(interrupted, "student")).variables)
  jax.tree.map(np.testing.assert_array_equal, expected, got)  # Masks resumed from the checkpoint.
  kernels = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(expected["params"])[0]
             if jax.tree_util.keystr(path).endswith("['kernel']")]
  for kernel in kernels:
    assert np.sum(kernel == 0) == int(0.75 * kernel.size)
  total = sum(leaf.size for leaf in jax.tree.leaves(expected["params"]))
  assert result["nonzero_params"] == total - sum(int(0.75 * k.size) for k in kernels)


@pytest.mark.parametrize("overrides, message", [
    ({"sparsity": 1.0}, r"sparsity=1.0 must be in \[0, 1\)"),
    ({"sparsity": 0.5, "end_step": 999}, "end_step=999 <= num_steps=20"),
    ({"sparsity": 0.5, "mask": "kernel("}, "neither 'kernels' nor a regular expression"),
])
def test_bad_pruning_blocks_are_one_line_errors(overrides, message):
  config = experiment.load_config(QUICKSTART, "smoke")
  config.stages.student.prune.update(overrides)
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config, num_devices=1)
