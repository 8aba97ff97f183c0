"""MobileNetV2 for 32x32 images: mobile_half, the "MobileNetV2" of the CRD benchmark.

Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018 (https://arxiv.org/abs/1801.04381): blocks that expand with a 1x1 convolution, filter with a
3x3 depthwise convolution and project back with a linear 1x1 convolution.

The definitions follow the reference implementation of the CRD benchmark (Tian, Krishnan and Isola,
"Contrastive Representation Distillation", ICLR 2020, https://arxiv.org/abs/1910.10699), which differs
from the paper's network in ways that change the parameter count: every block has the expanding
convolution, also the first one whose expansion is 1; the activation is ReLU rather than ReLU6;
the stem has stride 2 on 32x32 inputs; and the last 1x1 convolution keeps 1280 channels for width
multipliers up to 1. `mobile_half` is width multiplier 0.5 with expansion 6. Parameter counts equal
the reference's.

Tap points for feature distillation (module outputs, as `capture_intermediates` records them):
  stem           the stride-2 conv, BatchNorm and ReLU: the reference's f0.
  blocks{s}_{i}  inverted-residual block i of stage s (both 0-based, stages 0 to 6), linear: the
                 reference's f1 to f4 are the last blocks of stages 1, 2, 4 and 6 (blocks1_1,
                 blocks2_2, blocks4_2 and blocks6_0), which it also uses as `preact` features.
  last_conv      the final 1x1 conv, BatchNorm and ReLU.
  pool           the global-average-pooled feature (the reference's f5).
  head           the logits.
"""

from typing import ClassVar

import flax.linen as nn
import jax

from kd.models import attributes
from kd.models.cifar_resnet import batch_norm
from kd.models.cifar_resnet import ConvBNReLU
from kd.models.cifar_resnet import GlobalAvgPool
from kd.models.cifar_resnet import he_normal_fan_out

# (expansion or None for the model's, output channels, blocks, stride of the first block) of each
# stage at width multiplier 1.
STAGES = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


class InvertedResidual(nn.Module):
  """1x1 expansion, 3x3 depthwise and linear 1x1 projection, each with BatchNorm.

  Attributes:
    features: output channels.
    strides: stride of the depthwise convolution.
    expansion: width of the hidden layer as a multiple of the input width.
  """

  features: int
  strides: int
  expansion: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train)
    hidden = x.shape[-1] * self.expansion
    out = nn.Conv(hidden, (1, 1), use_bias=False, kernel_init=he_normal_fan_out,
                  name="expand_conv")(x)
    out = nn.relu(norm(name="expand_bn")(out))
    out = nn.Conv(hidden, (3, 3), strides=self.strides, padding=1, feature_group_count=hidden,
                  use_bias=False, kernel_init=he_normal_fan_out, name="depthwise_conv")(out)
    out = nn.relu(norm(name="depthwise_bn")(out))
    out = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=he_normal_fan_out,
                  name="project_conv")(out)
    out = norm(name="project_bn")(out)
    if self.strides == 1 and x.shape[-1] == self.features:
      return x + out
    return out


class MobileNetV2(nn.Module):
  """MobileNetV2 as the CRD benchmark defines it for 32x32 images.

  Attributes:
    num_classes: size of the output.
    width_multiplier: scales every width but the last convolution's (which scales only above 1).
    expansion: expansion of every stage but the first (whose expansion is 1).
  """

  num_classes: int
  width_multiplier: float = 0.5
  expansion: int = 6

  ATTRIBUTE_RANGES: ClassVar[dict] = {"width_multiplier": attributes.Range(0, low_open=True),
                      "expansion": attributes.POSITIVE_INT}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    x = ConvBNReLU(int(32 * self.width_multiplier), strides=2, name="stem")(images_BxHxWxC, train)
    for stage, (expansion, channels, blocks, first_stride) in enumerate(STAGES):
      for index in range(blocks):
        x = InvertedResidual(int(channels * self.width_multiplier),
                             strides=first_stride if index == 0 else 1,
                             expansion=expansion or self.expansion,
                             name=f"blocks{stage}_{index}")(x, train)
    last_channels = int(1280 * self.width_multiplier) if self.width_multiplier > 1.0 else 1280
    x = ConvBNReLU(last_channels, kernel_size=1, name="last_conv")(x, train)
    # The reference's average pool covers the whole final map for any input size divisible by 32.
    x = GlobalAvgPool(name="pool")(x)
    # The reference initialises the classifier with N(0, 0.01) and zero bias.
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="head")(x)


# Zoo name -> (class, attributes), the CRD benchmark's name (its table calls it MobileNetV2).
ZOO = {
    "mobile_half": (MobileNetV2, {"width_multiplier": 0.5, "expansion": 6}),
}
