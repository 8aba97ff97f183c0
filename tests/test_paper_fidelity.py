"""Model options that paper configs use to match their released code: the statistics they promise."""

import functools

import jax
import numpy as np
import pytest

from kd.models import wrn


@functools.lru_cache(maxsize=None)
def _init_params():
  """{init_scheme: params} of a WRN-10-1 (one block per group) for 10 classes, both built in one program."""
  images = np.zeros((1, 32, 32, 3), np.float32)
  models = {scheme: wrn.WideResNet(num_classes=10, depth=10, widen_factor=1, init_scheme=scheme)
            for scheme in wrn.INITS}
  init = jax.jit(lambda key: {scheme: model.init(key, images, train=False)["params"]
                              for scheme, model in models.items()},
                 compiler_options={"xla_backend_optimization_level": 0})  # LLVM's optimisations buy nothing here.
  return jax.tree.map(np.asarray, init(jax.random.key(0)))


def _bn_scales(params):
  return np.concatenate([np.ravel(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                         if jax.tree_util.keystr(path).endswith("['scale']")])


def test_attention_transfer_init_is_kaiming_fan_in_and_uniform_batchnorm_scales():
  # attention-transfer utils.py: conv_params / linear_params = kaiming_normal_ (fan_in, gain sqrt(2)),
  # bnparams weight = torch.rand (U(0, 1)), biases 0.
  params = _init_params()["attention_transfer"]
  conv = params["block2_0"]["conv1"]["kernel"]  # 3x3, 16 -> 32 channels: fan-in 144, fan-out 288.
  assert conv.shape == (3, 3, 16, 32)
  np.testing.assert_allclose(conv.std(), np.sqrt(2 / 144), rtol=0.05)  # 4,608 draws: ~1% error.
  assert abs(conv.mean()) < 0.01
  head = params["head"]["kernel"]  # 64 -> 10.
  np.testing.assert_allclose(head.std(), np.sqrt(2 / 64), rtol=0.15)  # 640 draws: ~3% error.
  np.testing.assert_array_equal(params["head"]["bias"], 0.0)
  scales = _bn_scales(params)
  assert scales.size > 200 and scales.min() >= 0.0 and scales.max() < 1.0
  np.testing.assert_allclose(scales.mean(), 0.5, atol=0.05)  # U(0, 1): mean 1/2, std 0.29.
  np.testing.assert_allclose(scales.std(), np.sqrt(1 / 12), rtol=0.15)


def test_default_wrn_init_is_unchanged():
  # RepDistiller's: fan-out normal convolutions, BatchNorm scales 1.
  params = _init_params()["repdistiller"]
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


def _crd():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("fidelity_tian2020_crd", os.path.join(REPO, "experiments",
                                                                                     "tian2020_crd.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_init_stage_decays_only_what_repdistillers_init_optimizer_holds():
  # helper/pretrain.py: SGD over the connector and get_feat_modules(): not the classifier, MobileNetV2's
  # and ShuffleNetV2's last 1x1 convolution, or WRN's final BatchNorm.
  from kd import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  leaf = np.zeros(2)
  params = {"student": {"head": {"kernel": leaf, "bias": leaf}, "last_conv": {"conv": {"kernel": leaf}},
                        "bn_final": {"scale": leaf}, "block1_0": {"conv1": {"kernel": leaf}},
                        "headroom": {"kernel": leaf}, "stem": {"bn": {"scale": leaf}}},
            "connector": {"connector0": {"kernel": leaf}}}
  decayed = optimizer_lib._decay_mask(_crd().INIT_DECAY_MASK)(params)  # pylint: disable=protected-access
  assert decayed == {"student": {"head": {"kernel": False, "bias": False}, "last_conv": {"conv": {"kernel": False}},
                                 "bn_final": {"scale": False}, "block1_0": {"conv1": {"kernel": True}},
                                 "headroom": {"kernel": True}, "stem": {"bn": {"scale": True}}},
                     "connector": {"connector0": {"kernel": True}}}


@pytest.mark.parametrize("method", ["ab", "fsp"])
def test_ab_and_fsp_run_an_init_stage_then_labels_from_its_student(method):
  config = _crd().get_config(f"pair=resnet32x4_resnet8x4,method={method}")
  assert config.stage_order == ("teacher", "baseline", f"{method}_init", method)
  init, main = config.stages[f"{method}_init"], config.stages[method]
  assert init.method.name == method and init.method.ce_weight == 0.0 and init.teacher == "teacher"
  assert init.num_steps == round(30 * 50_000 / 64) and init.optimizer.schedule == "constant"
  assert main.method.name == "supervised" and main.init_from == f"stage:{method}_init" and not main.teacher
  assert main.num_steps == round(240 * 50_000 / 64) and main.optimizer.schedule == "multistep"


# RepDistiller's `feat` lists of the light students (models/mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py
# at 32x32, batch B): f0 the stem after its ReLU; MobileNetV2's f1-f4 the (linear) outputs of blocks[1],
# [2], [4], [6]; the ShuffleNets' f1-f3 each layer's output (after its ReLU; ShuffleNetV2's after the
# shuffle), `preact` the last block's sum (V1) or concatenation (V2, before the shuffle) before that ReLU.
REFERENCE_SHAPES = {
    "mobile_half": {"feat": [(16, 16, 16), (16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)]},
    "ShuffleV1": {"feat": [(32, 32, 24), (16, 16, 240), (8, 8, 480), (4, 4, 960)],
                  "preact": [(16, 16, 240), (8, 8, 480), (4, 4, 960)]},
    "ShuffleV2": {"feat": [(32, 32, 24), (16, 16, 116), (8, 8, 232), (4, 4, 464)],
                  "preact": [(16, 16, 116), (8, 8, 232), (4, 4, 464)]},
}


def _capture(module, variables, images):
  return module.apply(variables, images, train=False, capture_intermediates=True)[1]["intermediates"]


def _tap(intermediates, path):
  for part in path.split("/"):
    intermediates = intermediates[part]
  return intermediates["__call__"][0]


@pytest.mark.parametrize("name", sorted(REFERENCE_SHAPES))
def test_light_student_taps_are_repdistillers_feature_maps(name):
  from kd import models  # pylint: disable=g-import-not-at-top
  module = models.build_model(models.zoo_model_config(name), 100)
  images = np.zeros((2, 32, 32, 3), np.float32)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), images, train=False))
  intermediates = jax.eval_shape(lambda v: _capture(module, v, images), variables)
  taps = _crd().REFERENCE_FEATURES[name]
  for table, shapes in REFERENCE_SHAPES[name].items():
    assert [_tap(intermediates, path).shape for path in taps[table]] == [(2, *shape) for shape in shapes], table
  if name == "mobile_half":  # Its preact=True list is its feat list (the blocks have no ReLU at the end).
    assert taps["preact"] == taps["feat"][1:]


def test_shufflenetv2_preact_is_before_the_relu_and_the_shuffle():
  # ShuffleNetv2.py BasicBlock: preact = cat([x1, bn3(conv3(...))]); out = shuffle(cat([x1, relu(...)])).
  # A narrow network of the same blocks (the relation does not depend on the widths), NumPy weights.
  from kd.models import shufflenetv2  # pylint: disable=g-import-not-at-top
  from kd.models.shufflenetv1 import channel_shuffle  # pylint: disable=g-import-not-at-top
  module = shufflenetv2.ShuffleNetV2(10, stage_widths=(8, 16, 32), blocks_per_stage=(1, 1, 1), last_width=16)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), images, train=False))
  rng = np.random.default_rng(1)

  def draw(path, leaf):  # Zero-mean kernels, BatchNorm at its identity: pre-ReLU maps of both signs.
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return np.zeros(leaf.shape, leaf.dtype)
    return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))).astype(leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  intermediates = jax.jit(lambda v: _capture(module, v, images),
                          compiler_options={"xla_backend_optimization_level": 0})(variables)
  assert np.all(_tap(intermediates, "stem") >= 0)  # f0: after the stem's ReLU.
  for path in ("layer1_1", "layer2_1", "layer3_1"):
    preact = _tap(intermediates, f"{path}/preact")
    assert np.any(preact < 0), path
    np.testing.assert_array_equal(_tap(intermediates, path), channel_shuffle(jax.nn.relu(preact), 2))
    # The shuffle moves channels: the map is not relu(preact) in place.
    assert not np.array_equal(_tap(intermediates, path), jax.nn.relu(preact))


@pytest.mark.parametrize("pair, connector", [("resnet32x4_resnet8x4", False), ("vgg13_vgg8", False),
                                             ("wrn_40_2_wrn_40_1", True), ("resnet32x4_ShuffleV2", True)])
def test_ab_connector_is_the_identity_where_repdistillers_is(pair, connector):
  # models/util.py Connector: nn.Sequential() where a pair's channels and size agree, else ConvReg.
  assert _crd().get_config(f"pair={pair},method=ab").stages.ab_init.method.connector is connector
