"""Neuron selectivity transfer (NST): match the distributions of the channels' activation patterns.

Each channel of a feature map F [B, H, W, C] is read as one sample: its activation pattern over the
H*W positions, L2-normalised per example, f_i = F[:, :, i] / ||F[:, :, i]||_2. NST asks the
student's samples {s_i}, i < C_S, to follow the same distribution as the teacher's {t_j}, j < C_T,
and measures the distance with the squared maximum mean discrepancy (Section 3):

    MMD^2 = 1/C_S^2 sum_{i,i'} k(s_i, s_i') + 1/C_T^2 sum_{j,j'} k(t_j, t_j')
            - 2/(C_S C_T) sum_{i,j} k(s_i, t_j)

with the paper's polynomial kernel k(x, y) = (x^T y + c)^d, d = 2, c = 0 (the one the CRD benchmark
uses). With this kernel, MMD^2 = ||S S^T / C_S - T T^T / C_T||_F^2 for the patterns stacked as
S [H*W, C_S] and T [H*W, C_T]: it is >= 0, zero when the two maps are equal, and indifferent to the
order of the channels. The teacher term does not depend on the student; it is
kept so that the reported value is the MMD.

    loss = nst_weight * sum_pairs mean_batch MMD^2 + ce_weight * CE(student_logits, labels)

(the paper writes lambda/2 * MMD^2 for one pair; nst_weight is lambda/2).

Following the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020, arXiv:1910.10699; its code
RepDistiller, `distiller_zoo/NST.py`, `helper/loops.py`, `scripts/run_cifar_distill.sh`): the
pairs are the three stage outputs (the reference's `feat[1:-1]`, e.g. `layer1_4`, `layer2_4`,
`layer3_4` for resnet32x4), nst_weight = 50 (`-b 50`), ce_weight = 1 and no KD term (`-a 0`). When
the resolutions differ, the larger map is average-pooled to the smaller one
(`F.adaptive_avg_pool2d`, reproduced exactly by `common.adaptive_average_pool`); the two maps need
not have the same number of channels.

Deviations from RepDistiller: it pools to (H, H), assuming square maps; here height and width are
pooled separately. Its `F.normalize` divides by max(||f||, 1e-12); here an all-zero channel (a dead
ReLU) stays zero with a zero gradient instead of a gradient scaled by 1e12.

Token features [B, N, C]: the MMD is defined for any set of positions, each channel's pattern being
a vector over them, so a ViT's tokens are the positions and each channel's pattern is its
activation over the N tokens. The two sides' patterns must live over the same positions: the token
counts must agree (`student_special_tokens` / `teacher_special_tokens` drop leading class or
distillation tokens; a [B, H, W, C] map paired with tokens counts its H*W positions in row-major
order, the patch tokens' order). Tokens are not pooled, as a token sequence has no resolution to
pool to.

Reference: Z. Huang, N. Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
Transfer", arXiv:1707.01219, 2017, Section 3 (the NST loss and its polynomial kernel).
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd.errors import ConfigError
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    # Zoo experiments name the stage outputs, e.g. ("layer1_4", "layer2_4", "layer3_4").
    "student_features": ("conv0",),
    "teacher_features": ("conv0",),
    "nst_weight": 50.0,
    "ce_weight": 1.0,
    # Token features: leading tokens (class token 1, DeiT's 2) dropped before the patterns.
    "student_special_tokens": 0,
    "teacher_special_tokens": 0,
}


def check(params: dict[str, Any], where: str) -> None:
  common.check_weights(params, ("nst_weight", "ce_weight"), where)
  common.check_feature_patterns(params, where, ("layer1_4", "layer2_4", "layer3_4"))
  common.check_special_tokens(params, where)


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  common.check_feature_count(student_shapes, teacher_shapes, where)
  common.check_token_pairs(params, student_shapes, teacher_shapes, where, "NST")
  for (s_path, s_shape), (t_path, t_shape) in zip(student_shapes.items(), teacher_shapes.items()):
    if common.token_pair_shapes(s_shape, t_shape) is not None:
      continue  # Token counts were checked above.
    if len(s_shape) != 4 or len(t_shape) != 4 or not common.poolable(s_shape, t_shape):
      raise ConfigError(
          f"{where}: NST compares channel activation patterns of feature maps [B,H,W,C], the larger "
          f"average-pooled to the smaller, but student feature {s_path} is {s_shape[1:]} and teacher "
          f"feature {t_path} is {t_shape[1:]}: pick maps whose height and width are both >= (or "
          "both <=) the other's (channels may differ), or token features [B,N,C] with as many tokens "
          "as the other has positions")


def channel_patterns(features_BxHxWxC: jax.Array) -> jax.Array:
  """Each channel's activation pattern over the positions, L2-normalised: [B, H*W, C] ([B, N, C] as is)."""
  patterns_BxPxC = common.as_tokens(features_BxHxWxC).astype(jnp.float32)
  squared_norms_Bx1xC = jnp.sum(jnp.square(patterns_BxPxC), axis=1, keepdims=True)
  # The norm is only taken where it is positive: x / ||x|| has a 0/0 gradient at x = 0, which would
  # turn the whole batch's gradient into NaN for one dead channel.
  positive = squared_norms_Bx1xC > 0
  inverse_norms = jax.lax.rsqrt(jnp.where(positive, squared_norms_Bx1xC, 1.0))
  return jnp.where(positive, patterns_BxPxC * inverse_norms, 0.0)


def _mean_polynomial_kernel(x_BxPxN: jax.Array, y_BxPxM: jax.Array) -> jax.Array:
  """mean over (i, j) of (x_i^T y_j)^2 for each example: [B]."""
  return jnp.mean(jnp.square(jnp.einsum("bpi,bpj->bij", x_BxPxN, y_BxPxM)), axis=(1, 2))


def nst_mmd(student_BxHxWxC: jax.Array, teacher_BxHxWxC: jax.Array) -> jax.Array:
  """Squared MMD with the kernel (x^T y)^2 between the two maps' channel patterns, per example.

  Args:
    student_BxHxWxC: [B, H, W, C_S] the student's feature map.
    teacher_BxHxWxC: [B, H', W', C_T] the teacher's; the larger of the two is average-pooled to the
      smaller's resolution. Either may be tokens [B, N, C] instead, with as many tokens as the
      other has positions.

  Returns:
    [B] the MMD^2 of each example, >= 0, zero when the maps are equal.

  References:
    Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
    arXiv:1707.01219, Section 3: MMD^2 of the normalised channel patterns, polynomial kernel
    with d = 2, c = 0.
  """
  if student_BxHxWxC.ndim == 4 and teacher_BxHxWxC.ndim == 4:
    student_BxHxWxC, teacher_BxHxWxC = common.match_resolution(student_BxHxWxC, teacher_BxHxWxC)
  s_BxPxC, t_BxPxC = channel_patterns(student_BxHxWxC), channel_patterns(teacher_BxHxWxC)
  return (_mean_polynomial_kernel(t_BxPxC, t_BxPxC) + _mean_polynomial_kernel(s_BxPxC, s_BxPxC)
          - 2 * _mean_polynomial_kernel(s_BxPxC, t_BxPxC))


def loss(student_out, teacher_out, batch, *, student_features, teacher_features, nst_weight: float,
         ce_weight: float, student_special_tokens: int,
         teacher_special_tokens: int) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # Resolved by the framework into the outputs' "features".
  nst = 0.0
  for s, t in zip(student_out["features"].values(), teacher_out["features"].values()):
    t = jax.lax.stop_gradient(t)
    if s.ndim == 3 or t.ndim == 3:
      s, t = common.as_tokens(s, student_special_tokens), common.as_tokens(t, teacher_special_tokens)
    nst = nst + jnp.mean(nst_mmd(s, t))
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  return nst_weight * nst + ce_weight * ce, {"nst": nst, "ce": ce}

