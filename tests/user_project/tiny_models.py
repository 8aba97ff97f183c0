"""Models a user writes outside kd: a Linen MLP-Mixer and an NNX MLP (used by tests/test_open_world.py)."""

from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp


class MixerBlock(nn.Module):
  tokens_hidden: int
  channels_hidden: int

  @nn.compact
  def __call__(self, x_BxNxC):
    y = nn.LayerNorm()(x_BxNxC).swapaxes(1, 2)
    y = nn.Dense(x_BxNxC.shape[1])(nn.gelu(nn.Dense(self.tokens_hidden)(y))).swapaxes(1, 2)
    x_BxNxC = x_BxNxC + y
    y = nn.LayerNorm()(x_BxNxC)
    return x_BxNxC + nn.Dense(x_BxNxC.shape[-1])(nn.gelu(nn.Dense(self.channels_hidden)(y)))


class TinyMixer(nn.Module):
  """MLP-Mixer (Tolstikhin et al. 2021) for small images: patches -> tokens -> mixer blocks -> head."""

  num_classes: int
  patch: int = 2
  hidden: int = 16
  depth: int = 2

  @nn.compact
  def __call__(self, images, train: bool):
    del train
    x = nn.Conv(self.hidden, (self.patch, self.patch), strides=self.patch, name="stem")(images)
    x = x.reshape(x.shape[0], -1, self.hidden)
    for index in range(self.depth):
      x = MixerBlock(2 * x.shape[1], 2 * self.hidden, name=f"block{index}")(x)
    return nn.Dense(self.num_classes, name="head")(jnp.mean(nn.LayerNorm(name="norm")(x), axis=1))


class NeedsWidth(nn.Module):
  """A model with an attribute that has no default (the config must set it)."""

  num_classes: int
  width: int

  @nn.compact
  def __call__(self, images, train: bool):
    del train
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(images.reshape(images.shape[0], -1))))


class Broken(nn.Module):
  """A model whose code raises: the error must name this file and line."""

  num_classes: int

  @nn.compact
  def __call__(self, images, train: bool):
    return undefined_layer(images)  # noqa: F821  # pylint: disable=undefined-variable


class NNXMLP(nnx.Module):
  """An NNX model: constructor (num_classes, attributes..., *, rngs), __call__(x) without `train`."""

  def __init__(self, num_classes: int, hidden: int = 32, in_features: int = 64, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(in_features, hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


class NNXTokenMixer(nnx.Module):
  """An NNX transformer-style model: patch tokens, self-attention blocks, mean-pooled head."""

  def __init__(self, num_classes: int, hidden: int = 16, depth: int = 2, patch: int = 2,
               in_channels: int = 1, *, rngs: nnx.Rngs):
    self.patch = patch
    self.embed = nnx.Linear(patch * patch * in_channels, hidden, rngs=rngs)
    self.blocks = nnx.List([nnx.MultiHeadAttention(2, hidden, decode=False, rngs=rngs) for _ in range(depth)])
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    b, h, w, c = images.shape
    p = self.patch
    tokens = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
    x = self.embed(tokens)
    for block in self.blocks:
      x = x + block(x)
    return self.head(jnp.mean(x, axis=1))
