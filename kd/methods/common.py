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
    `adaptive_average_pool`, `match_resolution`), as PyTorch's `adaptive_avg_pool2d` computes it.
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
