"""Similarity-preserving knowledge distillation (Tung & Mori 2019).

For a batch of b examples and a feature map A of the student or the teacher, flattened to
Q = [b, h*w*c], eq. 2-4 of the paper are

    G~ = Q Q^T                                  the b x b similarities between examples
    G[i, :] = G~[i, :] / ||G~[i, :]||_2         each row normalised
    L_SP = 1/b^2 sum_pairs ||G_T - G_S||_F^2    summed over the chosen (teacher, student) layer pairs

    loss = sp_weight * L_SP + ce_weight * CE(student_logits, labels)

The student learns which examples the teacher finds alike, not the teacher's activations, so the
two feature maps may differ in width and resolution. Since G~ = Q Q^T, the loss is invariant to any
orthogonal transform of the flattened features (a rotation or permutation of channels) and to one
scale shared by the batch; it is *not* invariant to rescaling single examples (row i of G keeps the
scales of the other examples j).

Defaults follow the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020, arXiv:1910.10699; its code,
RepDistiller, `distiller_zoo/SP.py` and `train_student.py`): the last feature map before pooling
(the reference's `feat[-2]`), sp_weight = 3000 (`-b 3000`), ce_weight = 1 (`-r 1`) and no KD term
(`-a 0`). Which tap point that is depends on the network; the defaults name it for the benchmark's
headline pair, teacher resnet32x4 and student resnet8x4. For the other zoo models:

    resnet8/8x4 layer3_0, resnet20 layer3_2, resnet32/32x4 layer3_4, resnet56 layer3_8,
    resnet110 layer3_17, wrn_16_x block3_1, wrn_40_x block3_5, ShuffleV1/ShuffleV2 layer3_3,
    mobile_half blocks6_0, vgg{8,11,13,16,19} block4 (after its ReLU, as the reference's f4; the
    map before it is block4/bn<last>).

Token features [B, N, C] (a ViT's or MLP-Mixer's blocks) are flattened per example to [B, N*C],
as a map is to [B, h*w*c]: the paper's Q is any activation flattened per example, and G~ = Q Q^T
then sums the token-by-token inner products, so the student's and teacher's token counts and widths
may differ (a CNN teacher's map and a ViT student's tokens pair up as they are).

Deviations from RepDistiller: none in the values. Its `F.normalize` divides a row by
max(||row||, 1e-12); here an all-zero row (an example whose feature map is all zeros) stays zero with
a zero gradient instead of a gradient scaled by 1e12.

Reference: F. Tung, G. Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
arXiv:1907.09682, eq. 2-4.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "sp_weight": 3000.0,
    "ce_weight": 1.0,
    "student_features": ("layer3_0",),  # resnet8x4's last feature map; see the module docstring.
    "teacher_features": ("layer3_4",),  # resnet32x4's.
}


def check(params: dict[str, Any], where: str) -> None:
  common.check_weights(params, ("sp_weight", "ce_weight"), where, all_zero_ok=False)
  common.check_feature_patterns(params, where, ("layer3_4",))


# Features of any shapes work: each is flattened per example.
check_features = common.check_flattened_features


def similarity_matrix(features_BxN: jax.Array) -> jax.Array:
  """G: the row-normalised Gram matrix of the flattened features, [B, B]."""
  q_BxN = features_BxN.reshape(features_BxN.shape[0], -1).astype(jnp.float32)
  return losses.l2_normalize(q_BxN @ q_BxN.T, axis=1)


def loss(student_out, teacher_out, batch, *, sp_weight: float, ce_weight: float,
         student_features, teacher_features) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # The framework captured them into the outputs.
  sp = 0.0
  for student_map, teacher_map in common.feature_pairs(student_out, teacher_out):
    batch_size = student_map.shape[0]
    difference_BxB = similarity_matrix(teacher_map) - similarity_matrix(student_map)
    sp = sp + jnp.sum(jnp.square(difference_BxB)) / batch_size**2
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  return sp_weight * sp + ce_weight * ce, {"sp": sp, "ce": ce}

