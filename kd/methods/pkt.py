"""Probabilistic knowledge transfer (Passalis & Tefas 2018) with the cosine-similarity kernel.

The teacher's embeddings define, for each example i of the batch, a distribution over the examples
j by how similar they are to it; the student learns to give the same distributions:

    K(a, b) = (cos(a, b) + 1) / 2                      the cosine kernel, in [0, 1]
    p_{j|i} = K(t_i, t_j) / sum_k K(t_i, t_k)          teacher; q_{j|i} the same for the student
    L_PKT = mean over (i, j) of p_{j|i} log((p_{j|i} + eps) / (q_{j|i} + eps))

    loss = pkt_weight * L_PKT + ce_weight * CE(student_logits, labels)

Matching distributions rather than embeddings lets the two widths differ. Cosines make the loss
invariant to rescaling any example's embedding (by a positive factor) and to rotations.

This is the authors' code (github.com/passalis/probabilistic_kt), as RepDistiller's
`distiller_zoo/PKT.py` copies it, rather than the paper's sums: the k = i and j = i terms are
included, and the loss is the mean over all b^2 entries, not a sum. As there, eps = 1e-7 is added
to both probabilities inside the log, so that q_{j|i} = 0 (antipodal student embeddings) gives a
large, finite loss instead of infinity. A consequence: the loss can fall below zero, by less than
eps (the eps-shifted ratios are not quite a KL divergence); it is exactly 0 when the student's
embeddings are the teacher's.

Deviation from RepDistiller: the reference also adds eps to each norm before normalising,
x / (||x|| + eps). That changes a cosine by a relative 1e-7 / ||x||, below float32 resolution for
the norms of real embeddings, but at an all-zero embedding it is where the gradients break: the
reference's sqrt gives NaN there, and without the sqrt the division still scales the gradient by
1 / eps = 1e7 (times pkt_weight). Here the cosines are exact (`losses.cosine_similarities`): a zero
embedding has similarities 0, as in the reference, and a zero gradient.

Defaults follow the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020, arXiv:1910.10699; RepDistiller
`train_student.py`): the pooled embedding before the classifier (`pool`, the reference's
`feat[-1]`), pkt_weight = 30000 (`-b 30000`), ce_weight = 1 (`-r 1`) and no KD term (`-a 0`). With
several feature pairs, their terms are summed.

Token features [B, N, C] are flattened per example to [B, N*C], as maps are: the cosine kernel is
defined for any vector per example and only b x b distributions are compared, so token counts and
widths may differ. The paper's embedding is the pooled one; for a ViT, tap its class token or
pooled output (a [B, D] feature) to follow it.

Reference: N. Passalis, A. Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018, arXiv:1803.10837, Section 3 (the conditional probabilities, the KL objective
and the cosine-similarity kernel).
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "pkt_weight": 30000.0,
    "ce_weight": 1.0,
    "student_features": ("pool",),
    "teacher_features": ("pool",),
}

EPS = 1e-7  # The authors' and RepDistiller's, inside the log.


def check(params: dict[str, Any], where: str) -> None:
  common.check_weights(params, ("pkt_weight", "ce_weight"), where, all_zero_ok=False)
  common.check_feature_patterns(params, where, ("pool",))


# Features of any shapes work: each is flattened per example.
check_features = common.check_flattened_features


def conditional_probabilities(embeddings_BxD: jax.Array) -> jax.Array:
  """[i, j] = p_{j|i}: the cosine kernel of each row normalised to sum to 1 over j, [B, B]."""
  kernel_BxB = (losses.cosine_similarities(embeddings_BxD) + 1.0) / 2.0
  # Each row sums to at least 1/2 (K(t_i, t_i) = 1, or 1/2 everywhere for a zero embedding).
  return kernel_BxB / jnp.sum(kernel_BxB, axis=1, keepdims=True)


def loss(student_out, teacher_out, batch, *, pkt_weight: float, ce_weight: float,
         student_features, teacher_features) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # The framework captured them into the outputs.
  pkt = 0.0
  for student_embedding, teacher_embedding in common.feature_pairs(student_out, teacher_out):
    student_probs = conditional_probabilities(common.flatten_examples(student_embedding))
    teacher_probs = conditional_probabilities(common.flatten_examples(teacher_embedding))
    pkt = pkt + jnp.mean(teacher_probs * jnp.log((teacher_probs + EPS) / (student_probs + EPS)))
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  return pkt_weight * pkt + ce_weight * ce, {"pkt": pkt, "ce": ce}

