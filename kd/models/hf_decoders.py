"""Hugging Face decoder families in Flax: GPT-2, Llama 2/3, Qwen2 and Qwen3, weight for weight.

Each class follows the `transformers` implementation of its family (`modeling_gpt2.py`,
`modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`, transformers 5) closely enough that
`kd.convert.hf` loads a Hugging Face checkpoint folder array for array and the logits agree to float32
rounding (tests/test_hf_decoders.py, against logits transformers computed). The attributes are the
fields of the family's `config.json` under the same names (vocab_size is kd's `num_classes`), with
transformers' config defaults; `rope_scaling` is spelled out as `rope_type`, `rope_factor`, ...

  gpt2    Radford et al. 2019: learned positions (`wpe`), pre-LayerNorm blocks, `gelu_new`, one fused
          q/k/v projection (`c_attn`; transformers' Conv1D stores [in, out], Flax's kernel layout), the
          head tied to `wte`.
  llama   Touvron et al. 2023 (arXiv:2302.13971, 2307.09288) and Llama 3 (arXiv:2407.21783): RMSNorm,
          SwiGLU MLP (`down(silu(gate(x)) * up(x))`), rotary positions (Su et al. 2021,
          arXiv:2104.09864) in the rotate-half layout, with `rope_type` "linear" or "llama3" frequency
          scaling, grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245) with
          `num_key_value_heads`, tied or untied embeddings.
  qwen2   Llama with biases on the q, k and v projections (arXiv:2407.10671).
  qwen3   Llama with an RMSNorm over each head's queries and keys before the rotation, no biases
          (arXiv:2505.09388); `head_dim` is its own field (128 in the released models).

The kd contract is TransformerLM's (kd.models.transformer_lm): `__call__(tokens_BxT, train) -> logits
[B, T, vocab]`; tap points `layers_<i>` (the hidden state after block i) and `final_norm`, and the
head's weight, `head_kernel` [D, V] (an untied `lm_head`) or `head_embedding` [V, D] (a head tied to
the token embedding), for losses that compute the logits themselves in chunks (`kd.lm.chunked`);
`decode(tokens_BxT, cache, cache_index) -> (logits, cache)` over a KV cache from `init_cache`, which
holds only the key/value heads (grouped-query attention caches num_key_value_heads, not
num_attention_heads). Parameters are float32; `dtype` is the computation's dtype (norms and softmax
stay float32). `dropout` (kd's, default 0) drops the residual branches in training; the checkpoints'
own dropout rates are not read. Sliding-window attention (Qwen's `use_sliding_window`) is not
implemented.
"""

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd.models import attributes
from kd.models.transformer_lm import Tap


def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


def _gelu_exact(x):
  return jax.nn.gelu(x, approximate=False)


def _quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


# transformers' ACT2FN names -> the same function.
ACTIVATIONS = {
    "gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "gelu_fast": _gelu_tanh,
    "gelu": _gelu_exact, "quick_gelu": _quick_gelu, "relu": jax.nn.relu, "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
ROPE_TYPES = ("default", "linear", "llama3")
_POSITIVE = attributes.Range(0, low_open=True)


def rope_frequencies(head_dim: int, theta: float, rope_type: str = "default", factor: float = 1.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                     original_max_position_embeddings: int = 8192) -> np.ndarray:
  """The inverse frequencies [head_dim / 2] of the rotary embedding, float32.

  transformers' `modeling_rope_utils`: "default" is 1 / theta^(2i / d); "linear" divides them by
  `factor`; "llama3" (Llama 3.1, `_compute_llama3_parameters`) divides the low frequencies (wavelength
  above original_max / low_freq_factor) by `factor`, keeps the high ones (wavelength below
  original_max / high_freq_factor) and interpolates smoothly in between.
  """
  inv_freq = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(
      np.float32)
  if rope_type == "linear":
    return (inv_freq / np.float32(factor)).astype(np.float32)
  if rope_type == "llama3":
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    wavelen = (2 * math.pi / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
    smooth = ((original_max_position_embeddings / wavelen - low_freq_factor)
              / (high_freq_factor - low_freq_factor)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  if rope_type != "default":
    raise ValueError(f"rope_type={rope_type!r}: choose one of {ROPE_TYPES}")
  return inv_freq


def apply_rotary(x_BxTxHxD: jax.Array, inv_freq: np.ndarray, positions_T: jax.Array) -> jax.Array:
  """transformers' `apply_rotary_pos_emb`: x * cos + rotate_half(x) * sin, in float32."""
  angles_TxF = positions_T.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq, jnp.float32)[None, :]
  angles_TxD = jnp.concatenate([angles_TxF, angles_TxF], axis=-1)
  cos, sin = jnp.cos(angles_TxD)[None, :, None, :], jnp.sin(angles_TxD)[None, :, None, :]
  x = x_BxTxHxD.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxTxHxD.dtype)


class RMSNorm(nn.Module):
  """`LlamaRMSNorm`: x / sqrt(mean(x^2) + eps) in float32, times a learned scale (no bias)."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return (scale * normed).astype(self.dtype)


def _attend(q_BxTxHxD, keys_BxSxKxD, values_BxSxKxD, positions_T, key_positions_S, scale, dtype):
  """Causal grouped-query attention: query head h reads key/value head h // (H / K), as `repeat_kv`."""
  batch, length, num_heads, head_dim = q_BxTxHxD.shape
  num_kv_heads = keys_BxSxKxD.shape[2]
  q_BxTxKxGxD = q_BxTxHxD.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
  scores = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, keys_BxSxKxD.astype(q_BxTxHxD.dtype),
                      preferred_element_type=jnp.float32) * scale
  # Cache slots not yet written sit at positions beyond every query's: the causal mask hides them.
  causal_TxS = positions_T[:, None] >= key_positions_S[None, :]
  scores = jnp.where(causal_TxS[None, None, None], scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", weights, values_BxSxKxD.astype(dtype))
  return out.reshape(batch, length, num_heads * head_dim)


def _update_cache(cache, cache_index, keys_BxTxKxD, values_BxTxKxD, positions_T):
  if cache is None:
    return keys_BxTxKxD, values_BxTxKxD, positions_T, None
  cached_keys, cached_values = cache
  keys = jax.lax.dynamic_update_slice(cached_keys, keys_BxTxKxD.astype(cached_keys.dtype), (0, cache_index, 0, 0))
  values = jax.lax.dynamic_update_slice(cached_values, values_BxTxKxD.astype(cached_values.dtype),
                                        (0, cache_index, 0, 0))
  return keys, values, jnp.arange(keys.shape[1]), (keys, values)


def _empty_cache(num_layers, batch_size, length, num_kv_heads, head_dim, dtype):
  shape = (batch_size, length, num_kv_heads, head_dim)
  return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(num_layers)]


# --- GPT-2 -------------------------------------------------------------------------------------------


class GPT2Attention(nn.Module):
  num_heads: int
  scale: float
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxE, positions_T, cache=None, cache_index=None):
    width = x_BxTxE.shape[-1]
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, name="c_attn")(x_BxTxE)
    shape = x_BxTxE.shape[:2] + (self.num_heads, head_dim)
    q, k, v = (part.reshape(shape) for part in jnp.split(qkv, 3, axis=-1))
    keys, values, key_positions, new_cache = _update_cache(cache, cache_index, k, v, positions_T)
    out = _attend(q, keys, values, positions_T, key_positions, self.scale, self.dtype)
    return nn.Dense(width, dtype=self.dtype, name="c_proj")(out), new_cache


class GPT2Block(nn.Module):
  num_heads: int
  inner: int
  activation: str
  epsilon: float
  scale: float
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxE, positions_T, train: bool = False, cache=None, cache_index=None):
    layer_norm = lambda name: nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype, use_fast_variance=False, name=name)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    attended, new_cache = GPT2Attention(self.num_heads, self.scale, self.dtype, name="attn")(
        layer_norm("ln_1")(x_BxTxE), positions_T, cache, cache_index)
    x_BxTxE = x_BxTxE + drop(attended)
    hidden = nn.Dense(self.inner, dtype=self.dtype, name="c_fc")(layer_norm("ln_2")(x_BxTxE))
    hidden = nn.Dense(x_BxTxE.shape[-1], dtype=self.dtype, name="c_proj")(ACTIVATIONS[self.activation](hidden))
    x_BxTxE = x_BxTxE + drop(hidden)
    return x_BxTxE if cache is None else (x_BxTxE, new_cache)


class GPT2(nn.Module):
  """GPT-2 (`GPT2LMHeadModel`) over a vocabulary of `num_classes` tokens; defaults are GPT2Config's."""

  num_classes: int
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int = 0  # 0: 4 * n_embd (transformers' None).
  activation_function: str = "gelu_new"
  layer_norm_epsilon: float = 1e-5
  scale_attn_weights: bool = True
  scale_attn_by_inverse_layer_idx: bool = False
  tie_word_embeddings: bool = True
  dropout: float = 0.0
  dtype: str = "float32"

  integer_inputs: ClassVar[bool] = True
  positions: ClassVar[str] = "learned"
  ATTRIBUTE_RANGES: ClassVar[dict] = {
      "n_positions": attributes.POSITIVE_INT, "n_embd": attributes.POSITIVE_INT,
      "n_layer": attributes.POSITIVE_INT, "n_head": attributes.POSITIVE_INT,
      "n_inner": attributes.NON_NEGATIVE_INT, "activation_function": attributes.Choice(*ACTIVATIONS),
      "layer_norm_epsilon": _POSITIVE, "dropout": attributes.PROBABILITY,
      "rules": (attributes.Rule(lambda a: a.get("n_embd", 768) % a.get("n_head", 12) == 0,
                                "n_embd must divide into n_head heads"),)}

  @property
  def max_len(self) -> int:
    return self.n_positions

  def setup(self):
    head_dim = self.n_embd // self.n_head
    self.wte = nn.Embed(self.num_classes, self.n_embd, dtype=self.dtype)
    self.wpe = nn.Embed(self.n_positions, self.n_embd, dtype=self.dtype)
    self.embed_dropout = nn.Dropout(self.dropout)
    layers = []
    for index in range(self.n_layer):
      scale = head_dim ** -0.5 if self.scale_attn_weights else 1.0
      if self.scale_attn_by_inverse_layer_idx:
        scale /= float(index + 1)
      layers.append(GPT2Block(self.n_head, self.n_inner or 4 * self.n_embd, self.activation_function,
                              self.layer_norm_epsilon, scale, self.dropout, self.dtype))
    self.layers = layers
    self.final_norm = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, use_fast_variance=False)
    if not self.tie_word_embeddings:
      self.lm_head = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype)
    self.head_embedding, self.head_kernel = Tap(), Tap()

  def _logits(self, x_BxTxE):
    x_BxTxE = self.final_norm(x_BxTxE)
    logits = self.wte.attend(x_BxTxE) if self.tie_word_embeddings else self.lm_head(x_BxTxE)
    return logits.astype(jnp.float32)

  def _tap_head(self):
    if self.tie_word_embeddings:
      self.head_embedding(self.wte.embedding)
    else:
      self.head_kernel(self.lm_head.variables["params"]["kernel"])

  def __call__(self, tokens_BxT, train: bool = False):
    positions_T = jnp.arange(tokens_BxT.shape[1])
    x_BxTxE = self.wte(tokens_BxT.astype(jnp.int32)) + self.wpe(positions_T)[None]
    x_BxTxE = self.embed_dropout(x_BxTxE, deterministic=not train)
    for layer in self.layers:
      x_BxTxE = layer(x_BxTxE, positions_T, train)
    logits = self._logits(x_BxTxE)
    self._tap_head()
    return logits

  def decode(self, tokens_BxT, cache, cache_index):
    """Logits [B, T, V] of T new tokens at positions cache_index..cache_index+T-1, and the cache."""
    positions_T = cache_index + jnp.arange(tokens_BxT.shape[1])
    x_BxTxE = self.wte(tokens_BxT.astype(jnp.int32)) + self.wpe(positions_T)[None]
    new_cache = []
    for layer, layer_cache in zip(self.layers, cache):
      x_BxTxE, layer_cache = layer(x_BxTxE, positions_T, False, layer_cache, cache_index)
      new_cache.append(layer_cache)
    return self._logits(x_BxTxE), new_cache

  @nn.nowrap
  def init_cache(self, batch_size: int, length: int, dtype=jnp.float32) -> list[Any]:
    """An empty KV cache for `length` positions: per layer, (keys, values) [B, length, heads, head_dim]."""
    return _empty_cache(self.n_layer, batch_size, length, self.n_head, self.n_embd // self.n_head, dtype)


# --- Llama, Qwen2, Qwen3 -----------------------------------------------------------------------------


class RotaryAttention(nn.Module):
  num_heads: int
  num_kv_heads: int
  head_dim: int
  inv_freq: tuple[float, ...]  # [head_dim / 2], float32 values.
  qkv_bias: bool
  o_bias: bool
  qk_norm: bool
  epsilon: float
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxD, positions_T, cache=None, cache_index=None):
    batch, length = x_BxTxD.shape[:2]
    dense = lambda features, bias, name: nn.Dense(features, use_bias=bias, dtype=self.dtype, name=name)
    q = dense(self.num_heads * self.head_dim, self.qkv_bias, "q_proj")(x_BxTxD)
    k = dense(self.num_kv_heads * self.head_dim, self.qkv_bias, "k_proj")(x_BxTxD)
    v = dense(self.num_kv_heads * self.head_dim, self.qkv_bias, "v_proj")(x_BxTxD)
    q = q.reshape(batch, length, self.num_heads, self.head_dim)
    k = k.reshape(batch, length, self.num_kv_heads, self.head_dim)
    v = v.reshape(batch, length, self.num_kv_heads, self.head_dim)
    if self.qk_norm:  # Qwen3: over each head's channels, before the rotation.
      q = RMSNorm(self.epsilon, self.dtype, name="q_norm")(q)
      k = RMSNorm(self.epsilon, self.dtype, name="k_norm")(k)
    q = apply_rotary(q, self.inv_freq, positions_T)
    k = apply_rotary(k, self.inv_freq, positions_T)
    keys, values, key_positions, new_cache = _update_cache(cache, cache_index, k, v, positions_T)
    out = _attend(q, keys, values, positions_T, key_positions, self.head_dim ** -0.5, self.dtype)
    return dense(x_BxTxD.shape[-1], self.o_bias, "o_proj")(out), new_cache


class RotaryBlock(nn.Module):
  num_heads: int
  num_kv_heads: int
  head_dim: int
  inv_freq: tuple[float, ...]
  qkv_bias: bool
  o_bias: bool
  qk_norm: bool
  intermediate_size: int
  activation: str
  mlp_bias: bool
  epsilon: float
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxD, positions_T, train: bool = False, cache=None, cache_index=None):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    attention = RotaryAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.inv_freq, self.qkv_bias,
                                self.o_bias, self.qk_norm, self.epsilon, self.dtype, name="self_attn")
    attended, new_cache = attention(RMSNorm(self.epsilon, self.dtype, name="input_layernorm")(x_BxTxD),
                                    positions_T, cache, cache_index)
    x_BxTxD = x_BxTxD + drop(attended)
    normed = RMSNorm(self.epsilon, self.dtype, name="post_attention_layernorm")(x_BxTxD)
    dense = lambda features, name: nn.Dense(features, use_bias=self.mlp_bias, dtype=self.dtype, name=name)
    gate = dense(self.intermediate_size, "gate_proj")(normed)
    up = dense(self.intermediate_size, "up_proj")(normed)
    hidden = dense(x_BxTxD.shape[-1], "down_proj")(ACTIVATIONS[self.activation](gate) * up)
    x_BxTxD = x_BxTxD + drop(hidden)
    return x_BxTxD if cache is None else (x_BxTxD, new_cache)


def _rotary_ranges(default_hidden: int, default_heads: int) -> dict:
  def heads_fit(a):
    heads, kv_heads = a.get("num_attention_heads", default_heads), a.get("num_key_value_heads", 0)
    return not kv_heads or heads % kv_heads == 0

  def head_dim_fits(a):
    head_dim = a.get("head_dim", 0)
    if head_dim:
      return head_dim % 2 == 0
    hidden, heads = a.get("hidden_size", default_hidden), a.get("num_attention_heads", default_heads)
    return hidden % heads == 0 and (hidden // heads) % 2 == 0

  return {
      "hidden_size": attributes.POSITIVE_INT, "intermediate_size": attributes.POSITIVE_INT,
      "num_hidden_layers": attributes.POSITIVE_INT, "num_attention_heads": attributes.POSITIVE_INT,
      "num_key_value_heads": attributes.NON_NEGATIVE_INT, "head_dim": attributes.NON_NEGATIVE_INT,
      "max_position_embeddings": attributes.POSITIVE_INT, "rms_norm_eps": _POSITIVE, "rope_theta": _POSITIVE,
      "rope_type": attributes.Choice(*ROPE_TYPES), "rope_factor": _POSITIVE,
      "rope_low_freq_factor": _POSITIVE, "rope_high_freq_factor": _POSITIVE,
      "rope_original_max_position_embeddings": attributes.POSITIVE_INT,
      "hidden_act": attributes.Choice(*ACTIVATIONS), "dropout": attributes.PROBABILITY,
      "rules": (attributes.Rule(heads_fit, "num_attention_heads must be a multiple of num_key_value_heads"),
                attributes.Rule(head_dim_fits, "head_dim (or hidden_size / num_attention_heads when head_dim "
                                "is 0) must be a whole, even number"),
                attributes.Rule(lambda a: a.get("rope_type", "default") != "llama3" or a.get(
                    "rope_high_freq_factor", 4.0) != a.get("rope_low_freq_factor", 1.0),
                    "rope_type='llama3' needs rope_high_freq_factor != rope_low_freq_factor"))}


class _RotaryDecoder(nn.Module):
  """The Llama-family decoder; subclasses say which projections have biases and whether q/k are normed."""

  num_classes: int
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 0  # 0: num_attention_heads (transformers' None).
  head_dim: int = 0  # 0: hidden_size // num_attention_heads (transformers' None).
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # transformers' `rope_scaling` / `rope_parameters`: rope_type and its parameters.
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position_embeddings: int = 8192
  hidden_act: str = "silu"
  tie_word_embeddings: bool = False
  dropout: float = 0.0
  dtype: str = "float32"

  integer_inputs: ClassVar[bool] = True
  positions: ClassVar[str] = "rotary"
  QK_NORM: ClassVar[bool] = False

  def _biases(self) -> tuple[bool, bool, bool]:
    """(q/k/v projections, output projection, MLP) have biases."""
    return False, False, False

  @property
  def max_len(self) -> int:
    return self.max_position_embeddings

  @property
  def kv_heads(self) -> int:
    return self.num_key_value_heads or self.num_attention_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads

  def setup(self):
    inv_freq = tuple(float(f) for f in rope_frequencies(
        self.head_size, self.rope_theta, self.rope_type, self.rope_factor, self.rope_low_freq_factor,
        self.rope_high_freq_factor, self.rope_original_max_position_embeddings))
    qkv_bias, o_bias, mlp_bias = self._biases()
    self.embed_tokens = nn.Embed(self.num_classes, self.hidden_size, dtype=self.dtype)
    layers = []
    for _ in range(self.num_hidden_layers):
      layers.append(RotaryBlock(self.num_attention_heads, self.kv_heads, self.head_size, inv_freq, qkv_bias, o_bias,
                                self.QK_NORM, self.intermediate_size, self.hidden_act, mlp_bias, self.rms_norm_eps,
                                self.dropout, self.dtype))
    self.layers = layers
    self.final_norm = RMSNorm(self.rms_norm_eps, self.dtype)
    if not self.tie_word_embeddings:
      self.lm_head = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype)
    self.head_embedding, self.head_kernel = Tap(), Tap()

  def _logits(self, x_BxTxD):
    x_BxTxD = self.final_norm(x_BxTxD)
    logits = self.embed_tokens.attend(x_BxTxD) if self.tie_word_embeddings else self.lm_head(x_BxTxD)
    return logits.astype(jnp.float32)

  def _tap_head(self):
    if self.tie_word_embeddings:
      self.head_embedding(self.embed_tokens.embedding)
    else:
      self.head_kernel(self.lm_head.variables["params"]["kernel"])

  def __call__(self, tokens_BxT, train: bool = False):
    positions_T = jnp.arange(tokens_BxT.shape[1])
    x_BxTxD = self.embed_tokens(tokens_BxT.astype(jnp.int32))
    for layer in self.layers:
      x_BxTxD = layer(x_BxTxD, positions_T, train)
    logits = self._logits(x_BxTxD)
    self._tap_head()
    return logits

  def decode(self, tokens_BxT, cache, cache_index):
    """Logits [B, T, V] of T new tokens at positions cache_index..cache_index+T-1, and the cache."""
    positions_T = cache_index + jnp.arange(tokens_BxT.shape[1])
    x_BxTxD = self.embed_tokens(tokens_BxT.astype(jnp.int32))
    new_cache = []
    for layer, layer_cache in zip(self.layers, cache):
      x_BxTxD, layer_cache = layer(x_BxTxD, positions_T, False, layer_cache, cache_index)
      new_cache.append(layer_cache)
    return self._logits(x_BxTxD), new_cache

  @nn.nowrap
  def init_cache(self, batch_size: int, length: int, dtype=jnp.float32) -> list[Any]:
    """An empty KV cache for `length` positions: per layer, (keys, values) [B, length, kv heads, head_dim].

    Grouped-query attention caches the num_key_value_heads heads only.
    """
    return _empty_cache(self.num_hidden_layers, batch_size, length, self.kv_heads, self.head_size, dtype)


class Llama(_RotaryDecoder):
  """Llama 2 / 3 (`LlamaForCausalLM`); defaults are LlamaConfig's (Llama-2-7B)."""

  attention_bias: bool = False  # q, k, v and o projections.
  mlp_bias: bool = False

  ATTRIBUTE_RANGES: ClassVar[dict] = _rotary_ranges(4096, 32)

  def _biases(self):
    return self.attention_bias, self.attention_bias, self.mlp_bias


class Qwen2(_RotaryDecoder):
  """Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): biases on q, k, v; defaults are Qwen2Config's."""

  hidden_size: int = 4096
  intermediate_size: int = 22016
  num_key_value_heads: int = 32
  max_position_embeddings: int = 32768

  ATTRIBUTE_RANGES: ClassVar[dict] = _rotary_ranges(4096, 32)

  def _biases(self):
    return True, False, False


class Qwen3(_RotaryDecoder):
  """Qwen3 (`Qwen3ForCausalLM`): RMSNorm on each head's queries and keys; defaults are Qwen3Config's."""

  intermediate_size: int = 22016
  num_key_value_heads: int = 32
  head_dim: int = 128
  max_position_embeddings: int = 32768
  attention_bias: bool = False  # q, k, v and o projections.

  QK_NORM: ClassVar[bool] = True
  ATTRIBUTE_RANGES: ClassVar[dict] = _rotary_ranges(4096, 32)

  def _biases(self):
    return self.attention_bias, self.attention_bias, False


# kd model names (kd.models.MODELS) -> class.
FAMILIES = {"gpt2": GPT2, "llama": Llama, "qwen2": Qwen2, "qwen3": Qwen3}
