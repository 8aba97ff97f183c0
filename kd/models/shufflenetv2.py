"""ShuffleNetV2 for 32x32 images: ShuffleV2 of the CRD benchmark.

Ma, Zhang, Zheng and Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
ECCV 2018 (https://arxiv.org/abs/1807.11164): a block splits its channels in half, transforms one half
with 1x1, 3x3 depthwise and 1x1 convolutions, concatenates the other half unchanged and shuffles; a
downsampling block transforms two copies of its input instead and doubles the width.

The definitions follow the reference implementation of the CRD benchmark (Tian, Krishnan and Isola,
"Contrastive Representation Distillation", ICLR 2020, https://arxiv.org/abs/1910.10699), the 1x
network: a 1x1 stem of 24 channels at full resolution (no max-pool), stages of 116, 232 and 464
channels, each a downsampling block and then 3, 7 and 3 blocks, a 1x1 convolution to 1024 channels,
and PyTorch's default initialisation. Parameter counts equal the reference's.

Tap points for feature distillation (module outputs, as `capture_intermediates` records them):
  stem          1x1 conv, BatchNorm and ReLU: the reference's f0.
  layer{s}_{i}  block i of stage s (1-based stages; block 0 is the downsampling block) after its
                shuffle; the last block of each stage gives the stage output (the reference's f1,
                f2, f3).
  layer{s}_{i}/preact
                a (non-downsampling) block's concatenation before the ReLU of its transformed half,
                and before the shuffle, as the reference's `preact` features are.
  last_conv     the 1x1 conv to 1024 channels, BatchNorm and ReLU.
  pool          the global-average-pooled feature (the reference's f4).
  head          the logits.
"""

from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.models import attributes
from kd.models.cifar_resnet import batch_norm
from kd.models.cifar_resnet import ConvBNReLU
from kd.models.cifar_resnet import GlobalAvgPool
from kd.models.cifar_resnet import Tap
from kd.models.cifar_resnet import torch_default_kernel
from kd.models.shufflenetv1 import channel_shuffle


def _conv(features: int, kernel_size: int = 1, strides: int = 1, groups: int = 1, **kwargs) -> nn.Conv:
  return nn.Conv(features, (kernel_size, kernel_size), strides=strides, padding=kernel_size // 2,
                 feature_group_count=groups, use_bias=False, kernel_init=torch_default_kernel,
                 **kwargs)


class ShuffleV2Block(nn.Module):
  """Splits the channels, transforms the second half, concatenates and shuffles; keeps the width."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train)
    half = x.shape[-1] // 2
    kept, transformed = x[..., :half], x[..., half:]
    out = nn.relu(norm(name="bn1")(_conv(half, name="conv1")(transformed)))
    out = norm(name="bn2")(_conv(half, 3, groups=half, name="conv2")(out))
    out = norm(name="bn3")(_conv(half, name="conv3")(out))
    # Recorded for feature methods only: the block's output uses the activated half.
    Tap(name="preact")(jnp.concatenate([kept, out], axis=-1))
    return channel_shuffle(jnp.concatenate([kept, nn.relu(out)], axis=-1), 2)


class ShuffleV2DownBlock(nn.Module):
  """Two stride-2 branches over the whole input, concatenated and shuffled.

  Attributes:
    features: output channels, half from each branch.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train)
    half = self.features // 2
    channels = x.shape[-1]
    left = norm(name="bn1")(_conv(channels, 3, strides=2, groups=channels, name="conv1")(x))
    left = nn.relu(norm(name="bn2")(_conv(half, name="conv2")(left)))
    right = nn.relu(norm(name="bn3")(_conv(half, name="conv3")(x)))
    right = norm(name="bn4")(_conv(half, 3, strides=2, groups=half, name="conv4")(right))
    right = nn.relu(norm(name="bn5")(_conv(half, name="conv5")(right)))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """ShuffleNetV2 for 32x32 images.

  Attributes:
    num_classes: size of the output.
    stage_widths: output channels of the three stages.
    blocks_per_stage: width-preserving blocks in each stage, after its downsampling block.
    last_width: output channels of the final 1x1 convolution.
  """

  num_classes: int
  stage_widths: Sequence[int] = (116, 232, 464)
  blocks_per_stage: Sequence[int] = (3, 7, 3)
  last_width: int = 1024

  ATTRIBUTE_RANGES: ClassVar[dict] = {"stage_widths": attributes.POSITIVE_INT,
                      "blocks_per_stage": attributes.POSITIVE_INT, "last_width": attributes.POSITIVE_INT}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    x = ConvBNReLU(24, kernel_size=1, kernel_init=torch_default_kernel, name="stem")(
        images_BxHxWxC, train)
    for stage, (width, blocks) in enumerate(zip(self.stage_widths, self.blocks_per_stage), start=1):
      x = ShuffleV2DownBlock(width, name=f"layer{stage}_0")(x, train)
      for index in range(1, blocks + 1):
        x = ShuffleV2Block(name=f"layer{stage}_{index}")(x, train)
    x = ConvBNReLU(self.last_width, kernel_size=1, kernel_init=torch_default_kernel,
                   name="last_conv")(x, train)
    x = GlobalAvgPool(name="pool")(x)
    return nn.Dense(self.num_classes, kernel_init=torch_default_kernel, name="head")(x)


# Zoo name -> (class, attributes), the CRD benchmark's name.
ZOO = {
    "ShuffleV2": (ShuffleNetV2, {"stage_widths": (116, 232, 464), "blocks_per_stage": (3, 7, 3),
                                 "last_width": 1024}),
}
