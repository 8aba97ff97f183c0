"""ViT and DeiT (kd.models.vit): timm's parameter counts, the distilled heads, tap points, dtypes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd import features
from kd import models
from kd.models import vit

# timm 1.0.31: sum(p.numel() for p in timm.create_model(name).parameters()) at 1000 classes.
TIMM_PARAMS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_patch16_224": 22_050_664,
    "deit_base_patch16_224": 86_567_656,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_distilled_patch16_224": 87_338_192,
}

# A ViT for 8x8 images (scikit-learn's digits): 16 patches of 2x2, for quick experiments on CPU.
DIGITS_VIT = {"name": "vit", "patch_size": 2, "hidden": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0}
TINY_DEIT = {"name": "vit", "patch_size": 4, "hidden": 16, "depth": 2, "heads": 2, "distilled": True}


def _variables(module, images, seed=0):
  """Random variables of the module's shapes, drawn by NumPy.

  `model.init` compiles a random-bits kernel (truncated normals) for every parameter, which on CPU
  costs seconds; these tests need weights of the right shapes and a sensible scale, not timm's.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "scale":
      return np.ones(leaf.shape, np.float32)
    if name == "bias":
      return np.zeros(leaf.shape, np.float32)
    fan_in = 1 if name in ("cls_token", "dist_token", "pos_embed") else np.prod(leaf.shape[:-1])
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in) * (0.1 if fan_in == 1 else 1.0)).astype(np.float32)

  shapes = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x), images)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def _tiny_deit(**overrides):
  module = models.build_model(models.model_config(**{**TINY_DEIT, **overrides}), 5)
  images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  return module, _variables(module, images), images


def test_every_zoo_model_has_timms_count():
  assert set(vit.ZOO) == set(TIMM_PARAMS)
  assert set(vit.ZOO) <= set(models.ZOO)


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_parameter_count_equals_timms(name):
  module = models.build_model(models.zoo_model_config(name), 1000)
  shapes = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert set(shapes) == {"params"}  # No BatchNorm statistics.
  assert models.count_params(shapes["params"]) == TIMM_PARAMS[name]


def test_distilled_eval_logits_are_the_mean_of_the_heads_and_train_logits_the_class_head():
  module, variables, images = _tiny_deit()
  apply = models.make_apply(module, "image", feature_paths=("head", "head_dist"))
  eval_out, train_out = jax.jit(lambda v, b: (apply(v, b, train=False), apply(v, b, train=True)))(
      variables, {"image": images})
  head, head_dist = eval_out["features"]["head"], eval_out["features"]["head_dist"]
  assert not np.allclose(head, head_dist)
  np.testing.assert_allclose(eval_out["logits"], (head + head_dist) / 2, rtol=1e-6, atol=1e-6)
  # Training returns the class head; the distillation head is a feature a DeiT loss reads.
  np.testing.assert_allclose(train_out["logits"], head, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(train_out["features"]["head_dist"], head_dist, rtol=1e-6, atol=1e-6)
  assert "state" not in train_out  # Nothing mutable: LayerNorm keeps no statistics.


def test_tap_points_are_named_and_tokens_are_batch_tokens_width():
  module, _, _ = _tiny_deit()
  taps = features.tap_points(module, jnp.zeros((2, 16, 16, 3)))
  patches = (16 // 4) ** 2
  assert taps["patch_embed"] == (2, patches, 16)
  # Class and distillation tokens, then the patches.
  assert taps["blocks_0"] == taps["blocks_1"] == taps["norm"] == (2, 2 + patches, 16)
  assert taps["blocks_0/attn"] == taps["blocks_0/mlp"] == (2, 2 + patches, 16)
  assert taps["head"] == taps["head_dist"] == (2, 5)
  assert "blocks_2" not in taps
  undistilled = models.build_model(models.model_config(**{**TINY_DEIT, "distilled": False}), 5)
  undistilled_taps = features.tap_points(undistilled, jnp.zeros((2, 16, 16, 3)))
  assert undistilled_taps["blocks_0"] == (2, 1 + patches, 16)
  assert "head_dist" not in undistilled_taps


def test_stochastic_depth_drops_whole_branches_only_when_training():
  plain, variables, images = _tiny_deit()
  module = models.build_model(models.model_config(**{**TINY_DEIT, "drop_path_rate": 0.5}), 5)

  @jax.jit
  def forward(variables, images):
    train = functools.partial(module.apply, variables, images, train=True)
    return (module.apply(variables, images, train=False), plain.apply(variables, images, train=False),
            train(rngs={"dropout": jax.random.key(2)}), train(rngs={"dropout": jax.random.key(3)}),
            train(rngs={"dropout": jax.random.key(2)}))

  eval_logits, plain_logits, first, second, first_again = forward(variables, images)
  np.testing.assert_array_equal(eval_logits, plain_logits)
  assert not np.allclose(first, second)
  np.testing.assert_array_equal(first, first_again)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  f32, variables, images = _tiny_deit()
  bf16 = models.build_model(models.model_config(**TINY_DEIT, dtype="bfloat16"), 5)
  bf16_shapes = jax.eval_shape(lambda x: models.init_variables(bf16, jax.random.key(0), x), images)
  assert {leaf.dtype for leaf in jax.tree.leaves(bf16_shapes)} == {jnp.dtype(jnp.float32)}
  logits, bf16_logits = jax.jit(lambda v, x: (f32.apply(v, x, train=False), bf16.apply(v, x, train=False)))(
      variables, images)
  assert bf16_logits.dtype == jnp.float32
  np.testing.assert_allclose(bf16_logits, logits, rtol=0.1, atol=0.05)
  assert not np.array_equal(bf16_logits, logits)


def test_images_that_are_not_whole_patches_are_refused():
  module, _, _ = _tiny_deit()
  with pytest.raises(ValueError, match="whole number of 4x4 patches"):
    jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), jnp.zeros((1, 18, 16, 3)))


def test_a_small_vit_learns_8x8_digits():
  datasets = pytest.importorskip("sklearn.datasets")
  digits = datasets.load_digits()
  images = (digits.images[..., None] / 16.0).astype(np.float32)  # [1797, 8, 8, 1] in [0, 1]
  labels = digits.target.astype(np.int32)
  train_images, train_labels = images[:1500], labels[:1500]
  test_images, test_labels = images[1500:], labels[1500:]
  module = models.build_model(models.model_config(**DIGITS_VIT), 10)
  params = _variables(module, train_images[:2])["params"]
  optimizer = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, batch_images, batch_labels):
    def loss_fn(params):
      logits = module.apply({"params": params}, batch_images, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  rng = np.random.default_rng(0)
  for _ in range(60):  # About 80% test accuracy after 60 steps; a second or two once compiled.
    batch = rng.choice(len(train_images), 128, replace=False)
    params, opt_state, _ = step(params, opt_state, train_images[batch], train_labels[batch])
  predictions = jax.jit(lambda p, x: module.apply({"params": p}, x, train=False).argmax(-1))(
      params, test_images)
  accuracy = float(np.mean(np.asarray(predictions) == test_labels))
  assert accuracy > 0.6, accuracy  # Chance is 0.1.
