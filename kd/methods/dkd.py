"""Decoupled knowledge distillation (Zhao et al. 2022).

Classical KD at temperature T splits into a target-class and a non-target-class part
(Section 3.1; b, p-hat in Eqs. (2)-(3)):

    KD = KL(b^T || b^S) + (1 - p_t^T) KL(p-hat^T || p-hat^S) = TCKD + (1 - p_t^T) NCKD   (Eq. 6)

where b = (p_t, p_\\t) is the binary target / non-target distribution and p-hat the distribution
over the non-target classes. The weight (1 - p_t^T) suppresses NCKD exactly where the teacher is
confident, so DKD gives the two parts their own weights (Eq. 7):

    loss = alpha * T^2 * TCKD + beta * T^2 * NCKD + ce_weight * CE(s, y)

averaged over the batch. The T^2 factor is the one of the authors' code (mdistiller,
`dkd_loss`), as in Hinton et al.; the defaults are the paper's CIFAR-100 setting (alpha=1,
beta=8, T=4, CE weight 1; supplementary material).

Not applied: the authors scale the DKD term by min(epoch / 20, 1), a linear warmup over the first
20 epochs (`CFG.DKD.WARMUP`). A method's loss does not see the training step, so that schedule
is not part of this module; without it the large beta acts from the first step.

Reference: B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, "Decoupled Knowledge Distillation",
CVPR 2022, arXiv:2203.08679. Code: github.com/megvii-research/mdistiller.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "ce_weight": 1.0}


def check(params: dict[str, Any], where: str) -> None:
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0 "
                      "(Zhao et al. use 4 on CIFAR-100)")
  for key in ("alpha", "beta", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if params["alpha"] == 0 and params["beta"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: alpha, beta and ce_weight are all 0, so nothing is learned; set one > 0")


def loss(student_out, teacher_out, batch, *, alpha: float, beta: float, temperature: float,
         ce_weight: float) -> tuple[Any, dict[str, Any]]:
  teacher_logits = jax.lax.stop_gradient(teacher_out["logits"])
  student_logits = student_out["logits"]
  labels = batch["label"]
  tckd = temperature**2 * jnp.mean(losses.target_class_kl_divergence_with_logits(
      student_logits, teacher_logits, labels, temperature=temperature))
  nckd = temperature**2 * jnp.mean(losses.non_target_class_kl_divergence_with_logits(
      student_logits, teacher_logits, labels, temperature=temperature))
  hard = jnp.mean(losses.cross_entropy_with_integer_labels(student_logits, labels))
  total = alpha * tckd + beta * nckd + ce_weight * hard
  return total, {"tckd": tckd, "nckd": nckd, "ce": hard}
