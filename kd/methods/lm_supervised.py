"""Next-token cross-entropy on the data: a language model's teacher or baseline (labels only).

    loss = mean over real target tokens of -log q(x_{i+1} | x_{<=i})
"""

from typing import Any

from kd.methods import lm_common

LANGUAGE_MODEL = True  # Reads next-token targets of a token dataset (kd.lm.check_stages).
NEEDS_TEACHER = False
DEFAULTS: dict[str, Any] = {}


def check(params: dict[str, Any], where: str) -> None:
  del params, where


def loss(student_out, teacher_out, batch) -> tuple[Any, dict[str, Any]]:
  del teacher_out
  return lm_common.distillation_loss(student_out, None, batch, divergence="forward_kl", beta=0.5,
                                     alpha=0.1, temperature=1.0, kd_weight=0.0, ce_weight=1.0)
