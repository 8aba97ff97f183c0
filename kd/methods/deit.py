"""DeiT: distillation through the distillation token (Touvron et al. 2021).

A distilled DeiT carries two learned tokens: the class token, whose head (the model's logits Z_s)
learns the labels, and the distillation token, whose head (`head_dist`, logits Z_d) learns from
the teacher's logits Z_t. Section 5 of the paper gives two objectives, with psi the softmax:

  hard (the paper's best, and the default): the teacher's decision y_t = argmax_c Z_t(c) is a label,

      loss = 1/2 CE(psi(Z_s), y) + 1/2 CE(psi(Z_d), y_t)

  soft (eq. 2, with the distillation token's head in place of the class token's in the KL term),

      loss = (1 - lambda) CE(psi(Z_s), y) + lambda tau^2 KL(psi(Z_t / tau) || psi(Z_d / tau))

  with tau = 3 and lambda = 0.1 in the paper. `distillation_weight` is lambda (hard: 1/2).

The true-label CE uses label smoothing (`label_smoothing`, the paper's epsilon = 0.1 "in all
experiments that use true labels"); the teacher's hard label is not smoothed.

This is the authors' released loss (github.com/facebookresearch/deit, `losses.py`
`DistillationLoss`, with `main.py`'s criterion), value for value:
  - the base criterion is timm's `LabelSmoothingCrossEntropy`: (1 - eps) NLL + eps * mean over all
    K classes of -log p, i.e. the target (1 - eps) one-hot + eps / K; the paper's text shares eps
    over the *other* classes, the code (followed here) over all of them;
  - hard: `F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))`, a batch mean; ties in the
    teacher's logits go to the first maximum, as `jnp.argmax` and `torch.argmax` both pick;
  - soft: `F.kl_div(log_softmax(Z_d / T), log_softmax(Z_t / T), reduction='sum', log_target=True)
    * (T * T) / outputs_kd.numel()`: the KL summed over the batch and the classes, then divided by
    B * K, the number of logits. This is the batch mean of the KL divided by K as well (the code
    keeps "the legacy PyTorch behavior", see its issue #61), so the soft term is K times smaller
    than eq. 2's batch mean; it is reproduced as released, since the paper's soft-distillation
    numbers come from that code;
  - the total: `base_loss * (1 - alpha) + distillation_loss * alpha`, alpha = 0.5 by default
    (`--distillation-alpha`), which gives the hard objective's halves.
With mixup or cutmix (the paper trains with both), `kd.augment.mixed_loss` mixes the true-label
term over the two labels, which equals the smoothed CE on timm's mixed smoothed targets; the
teacher's term, on the same mixed image, is unchanged.

The student's distillation-token logits come from a feature tap, `student_features=("head_dist",)`
(`kd.models.vit` with `distilled=True`: in training its logits are the class head's; evaluated, the
average of both heads, as timm's DeiT). No teacher feature is read, only its logits.

Reference: H. Touvron, M. Cord, M. Douze, F. Massa, A. Sablayrolles, H. Jegou, "Training
data-efficient image transformers & distillation through attention", ICML 2021, arXiv:2012.12877,
Section 5 (soft distillation, eq. 2; hard-label distillation; the distillation token).
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from kd import losses
from kd.errors import ConfigError
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "distillation": "hard",  # "hard" (argmax teacher labels) or "soft" (KL at temperature).
    "distillation_weight": 0.5,  # lambda: the code's alpha; the paper's soft runs use 0.1.
    "temperature": 3.0,  # tau, "soft" only (the paper's value).
    "label_smoothing": 0.1,  # On the true-label CE only.
    "student_features": ("head_dist",),  # The distillation token's logits.
}

DISTILLATION = ("hard", "soft")


def check(params: dict[str, Any], where: str) -> None:
  if params["distillation"] not in DISTILLATION:
    raise ConfigError(f"{where}.distillation={params['distillation']!r} is not a DeiT objective; use one "
                      f"of {DISTILLATION} (the paper's best: 'hard')")
  weight = params["distillation_weight"]
  if not common.is_number(weight) or not 0 <= weight <= 1:
    raise ConfigError(f"{where}.distillation_weight={weight!r} must be a number in [0, 1] (lambda: the "
                      "teacher term's share; the paper uses 0.5 hard, 0.1 soft)")
  smoothing = params["label_smoothing"]
  if not common.is_number(smoothing) or not 0 <= smoothing < 1:
    raise ConfigError(f"{where}.label_smoothing={smoothing!r} must be a number in [0, 1) (the paper "
                      "uses 0.1)")
  if not common.is_number(params["temperature"]) or not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']!r} must be a number > 0 (the paper "
                      "uses 3)")
  patterns = params["student_features"]
  if isinstance(patterns, str) or not isinstance(patterns, (tuple, list)) or len(patterns) != 1:
    raise ConfigError(f"{where}.student_features={patterns!r} must name one tap point, the student's "
                      "distillation-token logits, e.g. ('head_dist',) for kd.models.vit with distilled=True")


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  del params, teacher_shapes  # The teacher's logits only.
  if len(student_shapes) != 1:
    raise ConfigError(f"{where}.student_features selected {list(student_shapes)}: select exactly one tap "
                      "point, the distillation-token logits ('head_dist')")
  ((path, shape),) = student_shapes.items()
  if len(shape) != 2:
    raise ConfigError(f"{where}.student_features: {path} is {shape[1:]}, not logits [B, classes]: select "
                      "the distillation head's output ('head_dist' of a vit with distilled=True)")


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """timm's `LabelSmoothingCrossEntropy` per example: CE with the target (1 - eps) y + eps / K.

  Args:
    logits: [B, K] the student's class-token logits.
    labels: [B] integer labels.
    smoothing: eps in [0, 1).

  Returns:
    [B] (1 - eps) * -log p_y + eps * mean_k -log p_k.

  References:
    Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016, arXiv:1512.00567, Section 7;
    as DeiT trains with it (Touvron et al. 2021, arXiv:2012.12877, Section 5).
  """
  if not smoothing:
    return losses.cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.losses.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def soft_distillation(distillation_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
  """DeiT's released soft term: T^2 * sum over batch and classes of KL, / (B * K): a scalar.

  KL(softmax(t / T) || softmax(d / T)) summed over every example and class and divided by the number
  of logits, as `losses.py` `DistillationLoss` (reduction='sum', log_target=True, / numel).
  """
  per_example = losses.kl_divergence_with_logits(distillation_logits, teacher_logits,
                                                 temperature=temperature)
  return temperature**2 * jnp.sum(per_example) / distillation_logits.size


def hard_distillation(distillation_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """The batch mean of CE(softmax(d), argmax t): the teacher's decision as the label, a scalar."""
  teacher_labels = jnp.argmax(teacher_logits, axis=-1)
  return jnp.mean(losses.cross_entropy_with_integer_labels(distillation_logits, teacher_labels))


def loss(student_out, teacher_out, batch, *, distillation: str, distillation_weight: float,
         temperature: float, label_smoothing: float, student_features) -> tuple[Any, dict[str, Any]]:
  del student_features  # Resolved by the framework into the outputs' "features".
  (distillation_logits,) = student_out["features"].values()
  class_logits = student_out["logits"]
  if distillation_logits.shape != class_logits.shape:
    raise ConfigError(f"method: the distillation-token tap is {distillation_logits.shape[1:]}, the logits "
                      f"{class_logits.shape[1:]}: select the distillation head's logits ('head_dist')")
  teacher_logits = jax.lax.stop_gradient(teacher_out["logits"])
  ce = jnp.mean(smoothed_cross_entropy(class_logits, batch["label"], label_smoothing))
  if distillation == "hard":
    teacher_term = hard_distillation(distillation_logits, teacher_logits)
  elif distillation == "soft":
    teacher_term = soft_distillation(distillation_logits, teacher_logits, temperature)
  else:
    raise ConfigError(f"method.distillation={distillation!r} is not a DeiT objective; use one of {DISTILLATION}")
  total = (1.0 - distillation_weight) * ce + distillation_weight * teacher_term
  return total, {"ce": ce, f"{distillation}_distillation": teacher_term}
