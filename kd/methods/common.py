"""Helpers that several distillation methods share: config checks, feature pairing, loss terms.

A method module binds losses to the outputs it reads; what every feature or relation method needs
in the same form lives here, so that a fix to a check or a term reaches all of them:

  - config checks that raise `ConfigError` naming the key and the fix (`check_weights`,
    `check_feature_patterns`, `check_feature_count`, ...), before anything is compiled;
  - `flatten_examples`, for methods that compare the examples of a batch as vectors;
  - `feature_pairs`: the selected (student, teacher) features, the teacher's without gradient;
  - the loss terms most methods add to their own: `cross_entropy` on the labels and the optional
    Hinton KD term (`kd_term`, `add_kd_term`);
  - resolution matching for methods that compare maps of different sizes (`poolable`,
    `adaptive_average_pool`, `match_resolution`), as PyTorch's `adaptive_avg_pool2d` computes it;
  - token features [B, N, C] of transformers and MLP-Mixers (`as_tokens`, `token_pair_shapes`,
    `check_token_pairs`, `reject_token_features`): which methods accept them, and how a
    [B, H, W, C] map pairs with tokens.
"""

from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from kd import losses
from kd.errors import ConfigError

# Config checks.


def is_number(value) -> bool:
  """Whether `value` is an int or float; bools are rejected, as `True` as a weight is a typo."""
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_weights(params: dict[str, Any], keys: tuple[str, ...], where: str, *,
                  all_zero_ok: bool = True) -> None:
  """Raises ConfigError unless each of `params[keys]` is a number >= 0 (NaN fails too).

  Args:
    params: the method's parameters.
    keys: the names of the loss weights to check.
    where: the config path of the method block, for the message.
    all_zero_ok: False where all the weights at 0 would leave a loss of 0 that trains nothing.
  """
  for key in keys:
    if not is_number(params[key]) or not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]!r} must be a number >= 0")
  if not all_zero_ok and all(params[key] == 0 for key in keys):
    names = " and ".join([", ".join(keys[:-1]), keys[-1]]) if len(keys) > 1 else keys[0]
    quantifier = "both" if len(keys) == 2 else "all"
    raise ConfigError(f"{where}: {names} are {quantifier} 0, so nothing is learned; set one > 0")


def check_non_negative(params: dict[str, Any], keys: Iterable[str], where: str) -> None:
  """Raises ConfigError unless each of `params[keys]` is >= 0 (NaN fails too).

  Unlike `check_weights`, the value's type is not checked, and the message does not ask for a
  number.
  """
  for key in keys:
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")


def check_positive(params: dict[str, Any], keys: Iterable[str], where: str) -> None:
  """Raises ConfigError unless each of `params[keys]` is > 0, e.g. a temperature that divides."""
  for key in keys:
    if not params[key] > 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be > 0")


def check_feature_patterns(params: dict[str, Any], where: str, example: tuple[str, ...]) -> None:
  """Raises ConfigError unless student_features and teacher_features pair up one to one.

  Each must be a non-empty tuple (or list) of non-empty pattern strings: a bare string would be
  read as one pattern per character. The i-th student pattern is compared with the i-th teacher
  pattern, so both need the same length.

  Args:
    params: the method's parameters, with `student_features` and `teacher_features`.
    where: the config path of the method block, for the message.
    example: patterns that fit the method's defaults, shown in the message as the fix.
  """
  for key in ("student_features", "teacher_features"):
    patterns = params[key]
    if (isinstance(patterns, str) or not isinstance(patterns, (tuple, list)) or not patterns
        or not all(isinstance(p, str) and p for p in patterns)):
      raise ConfigError(f"{where}.{key}={patterns!r} must be a non-empty tuple of tap-point patterns, "
                        f"e.g. {example!r}")
  if len(params["student_features"]) != len(params["teacher_features"]):
    raise ConfigError(f"{where}: student_features {tuple(params['student_features'])} and "
                      f"teacher_features {tuple(params['teacher_features'])} must pair up one to one: "
                      "the i-th of each are compared, so give the same number of patterns")


def check_feature_count(student_shapes: dict[str, Any], teacher_shapes: dict[str, Any],
                        where: str) -> None:
  """Raises ConfigError if the patterns resolved to different numbers of tap points.

  Equal numbers of patterns can still select different numbers of features (a glob can match
  several tap points), which only shows once the models' features are known.
  """
  if len(student_shapes) != len(teacher_shapes):
    raise ConfigError(f"{where}: student_features selected {list(student_shapes)} and teacher_features "
                      f"{list(teacher_shapes)}; the i-th of each are compared, so they must select the "
                      "same number of tap points")


def check_flattened_features(params, student_shapes, teacher_shapes, where: str) -> None:
  """`check_features` for methods that flatten each feature per example: any shapes work.

  Only the numbers of selected tap points must agree, as the i-th of each are compared.
  """
  del params
  check_feature_count(student_shapes, teacher_shapes, where)


# Features and loss terms.


def feature_pairs(student_out, teacher_out) -> list[tuple[jax.Array, jax.Array]]:
  """(student, teacher) features in pattern order, the teacher's under `jax.lax.stop_gradient`.

  Only the student learns: the teacher's side is a target. A loss called on outputs whose
  features do not pair up (none, or different numbers) raises instead of silently dropping pairs.
  """
  student = student_out.get("features", {})
  teacher = teacher_out.get("features", {})
  if not student or len(student) != len(teacher):
    raise ConfigError(f"method: student_features selected {list(student)} and teacher_features "
                      f"{list(teacher)}; they must select the same number of tap points (> 0)")
  return [(s, jax.lax.stop_gradient(t)) for s, t in zip(student.values(), teacher.values())]


def flatten_examples(features: jax.Array) -> jax.Array:
  """[B, ...] -> [B, N] in float32, for methods that compare examples as vectors."""
  return features.reshape(features.shape[0], -1).astype(jnp.float32)


def cross_entropy(student_logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The batch mean of the cross-entropy with the integer labels: the supervised term."""
  return jnp.mean(losses.cross_entropy_with_integer_labels(student_logits, labels))


def kd_term(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """Hinton et al.'s KD term, T^2 * mean KL(softmax(teacher/T) || softmax(student/T)).

  The T^2 keeps the gradient's scale independent of the temperature (Hinton, Vinyals & Dean,
  "Distilling the Knowledge in a Neural Network", arXiv:1503.02531, Section 2). The teacher's
  logits are a target: no gradient flows into them.
  """
  return temperature**2 * jnp.mean(losses.kl_divergence_with_logits(
      student_logits, jax.lax.stop_gradient(teacher_logits), temperature=temperature))


def add_kd_term(total: jax.Array, terms: dict[str, Any], student_logits: jax.Array,
                teacher_logits: jax.Array, *, kd_weight: float,
                temperature: float) -> tuple[jax.Array, dict[str, Any]]:
  """(total + kd_weight * `kd_term`, terms with "kd") for methods whose KD term is optional.

  With kd_weight = 0 the KL is not computed at all and no "kd" metric is reported, so a method
  run without it logs only the terms it trains on.
  """
  if not kd_weight:
    return total, terms
  kd = kd_term(student_logits, teacher_logits, temperature)
  return total + kd_weight * kd, {**terms, "kd": kd}


# Resolution matching, for methods that compare maps of different sizes.


def poolable(shape_a, shape_b) -> bool:
  """Whether one of two [B,H,W,C] maps can be average-pooled to the other's height and width."""
  (_, a_h, a_w, _), (_, b_h, b_w, _) = shape_a, shape_b
  return (a_h >= b_h and a_w >= b_w) or (a_h <= b_h and a_w <= b_w)


def _pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] averaging weights of PyTorch's adaptive average pooling along one axis.

  Output i averages inputs floor(i * n / m) to ceil((i + 1) * n / m) - 1, so for n a multiple of m
  it is plain average pooling with window and stride n / m.
  """
  weights = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = -(-((i + 1) * size_in) // size_out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_average_pool(x_BxHxWxC: jax.Array, height: int, width: int) -> jax.Array:
  """`torch.nn.functional.adaptive_avg_pool2d` for NHWC maps: [B, H, W, C] -> [B, height, width, C]."""
  _, in_height, in_width, _ = x_BxHxWxC.shape
  if (in_height, in_width) == (height, width):
    return x_BxHxWxC
  rows_HoxH = jnp.asarray(_pool_matrix(in_height, height), x_BxHxWxC.dtype)
  cols_WoxW = jnp.asarray(_pool_matrix(in_width, width), x_BxHxWxC.dtype)
  return jnp.einsum("ih,jw,bhwc->bijc", rows_HoxH, cols_WoxW, x_BxHxWxC)


def match_resolution(a_BxHxWxC: jax.Array, b_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(a, b) with the larger of the two average-pooled to the smaller's height and width."""
  (_, a_h, a_w, _), (_, b_h, b_w, _) = a_BxHxWxC.shape, b_BxHxWxC.shape
  if a_h >= b_h and a_w >= b_w:
    return adaptive_average_pool(a_BxHxWxC, b_h, b_w), b_BxHxWxC
  if a_h <= b_h and a_w <= b_w:
    return a_BxHxWxC, adaptive_average_pool(b_BxHxWxC, a_h, a_w)
  raise ValueError(f"cannot pool maps of shapes {a_BxHxWxC.shape} and {b_BxHxWxC.shape} to one "
                   "resolution")


# Token features [B, N, C]: a ViT's or MLP-Mixer's blocks output one C-vector per token.

# The methods whose math is defined on token features (see each module's docstring); the others
# name these in their error.
TOKEN_FEATURE_METHODS = ("fitnets", "at", "nst", "sp", "cc", "rkd", "pkt", "crd", "ab")


def is_tokens(shape) -> bool:
  """Whether a feature shape is [B, N, C] (tokens), as opposed to [B, H, W, C] or [B, D]."""
  return len(shape) == 3


def as_tokens(feature: jax.Array, special_tokens: int = 0) -> jax.Array:
  """[B, N, C] tokens without their first `special_tokens`, or a [B, H, W, C] map as [B, H*W, C].

  A map's positions become tokens in row-major order, the order in which a ViT's patch embedding
  (a strided convolution, then a reshape) lays out its patch tokens, so position (i, j) of a map
  pairs with the patch token of the same image region when the grids agree. The leading tokens
  dropped are a ViT's class token (1) or DeiT's class and distillation tokens (2), which no
  position of a map corresponds to.
  """
  if feature.ndim == 4:
    batch, height, width, channels = feature.shape
    return feature.reshape(batch, height * width, channels)
  return feature[:, special_tokens:]


def token_pair_shapes(student_shape, teacher_shape, student_special_tokens: int = 0,
                      teacher_special_tokens: int = 0):
  """([N_s, C_s], [N_t, C_t]) the pair compares as tokens, or None if it is not a token pair.

  A pair is a token pair when one side is [B, N, C] and the other [B, N', C'] or [B, H, W, C']
  (the map is read as H*W tokens, `as_tokens`); special tokens are dropped from token sides only.
  """
  if not (is_tokens(student_shape) or is_tokens(teacher_shape)):
    return None
  if len(student_shape) not in (3, 4) or len(teacher_shape) not in (3, 4):
    return None

  def tokens(shape, special):
    if len(shape) == 4:
      return (shape[1] * shape[2], shape[3])
    return (shape[1] - special, shape[2])

  return tokens(student_shape, student_special_tokens), tokens(teacher_shape, teacher_special_tokens)


def check_special_tokens(params: dict[str, Any], where: str) -> None:
  """Raises ConfigError unless student_special_tokens and teacher_special_tokens are integers >= 0."""
  for key in ("student_special_tokens", "teacher_special_tokens"):
    value = params[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(f"{where}.{key}={value!r} must be an integer >= 0: the leading tokens (a class "
                        "token: 1; DeiT's class and distillation tokens: 2) dropped before comparing")


def check_token_pairs(params: dict[str, Any], student_shapes: dict[str, Any],
                      teacher_shapes: dict[str, Any], where: str, method: str) -> None:
  """Raises ConfigError unless every token pair has the same number of tokens on both sides.

  Pairs that are not token pairs are left to the method's own checks. Special tokens may only be
  dropped from token features: a map has none, and a count that leaves no token is an error.

  Args:
    params: the method's parameters, with `student_special_tokens` and `teacher_special_tokens`.
    student_shapes, teacher_shapes: {path: shape} of the selected features, paired in order.
    where: the config path of the method block, for the message.
    method: the method's name, for the message.
  """
  # Missing keys count as 0, for callers that check shapes without the method's parameters.
  s_special = params.get("student_special_tokens", 0)
  t_special = params.get("teacher_special_tokens", 0)
  for who, key, special, shapes in (("student", "student_special_tokens", s_special, student_shapes),
                                    ("teacher", "teacher_special_tokens", t_special, teacher_shapes)):
    for path, shape in shapes.items():
      if special and is_tokens(shape) and shape[1] <= special:
        raise ConfigError(f"{where}.{key}={special} drops every token of {who} feature {path} {shape[1:]}: "
                          "set it to the number of leading special tokens (class token: 1, DeiT: 2)")
    if special and not any(is_tokens(shape) for shape in shapes.values()):
      listed = ", ".join(f"{path} {shape[1:]}" for path, shape in shapes.items())
      raise ConfigError(f"{where}.{key}={special}, but no {who} feature is tokens [B,N,C] ({listed}): "
                        "set it to 0")
  for (s_path, s_shape), (t_path, t_shape) in zip(student_shapes.items(), teacher_shapes.items()):
    pair = token_pair_shapes(s_shape, t_shape, s_special, t_special)
    if pair is None:
      continue
    (s_count, _), (t_count, _) = pair
    if s_count != t_count:
      raise ConfigError(
          f"{where}: {method} compares student feature {s_path} {s_shape[1:]} and teacher feature "
          f"{t_path} {t_shape[1:]} token by token, but they have {s_count} and {t_count} tokens (after "
          f"dropping {s_special} and {t_special} special tokens; a map [H,W,C] counts H*W): set "
          f"{where}.student_special_tokens / teacher_special_tokens to the leading class or "
          "distillation tokens to drop (ViT: 1, DeiT: 2), or select taps with as many tokens")


def reject_token_features(method: str, student_shapes: dict[str, Any], teacher_shapes: dict[str, Any],
                          where: str, needs: str = "feature maps [B,H,W,C]") -> None:
  """Raises ConfigError if a selected feature is tokens [B, N, C], for methods that cannot use them.

  Called first in such a method's `check_features`, so the error names the methods that do accept
  token features rather than a shape rule of this one.
  """
  for who, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
    for path, shape in shapes.items():
      if is_tokens(shape):
        raise ConfigError(
            f"{where}: {method} needs {needs}, but {who} feature {path} is tokens [B,N,C] {shape[1:]}: "
            f"select a convolutional tap point, or use a method that accepts token features: "
            f"{', '.join(TOKEN_FEATURE_METHODS)}")
