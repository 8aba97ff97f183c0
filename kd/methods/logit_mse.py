"""Mimic learning: regress the teacher's logits with a squared error (Ba & Caruana 2014).

    loss = mse_weight * 1/2 ||s - t||^2 + ce_weight * CE(s, y)

averaged over the batch, where s and t are the student's and teacher's logits (Section 2: the
objective 1/(2T) sum_t ||g(x_t) - z_t||^2 over the T training examples). Logits rather than
probabilities, because the softmax discards the logits' shift and squashes the differences the
teacher draws between the classes it rejects.

The paper trains the mimic on the teacher's logits alone (no labels), so ce_weight defaults to 0;
set it > 0 to add the hard labels. The squared error is summed over classes, not averaged: it is
C/2 times a per-class mean squared error, so mse_weight scales with the number of classes when
comparing with code that uses `F.mse_loss`.

Reference: J. Ba, R. Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014,
arXiv:1312.6184.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {"mse_weight": 1.0, "ce_weight": 0.0}


def check(params: dict[str, Any], where: str) -> None:
  for key in ("mse_weight", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if params["mse_weight"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: mse_weight and ce_weight are both 0, so nothing is learned; set one > 0")


def loss(student_out, teacher_out, batch, *, mse_weight: float, ce_weight: float) -> tuple[Any, dict[str, Any]]:
  teacher_logits = jax.lax.stop_gradient(teacher_out["logits"])
  student_logits = student_out["logits"]
  mse = jnp.mean(losses.logit_squared_error(student_logits, teacher_logits))
  hard = jnp.mean(losses.cross_entropy_with_integer_labels(student_logits, batch["label"]))
  total = mse_weight * mse + ce_weight * hard
  return total, {"mse": mse, "ce": hard}
