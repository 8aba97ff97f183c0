"""Knowledge distillation on standardized logits (Sun et al. 2024).

KD with a temperature shared by teacher and student asks the student to match the teacher's
logits up to a shift, including their spread. Standardizing each example's logits
(the Z-score of Algorithm 1) before the temperature-softmax removes both the shift and the
scale, so the student only has to match the relations between the logits:

    Z(z) = (z - mean(z)) / sigma(z)
    loss = kd_weight * T^2 * KL(softmax(Z(t) / T) || softmax(Z(s) / T)) + ce_weight * CE(s, y)

averaged over the batch, where T is the paper's "base temperature" (the effective temperature of
an example is T * sigma(z)) and the cross-entropy takes the raw student logits. The T^2 factor
follows Algorithm 1 (lambda_KD * tau^2 * L_KD) and the authors' code (`kd_loss`, `loss_kd *=
temperature**2`). Defaults are their CIFAR-100 setting for KD + standardization (`--base-temp 2
--kd-weight 9`, CE weight 0.1; mdistiller/engine/cfg.py); a few teacher-student pairs use a base
temperature of 3.

One detail differs from the authors' code: it divides by the Bessel-corrected standard deviation
(`torch.std`, 1/(K-1)) plus 1e-7; this module uses the population standard deviation (1/K) of the
paper's Z-score, with the 1e-7 added to the variance. The softmax inputs at base temperature T
are therefore the code's at T * sqrt((K - 1) / K) (0.995 T for K = 100 classes).

Reference: S. Sun, W. Ren, J. Li, R. Wang, X. Cao, "Logit Standardization in Knowledge
Distillation", CVPR 2024, arXiv:2403.01427. Code: github.com/sunshangquan/logit-standardization-KD.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {"temperature": 2.0, "kd_weight": 9.0, "ce_weight": 0.1}


def check(params: dict[str, Any], where: str) -> None:
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0 (Sun et al. use a base "
                      "temperature of 2 or 3)")
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
      losses.standardize(student_logits), losses.standardize(teacher_logits), temperature=temperature))
  hard = jnp.mean(losses.cross_entropy_with_integer_labels(student_logits, batch["label"]))
  total = kd_weight * soft + ce_weight * hard
  return total, {"kd": soft, "ce": hard}
