"""Vision Transformers (ViT) and data-efficient image transformers (DeiT), in timm's layout.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
ICLR 2021 (https://arxiv.org/abs/2010.11929): the image is cut into patch x patch squares, each
projected to a token (a strided convolution); a learned class token is prepended, learned position
embeddings added, and pre-norm transformer blocks (`x + attn(LN(x))`, then `x + mlp(LN(x))`) run
over the tokens; the final LayerNorm's class token feeds the classifier.

Touvron et al., "Training data-efficient image transformers & distillation through attention",
ICML 2021 (https://arxiv.org/abs/2012.12877), Section 5: the distilled DeiT adds a second learned
token, the distillation token, after the class token, and a second classifier `head_dist` on it,
trained to predict the teacher's labels. At test time the two heads' logits are averaged.

The layers follow timm (`timm/models/vision_transformer.py` `VisionTransformer` with its defaults:
`global_pool='token'`, `qkv_bias=True`, LayerNorm with eps 1e-6, exact (erf) GELU; and
`timm/models/deit.py` `VisionTransformerDistilled`), so that `kd.convert.timm` loads its weights
array for array. Parameter counts equal timm's (5,717,416 for vit_tiny_patch16_224, 5,910,800 for
deit_tiny_distilled_patch16_224, ...; see tests/test_vit.py).

Outputs. With `distilled=False` the logits are `head(norm(tokens)[:, 0])`. With `distilled=True`:
  train=False  (head(class token) + head_dist(distillation token)) / 2, as timm's eval forward.
  train=True   head(class token) only; `head_dist`'s logits are the tap point `head_dist`, which a
               DeiT distillation loss reads as a feature (timm's `distilled_training` mode returns the
               two as a tuple instead; kd's models return one array of logits).

Tap points for feature distillation (module outputs, as `capture_intermediates` records them):
  patch_embed   the patch tokens [B, (H/p)(W/p), hidden], before the class token and positions.
  blocks_{i}    block i's output tokens [B, N, hidden], N = 1 (+1 distilled) + patches; 0-based.
  blocks_{i}/attn, blocks_{i}/mlp
                the block's attention and MLP branches (before their residual sums).
  norm          the final LayerNorm's tokens [B, N, hidden]; `norm[:, 0]` is the pre-logits feature.
  head          the class head's logits [B, num_classes].
  head_dist     the distillation head's logits [B, num_classes] (distilled models only).

Dropout is not implemented (timm's ViT and DeiT default every dropout rate to 0); stochastic depth
(Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016, https://arxiv.org/abs/1603.09382),
which DeiT trains with at rate 0.1, is `drop_path_rate`, linearly increasing over the blocks as in
timm, and needs a "dropout" rng when training.
"""

from typing import ClassVar

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.models import attributes
from kd.models.cifar_resnet import torch_default_kernel

# timm's `init_weights_vit_timm`: truncated normal (std 0.02) Linear weights and zero biases.
vit_dense_kernel = nn.initializers.truncated_normal(stddev=0.02)

# timm's LayerNorm (timm.layers.LayerNorm) defaults eps to 1e-6, not torch's 1e-5.
LAYER_NORM_EPSILON = 1e-6


def layer_norm(dtype: str) -> functools.partial:
  return functools.partial(nn.LayerNorm, epsilon=LAYER_NORM_EPSILON, dtype=dtype)


class PatchEmbed(nn.Module):
  """Non-overlapping patches projected to tokens: [B, H, W, C] -> [B, (H/p)(W/p), hidden].

  The token order is row-major over the patch grid, as torch's `flatten(2).transpose(1, 2)`.
  """

  patch_size: int
  hidden: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    height, width = images_BxHxWxC.shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"VisionTransformer: the image ({height}x{width}) must be a whole number of "
                       f"{self.patch_size}x{self.patch_size} patches")
    patches = nn.Conv(self.hidden, (self.patch_size, self.patch_size), strides=self.patch_size,
                      padding="VALID", kernel_init=torch_default_kernel, dtype=self.dtype,
                      name="proj")(images_BxHxWxC)
    batch, rows, columns, channels = patches.shape
    return patches.reshape(batch, rows * columns, channels)


class Attention(nn.Module):
  """Multi-head self-attention with a fused query-key-value projection (timm's `Attention`).

  `qkv` outputs [q | k | v], each split into heads, in torch's layout (`reshape(B, N, 3, heads,
  head_dim)`), so timm's `attn.qkv.weight` is its kernel transposed.
  """

  heads: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BxNxC: jax.Array) -> jax.Array:
    batch, tokens, width = x_BxNxC.shape
    if width % self.heads:
      raise ValueError(f"VisionTransformer: hidden={width} is not a multiple of heads={self.heads}")
    head_dim = width // self.heads
    qkv = nn.Dense(3 * width, kernel_init=vit_dense_kernel, dtype=self.dtype, name="qkv")(x_BxNxC)
    qkv_Bx3xNxHxK = qkv.reshape(batch, tokens, 3, self.heads, head_dim).transpose(0, 2, 1, 3, 4)
    q_BxNxHxK, k_BxNxHxK, v_BxNxHxK = qkv_Bx3xNxHxK[:, 0], qkv_Bx3xNxHxK[:, 1], qkv_Bx3xNxHxK[:, 2]
    scores_BxHxNxN = jnp.einsum("bqhk,bthk->bhqt", q_BxNxHxK * (head_dim ** -0.5), k_BxNxHxK)
    # Softmax in float32 whatever the compute dtype: bfloat16 exponentials lose the small weights.
    weights_BxHxNxN = jax.nn.softmax(scores_BxHxNxN.astype(jnp.float32), axis=-1).astype(self.dtype)
    attended_BxNxHxK = jnp.einsum("bhqt,bthk->bqhk", weights_BxHxNxN, v_BxNxHxK)
    return nn.Dense(width, kernel_init=vit_dense_kernel, dtype=self.dtype, name="proj")(
        attended_BxNxHxK.reshape(batch, tokens, width))


class Mlp(nn.Module):
  """Dense, exact GELU (torch's `nn.GELU()` default, the erf form), Dense (timm's `Mlp`)."""

  hidden_dim: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BxNxC: jax.Array) -> jax.Array:
    x = nn.Dense(self.hidden_dim, kernel_init=vit_dense_kernel, dtype=self.dtype, name="fc1")(x_BxNxC)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(x_BxNxC.shape[-1], kernel_init=vit_dense_kernel, dtype=self.dtype, name="fc2")(x)


def drop_path(branch_BxNxC: jax.Array, rate: float, train: bool, rng_module: nn.Module) -> jax.Array:
  """Stochastic depth: drops a residual branch for whole examples, scaling the kept ones by 1/(1-rate).

  Huang et al. 2016, as timm's `DropPath`; the identity when not training or at rate 0.
  """
  if not train or rate == 0.0:
    return branch_BxNxC
  keep = 1.0 - rate
  mask_B = jax.random.bernoulli(rng_module.make_rng("dropout"), keep, (branch_BxNxC.shape[0],))
  return branch_BxNxC * (mask_B.astype(branch_BxNxC.dtype) / keep)[:, None, None]


class Block(nn.Module):
  """A pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  heads: int
  mlp_dim: int
  drop_path_rate: float = 0.0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BxNxC: jax.Array, train: bool) -> jax.Array:
    norm = layer_norm(self.dtype)
    attended = Attention(self.heads, self.dtype, name="attn")(norm(name="norm1")(x_BxNxC))
    x = x_BxNxC + drop_path(attended, self.drop_path_rate, train, self)
    transformed = Mlp(self.mlp_dim, self.dtype, name="mlp")(norm(name="norm2")(x))
    return x + drop_path(transformed, self.drop_path_rate, train, self)


class VisionTransformer(nn.Module):
  """ViT (Dosovitskiy et al. 2021), or DeiT with a distillation token (Touvron et al. 2021).

  Attributes:
    num_classes: size of the output (of each head).
    patch_size: side of the square patches (16 for the */16 models); the image sides must be
      multiples of it. The position embeddings are sized at init for the image size seen then.
    hidden: the token width (timm's `embed_dim`): 192 tiny, 384 small, 768 base.
    depth: number of transformer blocks.
    heads: attention heads per block (hidden must be a multiple).
    mlp_ratio: the MLP's hidden width over `hidden` (timm truncates the product to an int).
    distilled: add DeiT's distillation token and `head_dist` classifier (see the module docstring
      for what each mode returns).
    drop_path_rate: stochastic depth of the last block, rising linearly from 0 at the first.
    dtype: the computation's dtype ("float32", or "bfloat16" for mixed precision); parameters stay
      float32, attention softmaxes and the returned logits are float32.
  """

  num_classes: int
  patch_size: int = 16
  hidden: int = 192
  depth: int = 12
  heads: int = 3
  mlp_ratio: float = 4.0
  distilled: bool = False
  drop_path_rate: float = 0.0
  dtype: str = "float32"

  ATTRIBUTE_RANGES: ClassVar[dict] = {
      "patch_size": attributes.POSITIVE_INT, "hidden": attributes.POSITIVE_INT, "depth": attributes.POSITIVE_INT,
      "heads": attributes.POSITIVE_INT, "mlp_ratio": attributes.Range(0, low_open=True),
      "drop_path_rate": attributes.PROBABILITY,
      "rules": (attributes.Rule(lambda a: a.get("hidden", 192) % a.get("heads", 3) == 0,
                                "hidden must divide into heads"),)}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    patches_BxPxC = PatchEmbed(self.patch_size, self.hidden, self.dtype, name="patch_embed")(
        images_BxHxWxC)
    batch, num_patches, _ = patches_BxPxC.shape
    # timm: class token N(0, 1e-6), distillation token and positions truncated N(0, 0.02).
    prefix = [self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.hidden))]
    if self.distilled:
      prefix.append(self.param("dist_token", vit_dense_kernel, (1, 1, self.hidden)))
    num_tokens = len(prefix) + num_patches
    pos_embed = self.param("pos_embed", vit_dense_kernel, (1, num_tokens, self.hidden))
    prefix_BxTxC = [jnp.broadcast_to(token, (batch, 1, self.hidden)).astype(self.dtype) for token in prefix]
    # timm's original ViT and DeiT: concatenate the prefix tokens, then add positions to all tokens.
    x = jnp.concatenate(prefix_BxTxC + [patches_BxPxC], axis=1) + pos_embed.astype(self.dtype)
    mlp_dim = int(self.hidden * self.mlp_ratio)
    for index in range(self.depth):
      rate = self.drop_path_rate * index / (self.depth - 1) if self.depth > 1 else 0.0
      x = Block(self.heads, mlp_dim, rate, self.dtype, name=f"blocks_{index}")(x, train)
    x = layer_norm(self.dtype)(name="norm")(x)
    dense = functools.partial(nn.Dense, self.num_classes, kernel_init=vit_dense_kernel, dtype=self.dtype)
    logits = dense(name="head")(x[:, 0])
    if self.distilled:
      distillation_logits = dense(name="head_dist")(x[:, 1])
      if not train:
        logits = (logits + distillation_logits) / 2
    return logits.astype(jnp.float32)


def _zoo_entry(hidden: int, heads: int, distilled: bool = False):
  return (VisionTransformer, {"patch_size": 16, "hidden": hidden, "depth": 12, "heads": heads,
                              "distilled": distilled})


# Zoo name -> (class, attributes), timm's model names. vit_* and deit_* (undistilled) are the same
# network; their published weights differ in training data and input normalisation ("inception" for
# vit_*, "imagenet" for deit_*: see kd.convert.timm).
ZOO = {
    "vit_tiny_patch16_224": _zoo_entry(192, 3),
    "vit_small_patch16_224": _zoo_entry(384, 6),
    "vit_base_patch16_224": _zoo_entry(768, 12),
    "deit_tiny_patch16_224": _zoo_entry(192, 3),
    "deit_small_patch16_224": _zoo_entry(384, 6),
    "deit_base_patch16_224": _zoo_entry(768, 12),
    "deit_tiny_distilled_patch16_224": _zoo_entry(192, 3, distilled=True),
    "deit_small_distilled_patch16_224": _zoo_entry(384, 6, distilled=True),
    "deit_base_distilled_patch16_224": _zoo_entry(768, 12, distilled=True),
}
