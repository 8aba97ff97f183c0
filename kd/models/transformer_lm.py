"""A decoder-only transformer language model (pre-LayerNorm GPT), with a KV cache for decoding.

    tokens [B, L] -> embed -> layers_0 ... layers_{n-1} -> final_norm -> head -> logits [B, L, V]

Each block is `x + attention(LN(x))` then `x + mlp(LN(x))`, causal multi-head attention with rotary
(Su et al. 2021, arXiv:2104.09864) or learned absolute positions. Every block's output (the hidden
state after it) is a tap point: `layers_0`, `layers_1`, ..., `final_norm` (see `kd.features`), so
feature losses reach them without editing the model.

The head's weights are tap points too, `head_kernel` [D, V] and `head_bias` [V] (identity modules:
nothing is computed, and the logits are unchanged), so a loss can compute the logits itself from
`final_norm` and the head, a chunk of tokens at a time (`kd.lm.chunked`): when it does, the compiled
step never computes the full logits, which nothing then reads.

`decode(tokens, cache, cache_index)` runs the same weights on new tokens only, reading and writing
the keys and values of the earlier positions in `cache` (`TransformerLM.init_cache`): the function
`kd.lm.sampling` scans inside `jit`. Its logits equal those of `__call__` on the whole prefix (tested).
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.models import attributes

POSITIONS = ("rotary", "learned")


def rotary_embedding(x_BxTxHxD: jax.Array, positions_T: jax.Array) -> jax.Array:
  """Rotates pairs of channels by position-dependent angles (RoFormer, Su et al. 2021, Section 3.4.2)."""
  half = x_BxTxHxD.shape[-1] // 2
  frequencies = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles_TxD = positions_T.astype(jnp.float32)[:, None] * frequencies[None, :]
  sin, cos = jnp.sin(angles_TxD)[None, :, None, :], jnp.cos(angles_TxD)[None, :, None, :]
  first, second = x_BxTxHxD[..., :half], x_BxTxHxD[..., half:]
  return jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1).astype(
      x_BxTxHxD.dtype)


class Tap(nn.Module):
  """Returns its input: a tap point (kd.features) for a value that no submodule outputs, a weight."""

  @nn.compact
  def __call__(self, x):
    return x


class Attention(nn.Module):
  """Causal multi-head self-attention; with a cache, the new tokens attend to all earlier ones."""

  num_heads: int
  positions: str

  @nn.compact
  def __call__(self, x_BxTxD, positions_T, cache=None, cache_index=None):
    width = x_BxTxD.shape[-1]
    head_dim = width // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), name="qkv")(x_BxTxD)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.positions == "rotary":
      q_BxTxHxK = rotary_embedding(q_BxTxHxK, positions_T)
      k_BxTxHxK = rotary_embedding(k_BxTxHxK, positions_T)
    if cache is None:
      keys, values, key_positions = k_BxTxHxK, v_BxTxHxK, positions_T
      new_cache = None
    else:
      cached_keys, cached_values = cache
      keys = jax.lax.dynamic_update_slice(cached_keys, k_BxTxHxK.astype(cached_keys.dtype),
                                          (0, cache_index, 0, 0))
      values = jax.lax.dynamic_update_slice(cached_values, v_BxTxHxK.astype(cached_values.dtype),
                                            (0, cache_index, 0, 0))
      key_positions = jnp.arange(keys.shape[1])
      new_cache = (keys, values)
    # Slots of the cache not yet written have positions beyond the query's, so the causal mask
    # hides them too.
    causal_TxS = positions_T[:, None] >= key_positions[None, :]
    scores = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, keys) / jnp.sqrt(head_dim).astype(x_BxTxD.dtype)
    scores = jnp.where(causal_TxS[None, None], scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhts,bshk->bthk", weights, values)
    out = nn.DenseGeneral(width, axis=(-2, -1), name="out")(out)
    return out if cache is None else (out, new_cache)


class Block(nn.Module):
  num_heads: int
  mlp_ratio: int
  positions: str
  dropout: float

  @nn.compact
  def __call__(self, x_BxTxD, positions_T, train: bool = False, cache=None, cache_index=None):
    width = x_BxTxD.shape[-1]
    attention = Attention(self.num_heads, self.positions, name="attention")
    attended = attention(nn.LayerNorm(name="norm1")(x_BxTxD), positions_T, cache, cache_index)
    if cache is not None:
      attended, cache = attended
    x_BxTxD = x_BxTxD + nn.Dropout(self.dropout, deterministic=not train)(attended)
    hidden = nn.Dense(self.mlp_ratio * width, name="mlp_in")(nn.LayerNorm(name="norm2")(x_BxTxD))
    hidden = nn.Dense(width, name="mlp_out")(nn.gelu(hidden))
    x_BxTxD = x_BxTxD + nn.Dropout(self.dropout, deterministic=not train)(hidden)
    return x_BxTxD if cache is None else (x_BxTxD, cache)


class TransformerLM(nn.Module):
  """Decoder-only transformer over a vocabulary of `num_classes` tokens (bytes: 256)."""

  num_classes: int
  num_layers: int = 2
  width: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  max_len: int = 256  # Longest sequence (learned positions; the cache of `kd.lm.sampling`).
  positions: str = "rotary"  # "rotary" or "learned".
  dropout: float = 0.0

  integer_inputs: ClassVar[bool] = True  # Token ids go in as they are (not scaled to [0, 1]).

  ATTRIBUTE_RANGES: ClassVar[dict] = {
      "num_layers": attributes.POSITIVE_INT, "width": attributes.POSITIVE_INT,
      "num_heads": attributes.POSITIVE_INT, "mlp_ratio": attributes.POSITIVE_INT,
      "max_len": attributes.POSITIVE_INT, "positions": attributes.Choice(*POSITIONS),
      "dropout": attributes.PROBABILITY,
      "rules": (attributes.Rule(lambda a: a.get("width", 128) % (2 * a.get("num_heads", 4)) == 0,
                                "width must divide into num_heads heads of even size"),)}

  def setup(self):
    if self.positions not in POSITIONS:
      raise ValueError(f"positions={self.positions!r}: choose one of {POSITIONS}")
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise ValueError(f"width={self.width} must divide into num_heads={self.num_heads} heads of even size")
    self.embed = nn.Embed(self.num_classes, self.width)
    if self.positions == "learned":
      self.position_embedding = self.param("position_embedding", nn.initializers.normal(0.02),
                                           (self.max_len, self.width))
    self.layers = [Block(self.num_heads, self.mlp_ratio, self.positions, self.dropout)
                   for _ in range(self.num_layers)]
    self.final_norm = nn.LayerNorm()
    self.head = nn.Dense(self.num_classes)
    self.head_kernel = Tap()
    self.head_bias = Tap()

  def _embed(self, tokens_BxT, positions_T):
    x_BxTxD = self.embed(tokens_BxT.astype(jnp.int32))
    if self.positions == "learned":
      x_BxTxD = x_BxTxD + jnp.take(self.position_embedding, positions_T, axis=0)[None]
    return x_BxTxD

  def __call__(self, tokens_BxT, train: bool = False):
    positions_T = jnp.arange(tokens_BxT.shape[1])
    x_BxTxD = self._embed(tokens_BxT, positions_T)
    for layer in self.layers:
      x_BxTxD = layer(x_BxTxD, positions_T, train)
    logits = self.head(self.final_norm(x_BxTxD))
    head = self.head.variables["params"]
    self.head_kernel(head["kernel"])
    self.head_bias(head["bias"])
    return logits

  def decode(self, tokens_BxT, cache, cache_index):
    """Logits [B, T, V] of T new tokens at positions cache_index..cache_index+T-1, and the cache."""
    positions_T = cache_index + jnp.arange(tokens_BxT.shape[1])
    x_BxTxD = self._embed(tokens_BxT, positions_T)
    new_cache = []
    for layer, layer_cache in zip(self.layers, cache):
      x_BxTxD, layer_cache = layer(x_BxTxD, positions_T, False, layer_cache, cache_index)
      new_cache.append(layer_cache)
    return self.head(self.final_norm(x_BxTxD)), new_cache

  @nn.nowrap  # Reads only the attributes: callable on the unbound module, outside `apply`.
  def init_cache(self, batch_size: int, length: int, dtype=jnp.float32) -> list[Any]:
    """An empty KV cache for `length` positions: per layer, (keys, values) [B, length, H, D/H].

    Every leaf has the batch on axis 0 (beam search gathers cache rows by parent beam).
    """
    shape = (batch_size, length, self.num_heads, self.width // self.num_heads)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(self.num_layers)]


def init_cache(module: TransformerLM, batch_size: int, length: int, dtype=jnp.float32) -> list[Any]:
  """`TransformerLM.init_cache` as a function, for any module with `num_layers`, `num_heads`, `width`."""
  return TransformerLM.init_cache(module, batch_size, length, dtype)
