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

Warmup: the authors scale the DKD term (alpha TCKD + beta NCKD, not the CE) by min(epoch / 20, 1),
with the epoch counted from 1 (mdistiller `DKD.forward_train`, `CFG.DKD.WARMUP` = 20). Here
`warmup_epochs` (0: none) and `steps_per_epoch` give the same factor, min((floor(step /
steps_per_epoch) + 1) / warmup_epochs, 1), from the train step's `step` (0 for the first update).

Reference: B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, "Decoupled Knowledge Distillation",
CVPR 2022, arXiv:2203.08679. Code: github.com/megvii-research/mdistiller.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "ce_weight": 1.0,
                            "warmup_epochs": 0, "steps_per_epoch": 0.0}


def check(params: dict[str, Any], where: str) -> None:
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0 "
                      "(Zhao et al. use 4 on CIFAR-100)")
  for key in ("alpha", "beta", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if not params["warmup_epochs"] >= 0:
    raise ConfigError(f"{where}.warmup_epochs={params['warmup_epochs']} must be >= 0 (0: no warmup; "
                      "Zhao et al. use 20)")
  if not params["steps_per_epoch"] >= 0:
    raise ConfigError(f"{where}.steps_per_epoch={params['steps_per_epoch']} must be >= 0 (training examples / "
                      "batch size)")
  if params["warmup_epochs"] and not params["steps_per_epoch"] > 0:
    raise ConfigError(f"{where}.warmup_epochs={params['warmup_epochs']} needs steps_per_epoch > 0 (training "
                      "examples / batch size, e.g. 50000 / 64 = 781.25 for CIFAR-100)")
  if params["alpha"] == 0 and params["beta"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: alpha, beta and ce_weight are all 0, so nothing is learned; set one > 0")


def warmup_factor(step, warmup_epochs: float, steps_per_epoch: float):
  """min(epoch / warmup_epochs, 1) with the epoch of `step` counted from 1; 1 without warmup."""
  if not warmup_epochs:
    return 1.0
  epoch = jnp.floor(jnp.asarray(step, jnp.float32) / steps_per_epoch) + 1.0
  return jnp.minimum(epoch / warmup_epochs, 1.0)


def loss(student_out, teacher_out, batch, *, alpha: float, beta: float, temperature: float,
         ce_weight: float, warmup_epochs: float = 0, steps_per_epoch: float = 0.0) -> tuple[Any, dict[str, Any]]:
  teacher_logits = jax.lax.stop_gradient(teacher_out["logits"])
  student_logits = student_out["logits"]
  labels = batch["label"]
  tckd = temperature**2 * jnp.mean(losses.target_class_kl_divergence_with_logits(
      student_logits, teacher_logits, labels, temperature=temperature))
  nckd = temperature**2 * jnp.mean(losses.non_target_class_kl_divergence_with_logits(
      student_logits, teacher_logits, labels, temperature=temperature))
  hard = jnp.mean(losses.cross_entropy_with_integer_labels(student_logits, labels))
  if warmup_epochs and "step" not in batch:
    raise ValueError("dkd with warmup_epochs needs the batch's 'step' (kd.train.train_step passes it)")
  warmup = warmup_factor(batch.get("step", 0), warmup_epochs, steps_per_epoch)
  total = warmup * (alpha * tckd + beta * nckd) + ce_weight * hard
  return total, {"tckd": tckd, "nckd": nckd, "ce": hard, "warmup": jnp.asarray(warmup, jnp.float32)}
