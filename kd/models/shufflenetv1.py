"""ShuffleNet (v1) for 32x32 images: ShuffleV1 of the CRD benchmark.

Zhang, Zhou, Lin and Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
Devices", CVPR 2018 (https://arxiv.org/abs/1707.01083): bottlenecks of grouped 1x1 convolutions with
a channel shuffle between them around a 3x3 depthwise convolution; a block that halves the resolution
concatenates an average-pooled shortcut instead of adding it.

The definitions follow the reference implementation of the CRD benchmark (Tian, Krishnan and Isola,
"Contrastive Representation Distillation", ICLR 2020, https://arxiv.org/abs/1910.10699): a 1x1 stem of
24 channels at full resolution (no max-pool), three stages of 240, 480 and 960 channels with 4, 8 and
4 blocks in 3 groups, and PyTorch's default initialisation. Parameter counts equal the reference's.

Tap points for feature distillation (module outputs, as `capture_intermediates` records them):
  stem          1x1 conv, BatchNorm and ReLU: the reference's f0.
  layer{s}_{i}  block i of stage s (1-based stages, 0-based blocks) after its final ReLU; the last
                block of each stage gives the stage output (the reference's f1, f2, f3).
  layer{s}_{i}/preact
                the same block's sum or concatenation before that ReLU (the reference's `preact`).
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


def channel_shuffle(x_BxHxWxC: jax.Array, groups: int) -> jax.Array:
  """Interleaves the channels of `groups` groups so that the next grouped conv mixes them.

  Channel g * (C / groups) + j moves to j * groups + g, as in the reference's NCHW shuffle.
  """
  batch, height, width, channels = x_BxHxWxC.shape
  x = x_BxHxWxC.reshape(batch, height, width, groups, channels // groups)
  return x.swapaxes(3, 4).reshape(batch, height, width, channels)


class ShuffleV1Block(nn.Module):
  """Grouped 1x1 conv, channel shuffle, 3x3 depthwise conv, grouped 1x1 conv, plus the shortcut.

  Attributes:
    features: output channels of the last convolution; a stride-2 block concatenates its input to
      them, so its output has `features + input channels`.
    strides: 1 (identity shortcut, added) or 2 (3x3 average-pooled shortcut, concatenated).
    groups: groups of the 1x1 convolutions.
    group_first_conv: whether the first 1x1 convolution is grouped; the paper leaves it ungrouped
      in the network's first block, whose input (the stem's 24 channels) is too narrow to split.
  """

  features: int
  strides: int
  groups: int
  group_first_conv: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train)
    first_groups = self.groups if self.group_first_conv else 1
    middle = self.features // 4
    out = nn.Conv(middle, (1, 1), feature_group_count=first_groups, use_bias=False,
                  kernel_init=torch_default_kernel, name="conv1")(x)
    out = nn.relu(norm(name="bn1")(out))
    out = channel_shuffle(out, first_groups)
    out = nn.Conv(middle, (3, 3), strides=self.strides, padding=1, feature_group_count=middle,
                  use_bias=False, kernel_init=torch_default_kernel, name="conv2")(out)
    out = nn.relu(norm(name="bn2")(out))
    out = nn.Conv(self.features, (1, 1), feature_group_count=self.groups, use_bias=False,
                  kernel_init=torch_default_kernel, name="conv3")(out)
    out = norm(name="bn3")(out)
    if self.strides == 2:
      # PyTorch's AvgPool2d counts the zero padding in the mean, as count_include_pad does here.
      shortcut = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                             count_include_pad=True)
      preact = jnp.concatenate([out, shortcut], axis=-1)
    else:
      preact = out + x
    return nn.relu(Tap(name="preact")(preact))


class ShuffleNetV1(nn.Module):
  """ShuffleNet for 32x32 images; every stage starts with a stride-2 block.

  Attributes:
    num_classes: size of the output.
    stage_widths: output channels of the three stages.
    blocks_per_stage: blocks in each stage.
    groups: groups of the 1x1 convolutions.
  """

  num_classes: int
  stage_widths: Sequence[int] = (240, 480, 960)
  blocks_per_stage: Sequence[int] = (4, 8, 4)
  groups: int = 3

  ATTRIBUTE_RANGES: ClassVar[dict] = {"stage_widths": attributes.POSITIVE_INT,
                      "blocks_per_stage": attributes.POSITIVE_INT, "groups": attributes.POSITIVE_INT,
                      "rules": (attributes.Rule(lambda a: all(w % a.get("groups", 3) == 0 for w in a.get("stage_widths", ())),
                                                "every stage width must divide into groups"),)}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    x = ConvBNReLU(24, kernel_size=1, kernel_init=torch_default_kernel, name="stem")(
        images_BxHxWxC, train)
    for stage, (width, blocks) in enumerate(zip(self.stage_widths, self.blocks_per_stage), start=1):
      for index in range(blocks):
        # The first block concatenates its input, so its convolutions make only the difference.
        features = width - x.shape[-1] if index == 0 else width
        x = ShuffleV1Block(features, strides=2 if index == 0 else 1, groups=self.groups,
                           group_first_conv=not (stage == 1 and index == 0),
                           name=f"layer{stage}_{index}")(x, train)
    x = GlobalAvgPool(name="pool")(x)
    return nn.Dense(self.num_classes, kernel_init=torch_default_kernel, name="head")(x)


# Zoo name -> (class, attributes), the CRD benchmark's name.
ZOO = {
    "ShuffleV1": (ShuffleNetV1, {"stage_widths": (240, 480, 960), "blocks_per_stage": (4, 8, 4),
                                 "groups": 3}),
}
