"""Correlation congruence (Peng et al. 2019): match the teacher's correlations between examples.

With the embeddings of a batch of b examples L2-normalised (f_i of the student, t_i of the
teacher), the correlation matrix is a Gaussian RBF kernel approximated by its P-order Taylor
expansion, and the student matches the teacher's:

    k(f_i, f_j) = exp(-gamma ||f_i - f_j||^2) = exp(-2 gamma) exp(2 gamma f_i.f_j)
                ~ sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (f_i.f_j)^p
    L_CC = 1/b^2 ||psi(T) - psi(S)||_F^2,   psi(F)[i, j] = k(f_i, f_j)

    loss = cc_weight * L_CC + ce_weight * CE(student_logits, labels)

(the middle equality holds because the f_i are unit vectors). Only b x b matrices are compared, so
the widths may differ. Normalising first makes the loss invariant to rescaling any example's
embedding and to rotations; it is 0 when the student's embeddings equal the teacher's.

Which variant, and the defaults. RepDistiller (the code of the CRD benchmark, Tian, Krishnan & Isola,
ICLR 2020, arXiv:1910.10699) does *not* use the kernel: its `distiller_zoo/CC.py` `Correlation`
("code emailed to me by the original author") computes, on trainable linear projections to 128
dimensions of both networks' pooled embeddings (`LinearEmbed` in `models/util.py`, set up in
`train_student.py`),

    delta = |f_s - f_t|,   L = mean over i < b of sum_d delta[i, d] delta[i + 1, d]

which compares each example's student-teacher difference with the next example's; with `-b 0.02`,
it produced the CC rows of the CRD tables. This module reproduces it as variant="repdistiller"
(set cc_weight=0.02 with it): a connector holds the two projections (`embed_dim`, 128 as
RepDistiller's `feat_dim`; PyTorch's default initialisation for the weights, zero biases), both
trained by this term alone, as in the reference, which lets the term shrink by shrinking them.
embed_dim=0 compares the features themselves, which must then have the same size. The default,
variant="taylor_rbf", is the paper's kernel, with gamma = 0.4, P = 2 and cc_weight = 100 as in
Hu's Knowledge-Distillation-Zoo (github.com/AberHu/Knowledge-Distillation-Zoo, `kd_losses/cc.py`,
`train_kd.py` and its CIFAR-10 script), whose `F.mse_loss` is the 1/b^2 Frobenius norm above; it
needs no trainable parts. Both variants use the pooled embedding (`pool`, the reference's
`feat[-1]`), ce_weight = 1 and no KD term, as the CRD benchmark does (`-r 1 -a 0`). With several
feature pairs, their terms are summed.

Token features [B, N, C] are flattened per example to [B, N*C], as maps are: the kernel is
defined for any vector per example, and only b x b matrices are compared, so token counts and
widths may differ. The paper's embedding is the pooled one; for a ViT, tap its class token or
pooled output (a [B, D] feature) to follow it, the token sequence to compare every token.

Reference: B. Peng, X. Jin, J. Liu, S. Zhou, Y. Wu, Y. Liu, D. Li, Z. Zhang, "Correlation
Congruence for Knowledge Distillation", ICCV 2019, arXiv:1904.01802, Section 3 (the correlation
congruence loss and the Taylor-expanded Gaussian RBF correlation).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "cc_weight": 100.0,
    "ce_weight": 1.0,
    "variant": "taylor_rbf",
    "gamma": 0.4,
    "taylor_order": 2,
    "embed_dim": 128,  # variant="repdistiller" only; 0: no projections.
    "student_features": ("pool",),
    "teacher_features": ("pool",),
}

VARIANTS = ("taylor_rbf", "repdistiller")

# PyTorch's default nn.Linear weights, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as RepDistiller's
# LinearEmbed has them.
_torch_linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def check(params: dict[str, Any], where: str) -> None:
  common.check_weights(params, ("cc_weight", "ce_weight"), where, all_zero_ok=False)
  if params["variant"] not in VARIANTS:
    raise ConfigError(f"{where}.variant={params['variant']!r} is not a variant; use one of {VARIANTS}")
  if not common.is_number(params["gamma"]) or not params["gamma"] > 0:
    raise ConfigError(f"{where}.gamma={params['gamma']!r} must be a number > 0 (Peng et al. use 0.4)")
  order = params["taylor_order"]
  if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= 20:
    raise ConfigError(f"{where}.taylor_order={order!r} must be an integer from 0 to 20 (Peng et al. use 2)")
  embed_dim = params["embed_dim"]
  if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 0:
    raise ConfigError(f"{where}.embed_dim={embed_dim!r} must be an integer >= 0 (RepDistiller uses 128)")
  common.check_feature_patterns(params, where, ("pool",))


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  common.check_feature_count(student_shapes, teacher_shapes, where)
  if params["variant"] == "repdistiller" and params["embed_dim"] == 0:
    for (s_path, s_shape), (t_path, t_shape) in zip(student_shapes.items(), teacher_shapes.items()):
      if math.prod(s_shape[1:]) != math.prod(t_shape[1:]):
        raise ConfigError(f"{where}: variant='repdistiller' with embed_dim=0 subtracts teacher feature "
                          f"{t_path} {t_shape[1:]} from student feature {s_path} {s_shape[1:]}, which "
                          f"differ in size: set embed_dim > 0 (RepDistiller uses 128) or pick other "
                          f"features")


class Embeddings(nn.Module):
  """RepDistiller's `LinearEmbed` for each (student, teacher) feature pair.

  Returns {"cc_embeddings": [(student [B, embed_dim], teacher [B, embed_dim]), ...]}.
  """

  embed_dim: int

  @nn.compact
  def __call__(self, student_out, teacher_out, batch, train: bool):
    del batch, train
    pairs = []
    for index, (student, teacher) in enumerate(common.feature_pairs(student_out, teacher_out)):
      student_embed = nn.Dense(self.embed_dim, kernel_init=_torch_linear_kernel, name=f"student_embed{index}")
      teacher_embed = nn.Dense(self.embed_dim, kernel_init=_torch_linear_kernel, name=f"teacher_embed{index}")
      pairs.append((student_embed(common.flatten_examples(student)),
                    teacher_embed(common.flatten_examples(teacher))))
    return {"cc_embeddings": pairs}


def make_connector(params, student_shapes, teacher_shapes, num_examples):
  del student_shapes, teacher_shapes, num_examples  # Dense layers take any width.
  if params["variant"] == "repdistiller" and params["embed_dim"] > 0:
    return Embeddings(embed_dim=params["embed_dim"])
  return None


def correlation_matrix(embeddings_BxD: jax.Array, *, gamma: float, taylor_order: int) -> jax.Array:
  """psi: the P-order Taylor expansion of the Gaussian RBF kernel of unit embeddings, [B, B]."""
  unit_BxD = losses.l2_normalize(embeddings_BxD, axis=-1)
  cosine_BxB = unit_BxD @ unit_BxD.T
  correlation_BxB = jnp.zeros_like(cosine_BxB)
  for p in range(taylor_order + 1):
    coefficient = math.exp(-2.0 * gamma) * (2.0 * gamma)**p / math.factorial(p)
    correlation_BxB = correlation_BxB + coefficient * cosine_BxB**p
  return correlation_BxB


def loss(student_out, teacher_out, batch, *, cc_weight: float, ce_weight: float, variant: str,
         gamma: float, taylor_order: int, embed_dim: int, student_features,
         teacher_features) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # The framework captured them into the outputs.
  if variant == "repdistiller" and embed_dim > 0:
    if "cc_embeddings" not in student_out.get("connector", {}):
      raise ConfigError("method: variant='repdistiller' with embed_dim > 0 needs the method's connector "
                        "(kd.methods.cc.make_connector) to have run on the outputs")
    # The teacher's projection is trainable: its output keeps its gradient.
    pairs = student_out["connector"]["cc_embeddings"]
  else:
    pairs = common.feature_pairs(student_out, teacher_out)
  cc = 0.0
  for student_embedding, teacher_embedding in pairs:
    student_BxD = common.flatten_examples(student_embedding)
    teacher_BxD = common.flatten_examples(teacher_embedding)
    if variant == "taylor_rbf":
      difference_BxB = (correlation_matrix(teacher_BxD, gamma=gamma, taylor_order=taylor_order)
                        - correlation_matrix(student_BxD, gamma=gamma, taylor_order=taylor_order))
      cc = cc + jnp.mean(jnp.square(difference_BxB))
    elif variant == "repdistiller":
      cc = cc + _repdistiller_correlation(student_BxD, teacher_BxD)
    else:
      raise ConfigError(f"method.variant={variant!r} is not a variant; use one of {VARIANTS}")
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  return cc_weight * cc + ce_weight * ce, {"cc": cc, "ce": ce}


def _repdistiller_correlation(student_BxD: jax.Array, teacher_BxD: jax.Array) -> jax.Array:
  """RepDistiller's `Correlation.forward`: mean_i sum_d |s - t|[i, d] |s - t|[i + 1, d]."""
  if student_BxD.shape != teacher_BxD.shape:
    raise ConfigError(f"method: variant='repdistiller' subtracts the teacher's embedding from the "
                      f"student's, but they are shaped {student_BxD.shape} and {teacher_BxD.shape}; "
                      f"set embed_dim > 0 or pick features of the same size")
  if student_BxD.shape[0] < 2:
    return jnp.zeros((), jnp.float32)  # No consecutive pair (the reference's mean would be NaN).
  delta_BxD = jnp.abs(student_BxD - teacher_BxD)
  return jnp.mean(jnp.sum(delta_BxD[:-1] * delta_BxD[1:], axis=1))

