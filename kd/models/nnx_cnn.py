"""A small convolutional classifier written with Flax NNX (the NNX counterpart of `cnn.ConvNet`)."""

from typing import ClassVar, Sequence

from flax import nnx
import jax

from kd.models import attributes


class NNXConvNet(nnx.Module):
  """Blocks of 3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool, then a hidden dense layer and a head.

  Tap points are attribute paths: `convs/0`, `norms/0`, ..., `hidden`, `head`.
  """

  ATTRIBUTE_RANGES: ClassVar[dict] = {"channels": attributes.POSITIVE_INT, "hidden": attributes.POSITIVE_INT,
                      "dropout": attributes.PROBABILITY, "in_channels": attributes.POSITIVE_INT,
                      "input_size": attributes.POSITIVE_INT}

  def __init__(self, num_classes: int, channels: Sequence[int] = (32,), hidden: int = 32,
               dropout: float = 0.0, in_channels: int = 1, input_size: int = 8, *, rngs: nnx.Rngs):
    widths = (in_channels,) + tuple(channels)
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), use_bias=False, rngs=rngs)
                           for a, b in zip(widths[:-1], widths[1:])])
    self.norms = nnx.List([nnx.BatchNorm(b, momentum=0.9, rngs=rngs) for b in widths[1:]])
    size = input_size // 2 ** len(channels)
    self.hidden = nnx.Linear(size * size * widths[-1], hidden, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    x = images_BxHxWxC
    for conv, norm in zip(self.convs, self.norms):
      x = nnx.max_pool(nnx.relu(norm(conv(x))), (2, 2), strides=(2, 2))
    x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.head(self.dropout(x))
