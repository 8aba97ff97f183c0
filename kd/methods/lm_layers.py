"""What the hidden-state and attention methods of language models share.

`kd.methods.lm_hidden` (DistillKit's layer mapping), `lm_minilm` (MiniLM's self-attention relations)
and `lm_tinybert` (TinyBERT's layer losses) read a transformer's layers through tap points
(`kd.features`), never through model code:

  block outputs (hidden states)   `layers_<i>` of kd's `transformer_lm` and of every Hugging Face family
                                  (`kd.models.hf_decoders`); `final_norm` after the last block
  token embeddings                `embed` (transformer_lm), `wte` (gpt2), `embed_tokens` (llama, qwen2/3)
  queries, keys and values        transformer_lm: `layers_<i>/attention/qkv`, one [B, L, 3, H, D] tap;
                                  gpt2: `layers_<i>/attn/c_attn`, one [B, L, 3C] tap (q | k | v);
                                  llama, qwen2: `layers_<i>/self_attn/{q,k,v}_proj`, [B, L, C] each;
                                  qwen3: `.../q_norm`, `.../k_norm` ([B, L, H, D], its normed q and k)

The projections are Dense outputs, before the rotary embedding: where the model's own attention
scores are needed (TinyBERT), `rotate` applies the rotation (kd's and Hugging Face's rotate-half
layout, theta 10000 by default) from the same positions 0..L-1 the model uses.

A layer map pairs student layers with teacher layers by their index among the selected features
(`student_layers[i]` with `teacher_layers[i]`), negative indices counting from the end; () maps the
student's M layers uniformly onto the teacher's N, TinyBERT's g(m) = m * N / M (Jiao et al. 2020,
Section 3.1), so the student's last layer learns the teacher's last.

Token weights: every term is a mean over the real token positions of the batch (`batch["mask"]`, and
`batch["loss_mask"]` where a batch preparation sets it), as DistillKit weights its hidden-state losses
by the positions that carry labels; padding positions are excluded from every term, as rows and, in
attention and relation matrices, as columns too. Attention and relation matrices are causal: row i
covers positions j <= i only, the ones the decoder's attention sees.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from kd import features as features_lib
from kd.errors import ConfigError
from kd.methods import lm_common
from kd.models import hf_decoders


def token_weights(batch) -> jax.Array:
  """[B, L] float: 1 at a real token position (mask, and loss_mask when set), 0 at padding."""
  tokens_BxL = batch["tokens"]
  real_BxL = batch["mask"] if "mask" in batch else jnp.ones(tokens_BxL.shape, bool)
  if "loss_mask" in batch:
    real_BxL = real_BxL & batch["loss_mask"]
  return jnp.asarray(real_BxL).astype(jnp.float32)


def key_mask(batch) -> jax.Array:
  """[B, L] bool: the positions a row of an attention or relation matrix may read (real tokens)."""
  tokens_BxL = batch["tokens"]
  return jnp.asarray(batch["mask"] if "mask" in batch else jnp.ones(tokens_BxL.shape, bool)).astype(bool)


def masked_token_mean(values_BxL: jax.Array, weights_BxL: jax.Array) -> jax.Array:
  return jnp.sum(values_BxL * weights_BxL) / jnp.maximum(jnp.sum(weights_BxL), 1.0)


# --- Layer maps ---------------------------------------------------------------------------------------


def _is_index(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_layer_lists(params: dict[str, Any], where: str) -> None:
  """student_layers / teacher_layers: tuples of integer indices of the same length."""
  student_layers, teacher_layers = params["student_layers"], params["teacher_layers"]
  for key, layers in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
    if not isinstance(layers, (tuple, list)) or not all(_is_index(layer) for layer in layers):
      raise ConfigError(f"{where}.{key}={layers!r} must be a tuple of layer indices (negative counts from "
                        "the end), or () for the uniform map g(m) = m * N / M")
  if len(student_layers) != len(teacher_layers):
    raise ConfigError(f"{where}: student_layers={tuple(student_layers)} has {len(student_layers)} entries but "
                      f"teacher_layers={tuple(teacher_layers)} has {len(teacher_layers)}; the layer map pairs "
                      "them one to one: give both the same length (or both () for the uniform map)")


def uniform_layer_map(num_student: int, num_teacher: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """TinyBERT's g(m) = m * N / M over 1-based layers, as 0-based (student, teacher) index tuples.

  Student layer i (0-based) learns teacher layer (i + 1) * N // M - 1: 12 -> 4 gives (2, 5, 8, 11), the
  paper's g(m) = 3m; equal depths give the identity (DistillKit's `layer_mapping: all`).
  """
  teacher = tuple(max((i + 1) * num_teacher // num_student - 1, 0) for i in range(num_student))
  return tuple(range(num_student)), teacher


def resolve_layer_map(params: dict[str, Any], num_student: int, num_teacher: int
                      ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(student indices, teacher indices), non-negative: the params' map, or the uniform one."""
  student_layers, teacher_layers = tuple(params["student_layers"]), tuple(params["teacher_layers"])
  if not student_layers:
    return uniform_layer_map(num_student, num_teacher)
  return (tuple(i % num_student for i in student_layers), tuple(i % num_teacher for i in teacher_layers))


def check_layer_indices(key: str, layers: Sequence[int], paths: Sequence[str], where: str, what: str,
                        shown: Any = None) -> None:
  """Raises ConfigError when an index names no layer among `paths` (listed in the message).

  `shown` is the parameter's value as the message quotes it (default: `layers` as a tuple).
  """
  for layer in layers:
    if not -len(paths) <= layer < len(paths):
      listed = ", ".join(f"{i}: {path}" for i, path in enumerate(paths))
      raise ConfigError(f"{where}.{key}={tuple(layers) if shown is None else shown!r} names layer {layer}, "
                        "which does not exist: the "
                        f"{what} has {len(paths)} selected layers ({listed}); use indices 0..{len(paths) - 1} "
                        "(or negative from the end)")


def pattern_groups(patterns: Sequence[str], paths: Sequence[str], where: str) -> list[list[str]]:
  """The paths each pattern selects, pattern by pattern (the roles of a method's feature patterns)."""
  return [features_lib.select([pattern], list(paths), where) for pattern in patterns]


def check_disjoint(groups: Sequence[Sequence[str]], patterns: Sequence[str], where: str, key: str) -> None:
  seen: dict[str, str] = {}
  for pattern, group in zip(patterns, groups):
    for path in group:
      if path in seen:
        raise ConfigError(f"{where}.{key}: tap point {path} is selected by both {seen[path]!r} and {pattern!r}; "
                          "each pattern has its own role, so make them select different tap points")
      seen[path] = pattern


# --- Queries, keys and values -------------------------------------------------------------------------


def projection_shapes(shapes: Sequence[tuple[int, ...]], count: int) -> list[tuple[int, int]]:
  """(width, heads) of the first `count` of q, k, v in one layer's taps; heads 0 where the tap is flat.

  One tap: kd's fused [B, L, 3, H, D], or GPT-2's [B, L, 3C] (q | k | v on the last axis). `count`
  taps: one per projection, [B, L, C] (a Dense output) or [B, L, H, D] (Qwen3's q_norm / k_norm).
  Raises ValueError naming the shapes it cannot read.
  """
  if len(shapes) == 1 and count > 1:
    (shape,) = shapes
    if len(shape) == 5 and shape[2] == 3:
      return [(shape[3] * shape[4], shape[3])] * count
    if len(shape) == 3 and shape[2] % 3 == 0:
      return [(shape[2] // 3, 0)] * count
    raise ValueError(f"a fused q/k/v tap must be [B, L, 3, H, D] or [B, L, 3C], not {shape}")
  if len(shapes) != count:
    raise ValueError(f"{len(shapes)} taps for {count} projections")
  widths = []
  for shape in shapes:
    if len(shape) == 3:
      widths.append((shape[2], 0))
    elif len(shape) == 4:
      widths.append((shape[2] * shape[3], shape[2]))
    else:
      raise ValueError(f"a q, k or v tap must be [B, L, C] or [B, L, H, D], not {shape}")
  return widths


def projections(arrays: Sequence[jax.Array], count: int) -> list[jax.Array]:
  """The first `count` of q, k, v of one layer, each [B, L, C] float32 (heads side by side)."""
  if len(arrays) == 1 and count > 1:
    (fused,) = arrays
    if fused.ndim == 5:
      parts = [fused[:, :, i] for i in range(count)]
    else:
      parts = jnp.split(fused, 3, axis=-1)[:count]
  else:
    parts = list(arrays)
  return [part.reshape(part.shape[:2] + (-1,)).astype(jnp.float32) for part in parts]


def rotate(x_BxLxHxD: jax.Array, theta: float) -> jax.Array:
  """The rotary embedding at positions 0..L-1 with base `theta`; 0 leaves x as it is (no rotary)."""
  if not theta:
    return x_BxLxHxD
  inv_freq = hf_decoders.rope_frequencies(x_BxLxHxD.shape[-1], theta)
  return hf_decoders.apply_rotary(x_BxLxHxD, inv_freq, jnp.arange(x_BxLxHxD.shape[1]))


def causal_valid(key_mask_BxL: jax.Array) -> jax.Array:
  """[B, 1, L, L] bool: row i may read column j when j <= i and token j is real."""
  length = key_mask_BxL.shape[1]
  causal_LxL = jnp.tril(jnp.ones((length, length), bool))
  return causal_LxL[None, None] & key_mask_BxL[:, None, None, :]


def check_weights(params: dict[str, Any], keys: Sequence[str], where: str) -> None:
  for key in keys:
    value = params[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
      raise ConfigError(f"{where}.{key}={value!r} must be a number >= 0")
  if not any(params[key] > 0 for key in keys):
    raise ConfigError(f"{where}: {', '.join(keys)} are all 0, so nothing is learned; set one > 0")


def check_lm_terms(params: dict[str, Any], where: str, feature_weights: Sequence[str]) -> None:
  """The next-token terms (`kd.methods.lm_common`) and the method's own weights: all >= 0, one > 0."""
  check_weights(params, ("kd_weight", "ce_weight", *feature_weights), where)
  # lm_common's own check wants kd or ce on; here a feature term may be the only one.
  lm_common.check_divergence({**params, "kd_weight": params["kd_weight"] or 1.0}, where)


def attention_layers(patterns: Sequence[str], paths: Sequence[str], count: int, where: str, key: str
                     ) -> list[list[str]]:
  """The q/k/v taps of each layer: one fused pattern (a tap per layer), or `count` patterns (q, k[, v]).

  With `count` patterns, the i-th layer is the i-th path of each: the patterns select the queries of
  every layer, then the keys, then the values.
  """
  groups = pattern_groups(patterns, paths, f"{where}.{key}")
  if len(groups) == 1:
    return [[path] for path in groups[0]]
  if len(groups) != count or len({len(group) for group in groups}) != 1:
    sizes = ", ".join(f"{pattern!r}: {len(group)}" for pattern, group in zip(patterns, groups))
    raise ConfigError(f"{where}.{key}: give one pattern of fused q/k/v taps, or {count} patterns that select "
                      f"the same number of layers ({'queries, keys, values' if count == 3 else 'queries, keys'}); "
                      f"got {sizes}")
  return [list(layer) for layer in zip(*groups)]
