"""VGG networks with BatchNorm for 32x32 images: vgg8, vgg11, vgg13, vgg16 and vgg19.

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015 (https://arxiv.org/abs/1409.1556): stacks of 3x3 convolutions between 2x2 max-pools.

The definitions follow the reference implementation of the CRD benchmark (Tian, Krishnan and Isola,
"Contrastive Representation Distillation", ICLR 2020, https://arxiv.org/abs/1910.10699), whose "vgg"
models are its `vgg*_bn`: five blocks of conv (with bias), BatchNorm and ReLU, the fully connected
layers replaced by global average pooling and one linear layer, and the fourth max-pool skipped for
32x32 inputs so that the last two blocks both run at 4x4. vgg8 is the benchmark's own configuration
"S", one convolution per block. Parameter counts equal the reference's.

Tap points for feature distillation (module outputs, as `capture_intermediates` records them):
  block{b}      block b (0 to 4), after its final ReLU: the reference's f0 to f4 (its `feat` list).
  block{b}/bn{n}
                the block's last BatchNorm (n = its number of convolutions - 1), before that ReLU:
                the reference's `preact` f1 to f4 (block1 to block4) and its `get_bn_before_relu`.
  pool          the global-average-pooled feature (the reference's f5).
  head          the logits.
"""

from typing import ClassVar, Sequence

import flax.linen as nn
import jax

from kd.models import attributes
from kd.models.cifar_resnet import batch_norm
from kd.models.cifar_resnet import GlobalAvgPool
from kd.models.cifar_resnet import he_normal_fan_out

# Output channels of each convolution in each of the five blocks, by depth (the reference's
# configurations "S", "A", "B", "D", "E"); depth counts the convolutions and the linear layer.
CONFIGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGGBlock(nn.Module):
  """3x3 conv, BatchNorm and ReLU for each width.

  The block's output is the reference's post-ReLU feature; its last BatchNorm (`bn{n}`) is the
  pre-activation feature that some distillation methods need.

  Attributes:
    widths: output channels of each convolution.
  """

  widths: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for index, features in enumerate(self.widths):
      x = nn.Conv(features, (3, 3), padding=1, kernel_init=he_normal_fan_out,
                  name=f"conv{index}")(x)
      x = nn.relu(batch_norm(train)(name=f"bn{index}")(x))
    return x


class VGG(nn.Module):
  """A VGG network with BatchNorm and a single linear classifier.

  Attributes:
    num_classes: size of the output.
    depth: 8, 11, 13, 16 or 19 (the keys of `CONFIGS`).
    base_width: channels of the first block; every width scales with it (64 is the reference's,
      smaller values build the same layout narrower, e.g. for conversion tests).
  """

  num_classes: int
  depth: int = 13
  base_width: int = 64

  ATTRIBUTE_RANGES: ClassVar[dict] = {"depth": attributes.Choice(*sorted(CONFIGS)),
                      "base_width": attributes.POSITIVE_INT}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    if self.depth not in CONFIGS:
      raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {self.depth}")
    height = images_BxHxWxC.shape[1]
    x = images_BxHxWxC
    for block, widths in enumerate(CONFIGS[self.depth]):
      widths = tuple(width * self.base_width // 64 for width in widths)
      x = VGGBlock(widths, name=f"block{block}")(x, train)
      # The reference pools after blocks 0 to 2 always, after block 3 only for 64x64 inputs.
      if block < 3 or (block == 3 and height == 64):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = GlobalAvgPool(name="pool")(x)
    # The reference initialises the classifier with N(0, 0.01) and zero bias.
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="head")(x)


# Zoo name -> (class, attributes), the CRD benchmark's names (its vgg*_bn).
ZOO = {
    "vgg8": (VGG, {"depth": 8}),
    "vgg11": (VGG, {"depth": 11}),
    "vgg13": (VGG, {"depth": 13}),
    "vgg16": (VGG, {"depth": 16}),
    "vgg19": (VGG, {"depth": 19}),
}
