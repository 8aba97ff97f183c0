"""ResNets for 32x32 images: resnet8 to resnet110, resnet8x4 and resnet32x4.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(https://arxiv.org/abs/1512.03385), Section 4.2: a 3x3 stem and three stages of basic blocks at 32x32,
16x16 and 8x8, with 6n + 2 layers in all.

The definitions follow the reference implementation of the CRD benchmark (Tian, Krishnan and Isola,
"Contrastive Representation Distillation", ICLR 2020, https://arxiv.org/abs/1910.10699), whose
teachers and students are these networks: convolutions have no bias, a shortcut is a 1x1 convolution
and BatchNorm wherever a block changes resolution or width, and `resnet8x4`/`resnet32x4` widen the
stages to (64, 128, 256) after a 32-channel stem. Parameter counts equal the reference's.

Tap points for feature distillation (module outputs, as `capture_intermediates` records them):
  stem          conv, BatchNorm and ReLU: the reference's f0.
  layer{s}_{i}  block i of stage s (1-based stages, 0-based blocks), after its final ReLU. The last
                block of each stage gives the stage output (the reference's f1, f2, f3).
  layer{s}_{i}/preact
                the same block's residual sum before that ReLU (the reference's `preact` features).
  pool          the global-average-pooled feature, the embedding CRD contrasts (the reference's f4).
  head          the logits.

This file also holds what the other models of the zoo share: the modules that make tap points
(`GlobalAvgPool`, `Tap`, `ConvBNReLU`), BatchNorm with PyTorch's defaults, and the initialisers.
"""

import functools
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.models import attributes

# The reference initialises convolutions with N(0, 2 / (k * k * out_channels)): He et al. 2015 with
# the fan-out, which keeps the variance of the gradients, not of the activations, constant.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's default kernels for layers the reference leaves alone: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
# (PyTorch draws those layers' biases from the same range; Flax starts them at zero.)
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def batch_norm(train: bool, dtype: str = "float32") -> Callable[..., nn.BatchNorm]:
  """BatchNorm with PyTorch's defaults (its momentum 0.1 is Flax's 0.9); call it with a name.

  `dtype` is the computation's (Flax keeps the statistics' reductions in float32).
  """
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           dtype=dtype)


class GlobalAvgPool(nn.Module):
  """The mean over height and width: [B, H, W, C] -> [B, C].

  A module rather than an inline mean so that the pooled feature is a named module output.
  """

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    return jnp.mean(x_BxHxWxC, axis=(1, 2))


class Tap(nn.Module):
  """Returns its input unchanged.

  It makes a value that no layer outputs, such as a residual sum before its ReLU, a module output
  that `capture_intermediates` records, without changing the computation.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x


class ConvBNReLU(nn.Module):
  """Convolution without bias, BatchNorm and ReLU, as one module so that its output is a tap point.

  Attributes:
    features: output channels.
    kernel_size: the convolution's (square) kernel size; padding keeps the resolution at stride 1.
    strides: the convolution's stride.
    kernel_init: the convolution's initialiser.
    dtype: the computation's dtype; parameters stay float32.
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  kernel_init: Callable[..., jax.Array] = he_normal_fan_out
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), strides=self.strides,
                padding=self.kernel_size // 2, use_bias=False, kernel_init=self.kernel_init,
                dtype=self.dtype, name="conv")(x)
    x = batch_norm(train, self.dtype)(name="bn")(x)
    return nn.relu(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (He et al. 2016, Figure 2).

  Attributes:
    features: output channels.
    strides: stride of the first convolution and of the shortcut.
    dtype: the computation's dtype; parameters stay float32.
  """

  features: int
  strides: int = 1
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train, self.dtype)
    # Explicit padding of 1 as in PyTorch: Flax's "SAME" pads a stride-2 convolution asymmetrically.
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=he_normal_fan_out, dtype=self.dtype)
    out = conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv1")(x)
    out = nn.relu(norm(name="bn1")(out))
    out = conv(self.features, (3, 3), padding=1, name="conv2")(out)
    out = norm(name="bn2")(out)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, (1, 1), strides=self.strides, padding=0,
                      name="downsample_conv")(x)
      shortcut = norm(name="downsample_bn")(shortcut)
    preact = Tap(name="preact")(out + shortcut)
    return nn.relu(preact)


class CifarResNet(nn.Module):
  """A ResNet for 32x32 images with three stages of basic blocks.

  Attributes:
    num_classes: size of the output.
    depth: number of weighted layers, 6n + 2 for n blocks per stage (8, 14, 20, 32, 44, 56, 110).
    widths: channels of the stem and of the three stages; (16, 16, 32, 64) is He et al.'s
      network, (32, 64, 128, 256) the CRD benchmark's "x4" variants.
    dtype: the computation's dtype ("float32", or "bfloat16" for mixed precision); parameters
      stay float32 and the logits are returned in float32, so losses are computed in float32.
  """

  num_classes: int
  depth: int = 32
  widths: Sequence[int] = (16, 16, 32, 64)
  dtype: str = "float32"

  ATTRIBUTE_RANGES: ClassVar[dict] = {
      "depth": attributes.Range(8, integer=True), "widths": attributes.POSITIVE_INT,
      "rules": (attributes.Rule(lambda a: (a.get("depth", 32) - 2) % 6 == 0,
                                "depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110)"),
                attributes.Rule(lambda a: len(a.get("widths", (0,) * 4)) == 4,
                                "widths must be 4 numbers: the stem and three stages"))}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    if (self.depth - 2) % 6 != 0:
      raise ValueError(f"CifarResNet depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110), got {self.depth}")
    if len(self.widths) != 4:
      raise ValueError(f"CifarResNet widths must be 4 numbers (stem and three stages), got {self.widths}")
    blocks_per_stage = (self.depth - 2) // 6
    x = ConvBNReLU(self.widths[0], dtype=self.dtype, name="stem")(images_BxHxWxC, train)
    for stage, features in enumerate(self.widths[1:], start=1):
      for index in range(blocks_per_stage):
        strides = 2 if stage > 1 and index == 0 else 1
        x = BasicBlock(features, strides, self.dtype, name=f"layer{stage}_{index}")(x, train)
    x = GlobalAvgPool(name="pool")(x)
    logits = nn.Dense(self.num_classes, kernel_init=torch_default_kernel, dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

# Zoo name -> (class, attributes), the CRD benchmark's names.
ZOO = {
    "resnet8": (CifarResNet, {"depth": 8, "widths": _NARROW}),
    "resnet14": (CifarResNet, {"depth": 14, "widths": _NARROW}),
    "resnet20": (CifarResNet, {"depth": 20, "widths": _NARROW}),
    "resnet32": (CifarResNet, {"depth": 32, "widths": _NARROW}),
    "resnet44": (CifarResNet, {"depth": 44, "widths": _NARROW}),
    "resnet56": (CifarResNet, {"depth": 56, "widths": _NARROW}),
    "resnet110": (CifarResNet, {"depth": 110, "widths": _NARROW}),
    "resnet8x4": (CifarResNet, {"depth": 8, "widths": _WIDE}),
    "resnet32x4": (CifarResNet, {"depth": 32, "widths": _WIDE}),
}
