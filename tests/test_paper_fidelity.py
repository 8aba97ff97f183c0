"""Model options that paper configs use to match their released code: the statistics they promise."""

import jax
import numpy as np
import pytest

from kd.models import wrn


def _init_params(init: str, seed: int = 0):
  model = wrn.WideResNet(num_classes=10, depth=16, widen_factor=1, init_scheme=init)
  images = np.zeros((1, 32, 32, 3), np.float32)
  variables = jax.jit(lambda key: model.init(key, images, train=False),  # LLVM's optimisations buy nothing here.
                      compiler_options={"xla_backend_optimization_level": 0})(jax.random.key(seed))
  return jax.tree.map(np.asarray, variables["params"])


def _bn_scales(params):
  return np.concatenate([np.ravel(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                         if jax.tree_util.keystr(path).endswith("['scale']")])


def test_attention_transfer_init_is_kaiming_fan_in_and_uniform_batchnorm_scales():
  # attention-transfer utils.py: conv_params / linear_params = kaiming_normal_ (fan_in, gain sqrt(2)),
  # bnparams weight = torch.rand (U(0, 1)), biases 0.
  params = _init_params("attention_transfer")
  conv = params["block2_0"]["conv1"]["kernel"]  # 3x3, 16 -> 32 channels: fan-in 144, fan-out 288.
  assert conv.shape == (3, 3, 16, 32)
  np.testing.assert_allclose(conv.std(), np.sqrt(2 / 144), rtol=0.05)  # 4,608 draws: ~1% error.
  assert abs(conv.mean()) < 0.01
  head = params["head"]["kernel"]  # 64 -> 10.
  np.testing.assert_allclose(head.std(), np.sqrt(2 / 64), rtol=0.15)  # 640 draws: ~3% error.
  np.testing.assert_array_equal(params["head"]["bias"], 0.0)
  scales = _bn_scales(params)
  assert scales.size > 300 and scales.min() >= 0.0 and scales.max() < 1.0
  np.testing.assert_allclose(scales.mean(), 0.5, atol=0.05)  # U(0, 1): mean 1/2, std 0.29.
  np.testing.assert_allclose(scales.std(), np.sqrt(1 / 12), rtol=0.15)


def test_default_wrn_init_is_unchanged():
  # RepDistiller's: fan-out normal convolutions, BatchNorm scales 1.
  params = _init_params("repdistiller")
  conv = params["block2_0"]["conv1"]["kernel"]
  np.testing.assert_allclose(conv.std(), np.sqrt(2 / 288), rtol=0.05)
  np.testing.assert_array_equal(_bn_scales(params), 1.0)
  default = wrn.WideResNet(num_classes=10, depth=16, widen_factor=1)
  assert default.init_scheme == "repdistiller"


def test_unknown_wrn_init_is_refused():
  from kd import models  # pylint: disable=g-import-not-at-top
  from kd.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="init_scheme"):
    models.check_model_config(models.zoo_model_config("wrn_16_1", init_scheme="xavier"), "stages.student.model")
