"""Small convolutional classifiers for low-resolution images (digits, mnist, cifar)."""

from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.models import attributes


class ConvNet(nn.Module):
  """Blocks of 3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool, then a hidden dense layer and a head.

  Attributes:
    num_classes: size of the output.
    channels: output channels of each conv block; each block halves the resolution.
    hidden: width of the dense layer before the head.
    dropout: dropout rate before the head (needs a "dropout" rng when training).
    batch_norm: whether each conv is followed by BatchNorm (running statistics in `batch_stats`).
    dtype: the computation's dtype ("float32", or "bfloat16" for mixed precision); parameters
      stay float32 and the logits are returned in float32, so losses are computed in float32.
  """

  num_classes: int
  channels: Sequence[int] = (32, 64)
  hidden: int = 128
  dropout: float = 0.0
  batch_norm: bool = True
  dtype: str = "float32"

  ATTRIBUTE_RANGES: ClassVar[dict] = {"channels": attributes.POSITIVE_INT, "hidden": attributes.POSITIVE_INT,
                      "dropout": attributes.PROBABILITY}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    x = images_BxHxWxC
    for index, channels in enumerate(self.channels):
      x = nn.Conv(channels, (3, 3), use_bias=not self.batch_norm, dtype=self.dtype, name=f"conv{index}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                         name=f"norm{index}")(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


class ConvNet1D(nn.Module):
  """1-D conv blocks (conv -> BatchNorm -> ReLU -> max-pool by 2) over [B, L, C] signals, then a head.

  The MNIST-1D paper's CNN has three 1-D conv layers of 25 channels (kernel 5) and reaches 94%.

  Attributes:
    num_classes: size of the output.
    channels: output channels of each block.
    kernel_size: width of each convolution.
    hidden: width of the dense layer before the head (0: none).
    batch_norm: whether each conv is followed by BatchNorm.
  """

  num_classes: int
  channels: Sequence[int] = (25, 25, 25)
  kernel_size: int = 5
  hidden: int = 0
  batch_norm: bool = True

  ATTRIBUTE_RANGES: ClassVar[dict] = {"channels": attributes.POSITIVE_INT, "kernel_size": attributes.POSITIVE_INT,
                      "hidden": attributes.NON_NEGATIVE_INT}

  @nn.compact
  def __call__(self, signals_BxLxC: jax.Array, train: bool) -> jax.Array:
    x = signals_BxLxC
    for index, channels in enumerate(self.channels):
      x = nn.Conv(channels, (self.kernel_size,), use_bias=not self.batch_norm, name=f"conv{index}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"norm{index}")(x)
      x = nn.max_pool(nn.relu(x), (2,), strides=(2,))
    x = x.reshape(x.shape[0], -1)
    if self.hidden:
      x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    return nn.Dense(self.num_classes, name="head")(x)


class MLP(nn.Module):
  """A multi-layer perceptron on flattened inputs.

  Attributes:
    num_classes: size of the output.
    hidden: width of each hidden layer.
    dropout: dropout rate after each hidden layer.
  """

  num_classes: int
  hidden: Sequence[int] = (128,)
  dropout: float = 0.0

  ATTRIBUTE_RANGES: ClassVar[dict] = {"hidden": attributes.POSITIVE_INT, "dropout": attributes.PROBABILITY}

  @nn.compact
  def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
    x = inputs.reshape(inputs.shape[0], -1)
    for index, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"dense{index}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="head")(x)
