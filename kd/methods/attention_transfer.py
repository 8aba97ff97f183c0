"""Attention transfer: the student matches the teacher's spatial attention maps.

An activation-based attention map of a feature map A [B, H, W, C] is F(A) = mean_c |A_c|^p
(Section 3.1, with p = 2), flattened over H*W and L2-normalised per example. The loss (eq. 2) is

    at_weight * sum_j mean((F(s_j)/||F(s_j)|| - F(t_j)/||F(t_j)||)^2) + ce_weight * CE(s, y)

over pairs j of student and teacher maps of equal resolution (channels may differ). As in the CRD
benchmark (Tian et al. 2020, RepDistiller's `Attention`), the distance is the mean squared
difference with at_weight = 1000, where the paper writes beta/2 times the p-norm of the difference.

Token features [B, N, C]: F(A) is defined for any set of positions that each hold a C-vector (the
paper's spatial attention is the channel statistic per position), so a ViT's tokens are positions
and the map is [B, N]: mean_c |A_c|^p per token. Both sides need the same number of positions:
`student_special_tokens` / `teacher_special_tokens` drop the leading class (1) or class and
distillation (2) tokens, which are no image position, and a [B, H, W, C] map paired with tokens
counts its H*W positions in row-major order (the patch tokens' order).

Reference: S. Zagoruyko, N. Komodakis, "Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017, arXiv:1612.03928.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd.errors import ConfigError
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "student_features": ("conv0",),
    "teacher_features": ("conv0",),
    "p": 2.0,
    "at_weight": 1000.0,
    "ce_weight": 1.0,
    # Token features: leading tokens (class token 1, DeiT's 2) dropped before the attention map.
    "student_special_tokens": 0,
    "teacher_special_tokens": 0,
}


def check(params: dict[str, Any], where: str) -> None:
  if not params["p"] > 0:
    raise ConfigError(f"{where}.p={params['p']} must be > 0 (the paper uses 2)")
  common.check_non_negative(params, ("at_weight", "ce_weight"), where)
  common.check_special_tokens(params, where)
  if not params["student_features"] or len(params["student_features"]) != len(params["teacher_features"]):
    raise ConfigError(f"{where}: student_features {params['student_features']} and teacher_features "
                      f"{params['teacher_features']} must pair up one to one (same non-zero length)")


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  if len(student_shapes) != len(teacher_shapes):
    raise ConfigError(f"{where}: {len(student_shapes)} student features but {len(teacher_shapes)} "
                      "teacher features after resolving the patterns; they must pair up one to one")
  common.check_token_pairs(params, student_shapes, teacher_shapes, where, "attention transfer")
  for (s_path, s_shape), (t_path, t_shape) in zip(student_shapes.items(), teacher_shapes.items()):
    if common.token_pair_shapes(s_shape, t_shape) is not None:
      continue  # Token counts were checked above.
    if len(s_shape) != 4 or len(t_shape) != 4 or s_shape[1:3] != t_shape[1:3]:
      raise ConfigError(
          f"{where}: attention maps need feature maps [B,H,W,C] of equal resolution, but student "
          f"feature {s_path} is {s_shape[1:]} and teacher feature {t_path} is {t_shape[1:]}: pick "
          "features of the same H and W (channels may differ), or token features [B,N,C] with as many "
          "tokens as the other has positions")


def attention_map(features_BxHxWxC: jax.Array, p: float = 2.0) -> jax.Array:
  """F(A) = mean over channels of |A|^p, flattened and L2-normalised: [B, H*W] (tokens: [B, N])."""
  batch = features_BxHxWxC.shape[0]
  attention = jnp.mean(jnp.abs(features_BxHxWxC) ** p, axis=-1).reshape(batch, -1)
  # The epsilon keeps the gradient finite for an all-zero map (e.g. a dead ReLU layer).
  return attention / jnp.maximum(jnp.linalg.norm(attention, axis=-1, keepdims=True), 1e-12)


def loss(student_out, teacher_out, batch, *, student_features, teacher_features, p: float,
         at_weight: float, ce_weight: float, student_special_tokens: int,
         teacher_special_tokens: int) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # Resolved by the framework into the outputs' "features".
  at = 0.0
  for s, t in zip(student_out["features"].values(), teacher_out["features"].values()):
    t = jax.lax.stop_gradient(t)
    if s.ndim == 3 or t.ndim == 3:
      s, t = common.as_tokens(s, student_special_tokens), common.as_tokens(t, teacher_special_tokens)
    at = at + jnp.mean((attention_map(s, p) - attention_map(t, p)) ** 2)
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  return at_weight * at + ce_weight * ce, {"at": at, "ce": ce}
