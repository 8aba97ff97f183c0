"""Relational knowledge distillation (Park et al. 2019): distance-wise and angle-wise potentials.

For a batch of embeddings t_1..t_b of the teacher (s_1..s_b of the student), flattened to vectors:

    psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu,  mu = mean of the distances over pairs    (eq. 4)
    L_D = mean over pairs (i, j) of huber(psi_D(s_i, s_j) - psi_D(t_i, t_j))          (eq. 5)
    psi_A(t_i, t_j, t_k) = <e_ij, e_ik>,  e_ij = (t_j - t_i) / ||t_j - t_i||           (eq. 6)
    L_A = mean over triplets (i, j, k) of huber(psi_A(s) - psi_A(t))                  (eq. 7)

    loss = distance_weight * L_D + angle_weight * L_A + ce_weight * CE(student_logits, labels)

with the Huber loss at delta = 1 (PyTorch's smooth L1). Only relations are compared, so the student's
and teacher's embeddings may have different widths. Normalising by mu makes the distance potential
invariant to scaling an embedding; the angle potential is invariant to translation and scaling (and,
like the distance, to rotation).

Defaults follow the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020, arXiv:1910.10699; its code,
RepDistiller, `distiller_zoo/RKD.py` and `train_student.py`): the pooled embedding before the
classifier (`pool`, the reference's `feat[-1]`), distance_weight = 25 and angle_weight = 50 (its
`RKDLoss` defaults, which are Park et al.'s, with `-b 1`), ce_weight = 1 (`-r 1`) and no KD term
(`-a 0`). With several feature pairs, their terms are summed.

Like RepDistiller and Park et al.'s own code, the means run over all b^2 pairs and b^3 triplets,
degenerate ones included (their potentials agree whenever the two batches have the same duplicates,
so they only dilute the mean; the paper sums over pairs and triplets instead, which the weights
absorb), and mu is the mean of the positive distances. Deviations from RepDistiller: distances come
from differences rather than the ||a||^2 + ||b||^2 - 2ab expansion, so duplicate examples are at
distance exactly 0 (the reference clamps to 1e-12 and gets sqrt(1e-12) or rounding noise); a zero
difference vector in the angle potential gets a zero gradient rather than one scaled by 1e12; and a
batch whose embeddings are all equal (mu = 0) gives potentials of 0 instead of NaN.

Token features [B, N, C] are flattened per example to [B, N*C], as maps are: distances and angles
are defined for any vector per example, and only relations between examples are compared, so token
counts and widths may differ. Park et al. use the pooled embedding; for a ViT, tap its class token
or pooled output (a [B, D] feature) to follow them.

Reference: W. Park, D. Kim, Y. Lu, M. Cho, "Relational Knowledge Distillation", CVPR 2019,
arXiv:1904.05068, eq. 4-7.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from kd import losses
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "distance_weight": 25.0,
    "angle_weight": 50.0,
    "ce_weight": 1.0,
    "student_features": ("pool",),
    "teacher_features": ("pool",),
}

HUBER_DELTA = 1.0  # PyTorch's smooth_l1_loss, which Park et al. and RepDistiller use.


def check(params: dict[str, Any], where: str) -> None:
  common.check_weights(params, ("distance_weight", "angle_weight", "ce_weight"), where,
                       all_zero_ok=False)
  common.check_feature_patterns(params, where, ("pool",))


# Features of any shapes work: each is flattened per example.
check_features = common.check_flattened_features


def distance_potentials(embeddings_BxD: jax.Array) -> jax.Array:
  """psi_D of eq. 4: pairwise distances over their mean over pairs at positive distance, [B, B]."""
  distances_BxB = losses.pairwise_distances(embeddings_BxD)
  count = jnp.sum(distances_BxB > 0)
  mean = jnp.sum(distances_BxB) / jnp.maximum(count, 1)
  # All embeddings equal: every distance is 0, and so is every potential.
  return distances_BxB / jnp.where(count > 0, mean, 1.0)


def loss(student_out, teacher_out, batch, *, distance_weight: float, angle_weight: float,
         ce_weight: float, student_features, teacher_features) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # The framework captured them into the outputs.
  distance, angle = 0.0, 0.0
  for student_embedding, teacher_embedding in common.feature_pairs(student_out, teacher_out):
    student_BxD = common.flatten_examples(student_embedding)
    teacher_BxD = common.flatten_examples(teacher_embedding)
    distance = distance + jnp.mean(optax.losses.huber_loss(
        distance_potentials(student_BxD), distance_potentials(teacher_BxD), delta=HUBER_DELTA))
    angle = angle + jnp.mean(optax.losses.huber_loss(
        losses.angle_potentials(student_BxD), losses.angle_potentials(teacher_BxD), delta=HUBER_DELTA))
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  total = distance_weight * distance + angle_weight * angle + ce_weight * ce
  return total, {"rkd_distance": distance, "rkd_angle": angle, "ce": ce}

