"""The CRD benchmark's model zoo: reference parameter counts, forward passes and feature tap points."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import models
from kd.models import cifar_resnet
from kd.models import imagenet_resnet
from kd.models import mobilenetv2
from kd.models import shufflenetv1
from kd.models import shufflenetv2
from kd.models import vgg
from kd.models import wrn

ZOO = {**cifar_resnet.ZOO, **wrn.ZOO, **vgg.ZOO, **mobilenetv2.ZOO, **shufflenetv1.ZOO,
       **shufflenetv2.ZOO, **imagenet_resnet.ZOO}

IMAGENET = set(imagenet_resnet.ZOO)

# For the few forward passes a test runs, LLVM's optimisations cost most of the compile time and buy
# nothing; the compiled programs compute the same values up to rounding.
UNOPTIMISED = {"xla_backend_optimization_level": 0}
jit = functools.partial(jax.jit, compiler_options=UNOPTIMISED)

# Trainable parameters of the reference PyTorch models (the CRD benchmark's definitions; torchvision's
# for resnet18 and resnet34), counted as sum(p.numel() for p in model.parameters()) at 100 classes
# for the CIFAR models and at 1000 classes for the ImageNet ones. BatchNorm running statistics are
# buffers there and are not counted.
REFERENCE_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobile_half": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,  # torchvision and timm, bottleneck blocks.
}

# Width of the pooled feature before the classifier: the embedding CRD contrasts.
EMBEDDING_DIM = {
    "resnet8": 64, "resnet14": 64, "resnet20": 64, "resnet32": 64, "resnet44": 64, "resnet56": 64,
    "resnet110": 64, "resnet8x4": 256, "resnet32x4": 256,
    "wrn_16_1": 64, "wrn_16_2": 128, "wrn_40_1": 64, "wrn_40_2": 128,
    "vgg8": 512, "vgg11": 512, "vgg13": 512, "vgg16": 512, "vgg19": 512,
    "mobile_half": 1280, "ShuffleV1": 960, "ShuffleV2": 1024,
    "resnet18": 512, "resnet34": 512, "resnet50": 2048,
}


def _build(name, num_classes=None):
  module_class, attributes = ZOO[name]
  if num_classes is None:
    num_classes = 1000 if name in IMAGENET else 100
  return module_class(num_classes=num_classes, **attributes)


def _images(name, batch=1):
  size = 224 if name in IMAGENET else 32
  return jnp.zeros((batch, size, size, 3), jnp.float32)


def _variable_shapes(model, images):
  # eval_shape traces without compiling or allocating: cheap even for vgg19 and resnet34.
  return jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))


@functools.lru_cache(maxsize=None)
def _zoo_variable_shapes(name):
  """The variable shapes of zoo model `name`, traced once for the tests that all need them."""
  return _variable_shapes(_build(name), _images(name))


def test_every_zoo_model_has_a_reference_count():
  assert set(ZOO) == set(REFERENCE_PARAMS) == set(EMBEDDING_DIM)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_equals_the_reference(name):
  shapes = _zoo_variable_shapes(name)
  count = sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))
  assert count == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("module_class", sorted({c for c, _ in ZOO.values()}, key=lambda c: c.__name__))
def test_models_follow_the_model_contract(module_class):
  # kd.models builds a model from {"name": ..., **attributes} with num_classes from the dataset.
  fields = [f for f in dataclasses.fields(module_class) if f.name not in ("parent", "name")]
  assert fields[0].name == "num_classes"
  assert all(f.default is not dataclasses.MISSING for f in fields[1:]), module_class


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_pool_and_head_are_tap_points(name):
  model = _build(name)
  images = _images(name, batch=2)
  variables = _zoo_variable_shapes(name)  # Variables do not depend on the batch size.
  logits, state = jax.eval_shape(
      lambda v: model.apply(v, images, train=False, capture_intermediates=True), variables)
  features = state["intermediates"]
  assert features["pool"]["__call__"][0].shape == (2, EMBEDDING_DIM[name])
  assert features["head"]["__call__"][0].shape == logits.shape == (2, model.num_classes)


def _random_variables(model, images, seed=0):
  """Variables of the model's shapes: He-normal weights, zero biases, unit scales, statistics (0, 1).

  `model.init` would compile a random-bits kernel for every parameter, which on CPU costs several
  times the forward pass under test; NumPy draws the same kind of weights for free.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = np.prod(leaf.shape[:-1])
    return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, _variable_shapes(model, images))


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "ShuffleV2", "mobile_half"])
def test_forward_in_train_and_eval_mode(name):
  model = _build(name)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = _random_variables(model, images)
  assert set(variables) == {"params", "batch_stats"}

  @jit
  def forward(variables, images):
    eval_logits = model.apply(variables, images, train=False)
    train_logits, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return eval_logits, train_logits, state

  eval_logits, train_logits, state = forward(variables, images)
  for logits in (eval_logits, train_logits):
    assert logits.shape == (2, 100)
    assert np.all(np.isfinite(logits))
  # Normalising with batch statistics differs from normalising with the running ones...
  assert not np.allclose(eval_logits, train_logits)
  # ...and training moves the running statistics towards the batch's. Every variance moves; a mean
  # can stay at zero where a BatchNorm follows a bias-free 1x1 conv of a batch-normalised input.
  before, _ = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])
  after = jax.tree.leaves(state["batch_stats"])
  assert len(before) == len(after)
  moved = {jax.tree_util.keystr(path): not np.allclose(b, a) for (path, b), a in zip(before, after)}
  assert all(m for key, m in moved.items() if key.endswith("['var']"))
  assert any(m for key, m in moved.items() if key.endswith("['mean']"))


@pytest.mark.parametrize("name, stem, widths, blocks_per_stage", [
    ("resnet8x4", 32, (64, 128, 256), 1),
    ("resnet32x4", 32, (64, 128, 256), 5),
])
def test_resnet_x4_stage_outputs_are_tap_points(name, stem, widths, blocks_per_stage):
  model = _build(name)
  images = _images(name, batch=2)
  variables = _variable_shapes(model, images)
  _, state = jax.eval_shape(
      lambda v: model.apply(v, images, train=False, capture_intermediates=True), variables)
  features = state["intermediates"]
  assert features["stem"]["__call__"][0].shape == (2, 32, 32, stem)
  last = blocks_per_stage - 1
  for stage, (width, resolution) in enumerate(zip(widths, (32, 16, 8)), start=1):
    block = features[f"layer{stage}_{last}"]
    assert block["__call__"][0].shape == (2, resolution, resolution, width)
    # The residual sum before the block's ReLU, which some methods distil instead.
    assert block["preact"]["__call__"][0].shape == (2, resolution, resolution, width)
  assert f"layer1_{blocks_per_stage}" not in features
  assert features["pool"]["__call__"][0].shape == (2, 256)


def test_preact_tap_is_the_block_output_before_relu():
  model = _build("resnet8x4")
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = _random_variables(model, images)
  _, state = jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True))(
      variables, images)
  block = state["intermediates"]["layer3_0"]
  preact, output = block["preact"]["__call__"][0], block["__call__"][0]
  np.testing.assert_allclose(output, jax.nn.relu(preact))
  assert np.any(preact < 0)


@pytest.mark.parametrize("config", [{"name": "cifar_resnet", "depth": 8}, {"name": "cnn", "channels": (8,)}],
                         ids=["cifar_resnet", "cnn"])
def test_bfloat16_compute_keeps_float32_parameters_and_logits(config):
  images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
  f32 = models.build_model(models.model_config(**config), 10)
  bf16 = models.build_model(models.model_config(**config, dtype="bfloat16"), 10)
  # Compiled, as kd.train initialises: op by op, initialisation dispatches a kernel per random draw.
  variables = jit(functools.partial(models.init_variables, f32))(jax.random.key(1), images)
  # The same parameters, in float32, whatever the compute dtype.
  bf16_variables = jit(functools.partial(models.init_variables, bf16))(jax.random.key(1), images)
  jax.tree.map(np.testing.assert_array_equal, bf16_variables, variables)
  assert {leaf.dtype for leaf in jax.tree.leaves(bf16_variables)} == {jnp.dtype(jnp.float32)}
  logits = jit(functools.partial(f32.apply, train=False))(variables, images)
  bf16_logits, state = jit(functools.partial(bf16.apply, train=True, mutable=["batch_stats"]))(
      variables, images)
  assert bf16_logits.dtype == jnp.float32
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}
  bf16_eval = jit(functools.partial(bf16.apply, train=False))(variables, images)
  # bfloat16 keeps 8 bits of mantissa: close to the float32 logits, but not equal.
  np.testing.assert_allclose(bf16_eval, logits, rtol=0.1, atol=0.05)
  assert not np.array_equal(bf16_eval, logits)
  grads = jit(jax.grad(lambda p: bf16.apply({**variables, "params": p}, images, train=False).sum()))(
      variables["params"])
  assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


def test_every_zoo_model_satisfies_the_ranges_it_declares():
  for name in models.ZOO:
    models.check_model_config(models.zoo_model_config(name), f"zoo.{name}")  # Raises if a range is violated.
