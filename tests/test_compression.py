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


def test_a_lora_student_trains_its_factors_only_and_exports_merged_into_its_base():
  import functools  # pylint: disable=g-import-not-at-top
  from kd import methods, models  # pylint: disable=g-import-not-at-top
  from kd.models import lora  # pylint: disable=g-import-not-at-top
  base_config = models.model_config("cnn", channels=(4,), hidden=16)
  config = models.model_config("lora", base=base_config, rank=2, alpha=4.0, targets="(hidden|head)/kernel$")
  module, base = models.build_model(config, 10), models.build_model(base_config, 10)
  apply, base_apply = models.make_apply(module, "image"), models.make_apply(base, "image")
  batch = {"image": np.random.default_rng(0).integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
           "label": np.arange(16, dtype=np.int32) % 10, "index": np.arange(16, dtype=np.int32)}
  base_variables = models.init_variables(base, jax.random.PRNGKey(7), jnp.zeros((1, 8, 8, 1)))
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(learning_rate=1e-2), 100)
  optimizer = lora.freeze_base(optimizer, config)
  state = train.init_train_state(jax.random.PRNGKey(0), batch, module=module, optimizer=optimizer,
                                 initial_variables=lora.initial_variables_of_base(base_variables))
  assert sorted(k for k in state.params["student"] if k != "base") == [
      "head.kernel.lora_a", "head.kernel.lora_b", "hidden.kernel.lora_a", "hidden.kernel.lora_b"]
  start = apply(train.student_variables(state), batch, train=False)["logits"]
  np.testing.assert_array_equal(start, base_apply(base_variables, batch, train=False)["logits"])  # B = 0.
  step = jax.jit(functools.partial(train.train_step, student_apply=apply, teacher_apply=None,
                                   loss_fn=methods.build_loss(methods.method_config("supervised")),
                                   optimizer=optimizer, learning_rate=schedule))
  for _ in range(3):
    state, _ = step(state, {}, batch)
  jax.tree.map(np.testing.assert_array_equal, base_variables["params"],
               jax.tree.map(np.asarray, state.params["student"]["base"]))  # Frozen: bitwise as loaded.
  assert float(jnp.abs(state.params["student"]["head.kernel.lora_b"]).max()) > 0  # The factors trained.
  exported_config, exported = lora.exported(config, jax.device_get(train.student_variables(state)))
  assert exported_config == base_config
  np.testing.assert_allclose(base_apply(exported, batch, train=False)["logits"],
                             apply(train.student_variables(state), batch, train=False)["logits"], rtol=1e-5, atol=1e-6)
