"""Training on labels alone: the teacher's and the baseline's objective.

loss = mean over the batch of -log softmax(student_logits)[label]
"""

from typing import Any

import jax.numpy as jnp

from kd import losses

NEEDS_TEACHER = False
DEFAULTS: dict[str, Any] = {}


def check(params: dict[str, Any], where: str) -> None:
  del params, where  # No parameters.


def loss(student_out, teacher_out, batch) -> tuple[Any, dict[str, Any]]:
  del teacher_out  # Labels only.
  cross_entropy = jnp.mean(losses.cross_entropy_with_integer_labels(student_out["logits"], batch["label"]))
  return cross_entropy, {"ce": cross_entropy}
