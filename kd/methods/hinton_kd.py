"""Knowledge distillation with soft targets (Hinton, Vinyals & Dean 2015).

    loss = kd_weight * T^2 * KL(softmax(t / T) || softmax(s / T)) + ce_weight * CE(s, y)

averaged over the batch, where s and t are the student's and teacher's logits and y the labels.
The T^2 factor keeps the soft term's gradients the same size as the hard term's when T changes
(the soft gradients scale as 1/T^2; Section 2 of the paper). KL rather than the paper's
cross-entropy: the gradients are the same and the reported value is 0 when the student matches.

Reference: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network",
NIPS 2014 Deep Learning Workshop, arXiv:1503.02531.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {"temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1}


def check(params: dict[str, Any], where: str) -> None:
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0 (Hinton et al. use 1-20)")
  for key in ("kd_weight", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if params["kd_weight"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: kd_weight and ce_weight are both 0, so nothing is learned; set one > 0")


def loss(student_out, teacher_out, batch, *, temperature: float, kd_weight: float,
         ce_weight: float) -> tuple[Any, dict[str, Any]]:
  teacher_logits = jax.lax.stop_gradient(teacher_out["logits"])
  student_logits = student_out["logits"]
  soft = temperature**2 * jnp.mean(losses.kl_divergence_with_logits(
      student_logits, teacher_logits, temperature=temperature))
  hard = jnp.mean(losses.cross_entropy_with_integer_labels(student_logits, batch["label"]))
  total = kd_weight * soft + ce_weight * hard
  return total, {"kd": soft, "ce": hard}
