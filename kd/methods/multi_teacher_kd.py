"""Knowledge distillation from each teacher of an ensemble, weighted (per-teacher soft targets).

With M teachers of logits t_1..t_M (an ensemble stage's members, tap points `member_<i>`, see
kd.models.ensemble) and weights w_i summing to 1,

    loss = kd_weight * T^2 * sum_i w_i KL(softmax(t_i / T) || softmax(s / T)) + ce_weight * CE(s, y),

which has the gradient of the cross-entropy to the average of the teachers' *softened* distributions,
(1/M) sum_i softmax(t_i / T) for equal weights: the "average of softened outputs" of You, Xu, Xu & Tao,
"Learning from Multiple Teacher Networks" (KDD 2017, Sec. 3.1), and Hinton et al.'s arithmetic mean of
soft targets (2015, Sec. 1). Distilling from an ensemble stage with `hinton_kd` instead softens the
ensemble's combined distribution (the members' probabilities averaged at T = 1, then divided by T in log
space); the two agree at T = 1. Reported: `kd` (the weighted sum), `kd_member_<i>` (each teacher's
term) and `ce`.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {"temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1, "teacher_weights": (),
                            "teacher_features": (r"re:member_\d+",), "student_features": ()}


def check(params: dict[str, Any], where: str) -> None:
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0")
  for key in ("kd_weight", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if any(not w >= 0 for w in params["teacher_weights"]) or (params["teacher_weights"] and
                                                          not sum(params["teacher_weights"]) > 0):
    raise ConfigError(f"{where}.teacher_weights={params['teacher_weights']!r} must be non-negative with a "
                      "positive sum (or () for equal weights)")


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  del student_shapes
  weights = params["teacher_weights"]
  if weights and len(weights) != len(teacher_shapes):
    raise ConfigError(f"{where}.teacher_weights has {len(weights)} weights for {len(teacher_shapes)} teachers "
                      f"({sorted(teacher_shapes)}): give one weight per teacher, or ()")


def loss(student_out, teacher_out, batch, *, temperature: float, kd_weight: float, ce_weight: float,
         teacher_weights, teacher_features, student_features) -> tuple[Any, dict[str, Any]]:
  del teacher_features, student_features
  members = list(jax.lax.stop_gradient(teacher_out["features"]).values())
  weights = (jnp.asarray(teacher_weights, jnp.float32) / sum(teacher_weights) if teacher_weights
             else jnp.full((len(members),), 1.0 / len(members)))
  student_logits = student_out["logits"]
  terms = [temperature**2 * jnp.mean(losses.kl_divergence_with_logits(student_logits, member, temperature=temperature))
           for member in members]
  soft = sum(w * term for w, term in zip(weights, terms))
  hard = jnp.mean(losses.cross_entropy_with_integer_labels(student_logits, batch["label"]))
  return kd_weight * soft + ce_weight * hard, {"kd": soft, "ce": hard,
                                               **{f"kd_member_{i}": term for i, term in enumerate(terms)}}
