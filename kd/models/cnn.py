"""Small convolutional classifiers for low-resolution images (digits, mnist, cifar)."""

from typing import Sequence

import flax.linen as nn
import jax


class ConvNet(nn.Module):
  """Blocks of 3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool, then a hidden dense layer and a head.

  Attributes:
    num_classes: size of the output.
    channels: output channels of each conv block; each block halves the resolution.
    hidden: width of the dense layer before the head.
    dropout: dropout rate before the head (needs a "dropout" rng when training).
    batch_norm: whether each conv is followed by BatchNorm (running statistics in `batch_stats`).
  """

  num_classes: int
  channels: Sequence[int] = (32, 64)
  hidden: int = 128
  dropout: float = 0.0
  batch_norm: bool = True

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    x = images_BxHxWxC
    for index, channels in enumerate(self.channels):
      x = nn.Conv(channels, (3, 3), use_bias=not self.batch_norm, name=f"conv{index}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"norm{index}")(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
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

  @nn.compact
  def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
    x = inputs.reshape(inputs.shape[0], -1)
    for index, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"dense{index}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="head")(x)
