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

Reference: N. Passalis, A. Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018, arXiv:1803.10837, Section 3 (the conditional probabilities, the KL objective
and the cosine-similarity kernel).
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "pkt_weight": 30000.0,
    "ce_weight": 1.0,
    "student_features": ("pool",),
    "teacher_features": ("pool",),
}

EPS = 1e-7  # The authors' and RepDistiller's, inside the log.


def check(params: dict[str, Any], where: str) -> None:
  for key in ("pkt_weight", "ce_weight"):
    if not _is_number(params[key]) or not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]!r} must be a number >= 0")
  if params["pkt_weight"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: pkt_weight and ce_weight are both 0, so nothing is learned; set one > 0")
  _check_feature_patterns(params, where)


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  del params  # Features of any shapes work: each is flattened per example.
  _check_feature_count(student_shapes, teacher_shapes, where)


def conditional_probabilities(embeddings_BxD: jax.Array) -> jax.Array:
  """[i, j] = p_{j|i}: the cosine kernel of each row normalised to sum to 1 over j, [B, B]."""
  kernel_BxB = (losses.cosine_similarities(embeddings_BxD) + 1.0) / 2.0
  # Each row sums to at least 1/2 (K(t_i, t_i) = 1, or 1/2 everywhere for a zero embedding).
  return kernel_BxB / jnp.sum(kernel_BxB, axis=1, keepdims=True)


def loss(student_out, teacher_out, batch, *, pkt_weight: float, ce_weight: float,
         student_features, teacher_features) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # The framework captured them into the outputs.
  pkt = 0.0
  for student_embedding, teacher_embedding in _feature_pairs(student_out, teacher_out):
    student_probs = conditional_probabilities(_flatten(student_embedding))
    teacher_probs = conditional_probabilities(_flatten(teacher_embedding))
    pkt = pkt + jnp.mean(teacher_probs * jnp.log((teacher_probs + EPS) / (student_probs + EPS)))
  ce = jnp.mean(losses.cross_entropy_with_integer_labels(student_out["logits"], batch["label"]))
  return pkt_weight * pkt + ce_weight * ce, {"pkt": pkt, "ce": ce}


def _flatten(features: jax.Array) -> jax.Array:
  return features.reshape(features.shape[0], -1).astype(jnp.float32)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_feature_patterns(params: dict[str, Any], where: str) -> None:
  for key in ("student_features", "teacher_features"):
    patterns = params[key]
    if (isinstance(patterns, str) or not isinstance(patterns, (tuple, list)) or not patterns
        or not all(isinstance(p, str) and p for p in patterns)):
      raise ConfigError(f"{where}.{key}={patterns!r} must be a non-empty tuple of tap-point patterns, "
                        f"e.g. ('pool',)")
  if len(params["student_features"]) != len(params["teacher_features"]):
    raise ConfigError(f"{where}: student_features has {len(params['student_features'])} patterns and "
                      f"teacher_features {len(params['teacher_features'])}; the i-th of each are "
                      f"compared, so give the same number")


def _check_feature_count(student_shapes, teacher_shapes, where: str) -> None:
  if len(student_shapes) != len(teacher_shapes):
    raise ConfigError(f"{where}: student_features selected {list(student_shapes)} and teacher_features "
                      f"{list(teacher_shapes)}; the i-th of each are compared, so they must select the "
                      f"same number of tap points")


def _feature_pairs(student_out, teacher_out) -> list[tuple[jax.Array, jax.Array]]:
  """(student, teacher) features in pattern order; the teacher's without gradient."""
  student = student_out.get("features", {})
  teacher = teacher_out.get("features", {})
  if not student or len(student) != len(teacher):
    raise ConfigError(f"method: student_features selected {list(student)} and teacher_features "
                      f"{list(teacher)}; they must select the same number of tap points (> 0)")
  return [(s, jax.lax.stop_gradient(t)) for s, t in zip(student.values(), teacher.values())]
