"""ResNet-18 and ResNet-34 for 224x224 images, in torchvision's layout.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(https://arxiv.org/abs/1512.03385), Table 1: a 7x7 stride-2 stem and a 3x3 stride-2 max-pool, then
four stages of basic blocks of 64, 128, 256 and 512 channels, each but the first halving the
resolution. The ImageNet experiments of the CRD benchmark (Tian, Krishnan and Isola, "Contrastive
Representation Distillation", ICLR 2020, https://arxiv.org/abs/1910.10699) distil ResNet-34 into
ResNet-18 with torchvision's definitions, which these follow: no convolution biases, 1x1 convolution
and BatchNorm shortcuts where a block changes resolution, 11,689,512 and 21,797,672 parameters at
1000 classes.

Tap points for feature distillation (module outputs, as `capture_intermediates` records them):
  stem          the 7x7 conv, BatchNorm and ReLU (before the max-pool), at 112x112.
  layer{s}_{i}  block i of stage s (1-based stages, 0-based blocks) after its final ReLU; the last
                block of each stage gives the stage output at 56, 28, 14 and 7 pixels.
  layer{s}_{i}/preact
                the same block's residual sum before that ReLU.
  pool          the global-average-pooled 512-d feature.
  head          the logits.
"""

from typing import Sequence

import flax.linen as nn
import jax

from kd.models.cifar_resnet import BasicBlock
from kd.models.cifar_resnet import ConvBNReLU
from kd.models.cifar_resnet import GlobalAvgPool
from kd.models.cifar_resnet import torch_default_kernel


class ImageNetResNet(nn.Module):
  """A ResNet of basic blocks for ImageNet-sized inputs.

  Attributes:
    num_classes: size of the output.
    stage_sizes: blocks in each of the four stages: (2, 2, 2, 2) is ResNet-18, (3, 4, 6, 3)
      ResNet-34.
    widths: channels of the four stages (the stem has the first stage's width).
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    x = ConvBNReLU(self.widths[0], kernel_size=7, strides=2, name="stem")(images_BxHxWxC, train)
    # Explicit padding of 1 as in PyTorch (max_pool pads with -inf, so padding never wins).
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (blocks, features) in enumerate(zip(self.stage_sizes, self.widths), start=1):
      for index in range(blocks):
        strides = 2 if stage > 1 and index == 0 else 1
        x = BasicBlock(features, strides, name=f"layer{stage}_{index}")(x, train)
    x = GlobalAvgPool(name="pool")(x)
    return nn.Dense(self.num_classes, kernel_init=torch_default_kernel, name="head")(x)


# Zoo name -> (class, attributes), torchvision's names.
ZOO = {
    "resnet18": (ImageNetResNet, {"stage_sizes": (2, 2, 2, 2)}),
    "resnet34": (ImageNetResNet, {"stage_sizes": (3, 4, 6, 3)}),
}
