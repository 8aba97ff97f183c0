"""timm checkpoints -> kd models: logit parity with timm on golden fixtures, layouts and their errors.

The fixtures (tests/fixtures/make_timm_fixtures.py) are tiny timm models with random weights and
timm's own logits on a few uint8 images, normalised as timm's pretrained_cfg says. kd reads the
state_dict, converts it with the same function as the full-size checkpoints, applies its own
preprocessing preset and must reproduce the logits and tap points.
"""

import functools
import json
import os

import jax
import numpy as np
import pytest

from kd import convert
from kd import models
from kd.convert import timm as timm_convert
from kd.errors import UserError
from kd.models import preprocessing

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "timm")
with open(os.path.join(FIXTURE_DIR, "fixtures.json")) as f:
  FIXTURES = json.load(f)["fixtures"]

# Each fixture is one architecture family.
FAMILIES = {
    "resnet18": "resnet, basic blocks",
    "resnet50": "resnet, bottleneck blocks",
    "vit_tiny_patch16_224": "vit",
    "deit_tiny_patch16_224": "deit",
    "deit_tiny_distilled_patch16_224": "deit, distilled",
}

# timm 1.0.31: sum(p.numel() for p in timm.create_model(name).parameters()) at 1000 classes.
TIMM_RESNET_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}

TOLERANCE = 1e-4  # max abs logit difference in float32


def _fixture(arch):
  state_dict = convert.read_state_dict(os.path.join(FIXTURE_DIR, f"{arch}.safetensors"))
  with np.load(os.path.join(FIXTURE_DIR, f"{arch}.reference.npz")) as reference:
    reference = dict(reference)
  return state_dict, reference, models.model_config(**FIXTURES[arch]["model"])


@functools.lru_cache(maxsize=None)
def _kd_outputs(arch):
  """kd's logits and tap points on the fixture's images, with the architecture's preprocessing."""
  state_dict, reference, model_config = _fixture(arch)
  layout = convert.ARCHITECTURES[arch]
  variables = layout.convert(state_dict, model_config)
  module = models.build_model(model_config, layout.num_classes(state_dict))
  taps = tuple(name for name in reference if name not in ("images", "logits"))
  apply = models.make_apply(module, "image", feature_paths=taps, preprocess=layout.preprocess)
  out = jax.jit(functools.partial(apply, train=False))(variables, {"image": reference["images"]})
  return jax.device_get(out), reference


def test_every_family_has_a_fixture():
  assert set(FIXTURES) == set(FAMILIES)
  assert set(FAMILIES) <= set(timm_convert.ARCHITECTURES)


def test_architectures_are_timm_names():
  assert set(timm_convert.ARCHITECTURES) == {
      "resnet18", "resnet34", "resnet50",
      "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
      "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
      "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224",
      "deit_base_distilled_patch16_224"}
  assert set(timm_convert.ARCHITECTURES) <= set(convert.ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_logits_equal_timms(arch):
  out, reference = _kd_outputs(arch)
  assert out["logits"].shape == reference["logits"].shape
  difference = np.abs(out["logits"] - reference["logits"]).max()
  assert difference < TOLERANCE, f"{FAMILIES[arch]}: max abs logit difference {difference}"
  # The logits vary across images and classes: the parity is not between two constants.
  assert reference["logits"].std() > 0.1


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_tap_points_equal_timms_module_outputs(arch):
  out, reference = _kd_outputs(arch)
  assert out["features"]
  for name, feature in out["features"].items():
    np.testing.assert_allclose(feature, reference[name], atol=1e-4, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_preprocessing_is_timms_pretrained_cfg(arch):
  # The fixture recorded the mean and std of the published model's pretrained_cfg.
  spec = preprocessing.parse(convert.ARCHITECTURES[arch].preprocess)
  np.testing.assert_allclose(spec.mean, FIXTURES[arch]["mean"])
  np.testing.assert_allclose(spec.std, FIXTURES[arch]["std"])
  assert spec.value_range == (0.0, 1.0)  # ToTensor's range.


def test_vit_and_deit_presets_follow_their_weights():
  for name, layout in timm_convert.ARCHITECTURES.items():
    expected = "inception" if name.startswith("vit_") else "imagenet"
    assert layout.preprocess == expected, name


@pytest.mark.parametrize("arch", sorted(TIMM_RESNET_PARAMS))
def test_resnet_parameter_counts_equal_timms(arch):
  layout = timm_convert.ARCHITECTURES[arch]
  module = models.build_model(models.model_config(**layout.model), 1000)
  shapes = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32))
  assert models.count_params(shapes["params"]) == TIMM_RESNET_PARAMS[arch]


def _torch_shape(kd_shape):
  """A kd array's shape in PyTorch's layout: [kh, kw, in, out] -> [out, in, kh, kw]; [in, out] -> [out, in]."""
  if len(kd_shape) == 4:
    return (kd_shape[3], kd_shape[2], kd_shape[0], kd_shape[1])
  return tuple(kd_shape[::-1]) if len(kd_shape) == 2 else tuple(kd_shape)


@pytest.mark.parametrize("arch", ["resnet50", "deit_base_distilled_patch16_224"])
def test_full_size_layout_covers_every_kd_array(arch):
  # A zero state_dict in timm's layout, shaped from the kd model, converts into exactly its variables.
  layout = timm_convert.ARCHITECTURES[arch]
  model_config = models.model_config(**layout.model)
  module = models.build_model(model_config, 1000)
  shapes = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1,) + layout.input_shape, np.float32))
  rows = (timm_convert.resnet_layout if arch.startswith("resnet") else timm_convert.vit_layout)(model_config)
  state_dict = {}
  for (collection, path), timm_name, _, _ in rows:
    leaf = shapes[collection]
    for key in path:
      leaf = leaf[key]
    state_dict[timm_name] = np.zeros(_torch_shape(leaf.shape), np.float32)
  variables = layout.convert(state_dict, model_config)
  assert models.variable_mismatches(shapes, variables) == []


def test_num_classes_is_read_off_the_classifier():
  state_dict, reference, _ = _fixture("deit_tiny_distilled_patch16_224")
  assert convert.ARCHITECTURES["deit_tiny_distilled_patch16_224"].num_classes(state_dict) == 10
  with pytest.raises(UserError, match="no classifier fc.weight"):
    convert.ARCHITECTURES["resnet18"].num_classes(state_dict)


def test_a_checkpoint_of_another_size_names_the_missing_arrays():
  # The full resnet18 has two blocks per stage; the fixture has one.
  with pytest.raises(UserError, match=r"missing layer1\.1\.conv1\.weight") as error:
    convert.convert(os.path.join(FIXTURE_DIR, "resnet18.safetensors"), "resnet18")
  assert "\n" not in str(error.value)


def test_a_distilled_checkpoint_does_not_convert_as_undistilled():
  state_dict, _, model_config = _fixture("deit_tiny_distilled_patch16_224")
  undistilled = {**model_config, "distilled": False}
  with pytest.raises(UserError, match="not in the model dist_token, head_dist.bias, head_dist.weight"):
    convert.ARCHITECTURES["deit_tiny_patch16_224"].convert(state_dict, undistilled)


def test_misfitting_widths_are_named_with_both_shapes():
  state_dict, _, model_config = _fixture("vit_tiny_patch16_224")
  wider = {**model_config, "hidden": 48}
  expected = r"misfitting patch_embed\.proj\.weight is \(32, 3, 8, 8\), expected \(48, \*, 8, 8\)"
  with pytest.raises(UserError, match=expected):
    convert.ARCHITECTURES["vit_tiny_patch16_224"].convert(state_dict, wider)


def test_bottleneck_checkpoint_does_not_convert_as_basic_blocks():
  state_dict, _, model_config = _fixture("resnet50")
  # A bottleneck's first convolution is 1x1 where a basic block's is 3x3, and its conv3/bn3 are extra.
  expected = (r"misfitting layer1\.0\.conv1\.weight is \(64, 64, 1, 1\), expected \(64, 64, 3, 3\)"
              r".*not in the model layer1\.0\.bn3")
  with pytest.raises(UserError, match=expected):
    convert.ARCHITECTURES["resnet18"].convert(state_dict, {**model_config, "block": "basic"})
