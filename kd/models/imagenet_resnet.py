"""ResNet-18, -34 and -50 for 224x224 images, in torchvision's (and timm's) layout.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(https://arxiv.org/abs/1512.03385), Table 1: a 7x7 stride-2 stem and a 3x3 stride-2 max-pool, then
four stages of 64, 128, 256 and 512 channels, each but the first halving the resolution. ResNet-18
and -34 stack basic blocks (two 3x3 convolutions); ResNet-50 stacks bottleneck blocks (1x1 down to
the stage width, 3x3, 1x1 up to 4x the width, Section 4.1 "Deeper Bottleneck Architectures") and so
outputs 256, 512, 1024 and 2048 channels. The ImageNet experiments of the CRD benchmark (Tian,
Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020,
https://arxiv.org/abs/1910.10699) distil ResNet-34 into ResNet-18 with torchvision's definitions,
which these follow: no convolution biases, 1x1 convolution and BatchNorm shortcuts where a block
changes resolution or width, and the bottleneck's stride on its 3x3 convolution ("ResNet v1.5", as
torchvision's and timm's `resnet50`; the paper's v1 strides the first 1x1). 11,689,512, 21,797,672
and 25,557,032 parameters at 1000 classes.

Tap points for feature distillation (module outputs, as `capture_intermediates` records them):
  stem          the 7x7 conv, BatchNorm and ReLU (before the max-pool), at 112x112.
  layer{s}_{i}  block i of stage s (1-based stages, 0-based blocks) after its final ReLU; the last
                block of each stage gives the stage output at 56, 28, 14 and 7 pixels (of the
                stage width for basic blocks, 4x it for bottlenecks).
  layer{s}_{i}/preact
                the same block's residual sum before that ReLU.
  pool          the global-average-pooled feature (512-d for ResNet-18/34, 2048-d for ResNet-50).
  head          the logits.
"""

import functools
from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.models import attributes
from kd.models.cifar_resnet import BasicBlock
from kd.models.cifar_resnet import ConvBNReLU
from kd.models.cifar_resnet import GlobalAvgPool
from kd.models.cifar_resnet import Tap
from kd.models.cifar_resnet import batch_norm
from kd.models.cifar_resnet import he_normal_fan_out
from kd.models.cifar_resnet import torch_default_kernel

BLOCKS = ("basic", "bottleneck")


class Bottleneck(nn.Module):
  """1x1, 3x3 (strided) and 1x1 convolutions with a residual connection (He et al. 2016, Figure 5).

  torchvision's and timm's `Bottleneck`: the output has `expansion` times `features` channels.

  Attributes:
    features: the inner width (the stage width); the output has `expansion * features` channels.
    strides: stride of the 3x3 convolution and of the shortcut.
    expansion: output channels over `features` (4 in ResNet-50).
    dtype: the computation's dtype; parameters stay float32.
  """

  features: int
  strides: int = 1
  expansion: int = 4
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train, self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=he_normal_fan_out, dtype=self.dtype)
    out_features = self.expansion * self.features
    out = conv(self.features, (1, 1), padding=0, name="conv1")(x)
    out = nn.relu(norm(name="bn1")(out))
    # Explicit padding of 1 as in PyTorch: Flax's "SAME" pads a stride-2 convolution asymmetrically.
    out = conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv2")(out)
    out = nn.relu(norm(name="bn2")(out))
    out = conv(out_features, (1, 1), padding=0, name="conv3")(out)
    out = norm(name="bn3")(out)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = conv(out_features, (1, 1), strides=self.strides, padding=0, name="downsample_conv")(x)
      shortcut = norm(name="downsample_bn")(shortcut)
    preact = Tap(name="preact")(out + shortcut)
    return nn.relu(preact)


class ImageNetResNet(nn.Module):
  """A ResNet of basic or bottleneck blocks for ImageNet-sized inputs.

  Attributes:
    num_classes: size of the output.
    stage_sizes: blocks in each of the four stages: (2, 2, 2, 2) is ResNet-18, (3, 4, 6, 3)
      ResNet-34 (basic) or ResNet-50 (bottleneck).
    widths: channels of the four stages (a bottleneck stage outputs 4x its width); the stem has
      the first stage's width.
    block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50 and deeper).
    dtype: the computation's dtype ("float32", or "bfloat16" for mixed precision); parameters
      stay float32 and the logits are returned in float32.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  block: str = "basic"
  dtype: str = "float32"

  ATTRIBUTE_RANGES: ClassVar[dict] = {"stage_sizes": attributes.POSITIVE_INT,
                      "widths": attributes.POSITIVE_INT, "block": attributes.Choice(*BLOCKS)}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    if self.block not in BLOCKS:
      raise ValueError(f"ImageNetResNet block={self.block!r}: choose one of {BLOCKS}")
    x = ConvBNReLU(self.widths[0], kernel_size=7, strides=2, dtype=self.dtype, name="stem")(
        images_BxHxWxC, train)
    # Explicit padding of 1 as in PyTorch (max_pool pads with -inf, so padding never wins).
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (blocks, features) in enumerate(zip(self.stage_sizes, self.widths), start=1):
      for index in range(blocks):
        strides = 2 if stage > 1 and index == 0 else 1
        name = f"layer{stage}_{index}"
        if self.block == "bottleneck":
          x = Bottleneck(features, strides, dtype=self.dtype, name=name)(x, train)
        else:
          x = BasicBlock(features, strides, self.dtype, name=name)(x, train)
    x = GlobalAvgPool(name="pool")(x)
    logits = nn.Dense(self.num_classes, kernel_init=torch_default_kernel, dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32)


# Zoo name -> (class, attributes), torchvision's names.
ZOO = {
    "resnet18": (ImageNetResNet, {"stage_sizes": (2, 2, 2, 2)}),
    "resnet34": (ImageNetResNet, {"stage_sizes": (3, 4, 6, 3)}),
    "resnet50": (ImageNetResNet, {"stage_sizes": (3, 4, 6, 3), "block": "bottleneck"}),
}
