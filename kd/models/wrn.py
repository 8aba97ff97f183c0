"""Wide residual networks for 32x32 images: wrn_16_1, wrn_16_2, wrn_40_1 and wrn_40_2.

Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016 (https://arxiv.org/abs/1605.07146):
pre-activation basic blocks (BatchNorm and ReLU before each convolution) in three stages of width
16k, 32k and 64k for widening factor k, with 6n + 4 layers in all.

The definitions follow the reference implementation of the CRD benchmark (Tian, Krishnan and Isola,
"Contrastive Representation Distillation", ICLR 2020, https://arxiv.org/abs/1910.10699): convolutions
have no bias, a block that changes width has a 1x1 convolution as its shortcut and applies its first
BatchNorm and ReLU to the shortcut's input too. Parameter counts equal the reference's.

Tap points for feature distillation (module outputs, as `capture_intermediates` records them):
  stem          the first 3x3 convolution: the reference's f0.
  block{s}_{i}  block i of stage s (1-based stages, 0-based blocks): a residual sum, which in a
                pre-activation network has no ReLU after it. The last block of each stage gives the
                stage output, the reference's f1, f2, f3.
  block{s}_{0}/bn1, bn_final
                BatchNorm of the previous stage's output, before the ReLU: the reference's `preact`
                f1 (block2_0/bn1), f2 (block3_0/bn1) and f3 (bn_final).
  pool          the global-average-pooled feature after the final BatchNorm and ReLU (the
                reference's f4).
  head          the logits.

Initialisation (`init_scheme`): "repdistiller" (the default) is the CRD benchmark's: convolutions N(0, 2 /
(k * k * out_channels)) (fan-out), BatchNorm scales 1, the classifier PyTorch's default uniform.
"attention_transfer" is the released code of Zagoruyko and Komodakis ("Paying More Attention to
Attention", ICLR 2017, github.com/szagoruyko/attention-transfer `utils.py`): `conv_params` and
`linear_params` are torch's `kaiming_normal_` with its defaults (fan-in, gain sqrt(2)), so convolutions
and the classifier are N(0, 2 / fan_in), the classifier's bias 0, and `bnparams` draws each BatchNorm
scale from U(0, 1) (`torch.rand`), its bias 0.
"""

from typing import ClassVar

import functools

import flax.linen as nn
import jax

from kd.models import attributes
from kd.models.cifar_resnet import batch_norm
from kd.models.cifar_resnet import GlobalAvgPool
from kd.models.cifar_resnet import he_normal_fan_out
from kd.models.cifar_resnet import torch_default_kernel

INITS = ("repdistiller", "attention_transfer")
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # torch's kaiming_normal_.


def _initialisers(init: str) -> dict:
  """Kernel initialisers of the convolutions and the classifier, and the BatchNorm scale's (see the
  module docstring)."""
  if init == "attention_transfer":
    return {"conv": he_normal_fan_in, "head": he_normal_fan_in, "bn_scale": nn.initializers.uniform(1.0)}
  return {"conv": he_normal_fan_out, "head": torch_default_kernel, "bn_scale": nn.initializers.ones}


class WideBasicBlock(nn.Module):
  """BatchNorm, ReLU, 3x3 conv, BatchNorm, ReLU, (dropout), 3x3 conv, plus the shortcut.

  Attributes:
    features: output channels.
    strides: stride of the first convolution and of the shortcut.
    dropout: dropout rate between the convolutions (needs a "dropout" rng when training).
    init_scheme: the initialisation scheme, one of INITS.
  """

  features: int
  strides: int = 1
  dropout: float = 0.0
  init_scheme: str = "repdistiller"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    inits = _initialisers(self.init_scheme)
    norm = functools.partial(batch_norm(train), scale_init=inits["bn_scale"])
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=inits["conv"])
    activated = nn.relu(norm(name="bn1")(x))
    out = conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv1")(activated)
    out = nn.relu(norm(name="bn2")(out))
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    out = conv(self.features, (3, 3), padding=1, name="conv2")(out)
    if x.shape[-1] == self.features:
      return x + out
    # A block that changes width projects the activated input, as the reference does; a
    # width-preserving block keeps the raw input as its shortcut.
    shortcut = conv(self.features, (1, 1), strides=self.strides, padding=0,
                    name="shortcut_conv")(activated)
    return shortcut + out


class WideResNet(nn.Module):
  """A wide residual network for 32x32 images.

  Attributes:
    num_classes: size of the output.
    depth: number of weighted layers, 6n + 4 for n blocks per stage (16, 22, 28, 40).
    widen_factor: k, the stages have 16k, 32k and 64k channels.
    dropout: dropout rate inside each block (0 in the CRD benchmark).
    init_scheme: "repdistiller" (the default) or "attention_transfer" (see the module docstring).
  """

  num_classes: int
  depth: int = 40
  widen_factor: int = 2
  dropout: float = 0.0
  init_scheme: str = "repdistiller"

  ATTRIBUTE_RANGES: ClassVar[dict] = {
      "depth": attributes.Range(10, integer=True), "widen_factor": attributes.POSITIVE_INT,
      "dropout": attributes.PROBABILITY, "init_scheme": attributes.Choice(*INITS),
      "rules": (attributes.Rule(lambda a: (a.get("depth", 40) - 4) % 6 == 0,
                                "depth must be 6n + 4 (10, 16, 22, 28, 40)"),)}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    if (self.depth - 4) % 6 != 0:
      raise ValueError(f"WideResNet depth must be 6n + 4 (16, 22, 28, 40), got {self.depth}")
    blocks_per_stage = (self.depth - 4) // 6
    inits = _initialisers(self.init_scheme)
    x = nn.Conv(16, (3, 3), padding=1, use_bias=False, kernel_init=inits["conv"], name="stem")(images_BxHxWxC)
    widths = (16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)
    for stage, features in enumerate(widths, start=1):
      for index in range(blocks_per_stage):
        strides = 2 if stage > 1 and index == 0 else 1
        x = WideBasicBlock(features, strides, self.dropout, self.init_scheme, name=f"block{stage}_{index}")(x, train)
    x = nn.relu(batch_norm(train)(name="bn_final", scale_init=inits["bn_scale"])(x))
    x = GlobalAvgPool(name="pool")(x)
    return nn.Dense(self.num_classes, kernel_init=inits["head"], name="head")(x)


# Zoo name -> (class, attributes), the CRD benchmark's names.
ZOO = {
    "wrn_16_1": (WideResNet, {"depth": 16, "widen_factor": 1}),
    "wrn_16_2": (WideResNet, {"depth": 16, "widen_factor": 2}),
    "wrn_40_1": (WideResNet, {"depth": 40, "widen_factor": 1}),
    "wrn_40_2": (WideResNet, {"depth": 40, "widen_factor": 2}),
}
