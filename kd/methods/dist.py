"""DIST: distillation by correlation, from a stronger teacher (Huang et al. 2022).

Instead of matching the teacher's probabilities exactly (KL), the student matches their relations,
measured with the paper's Pearson distance d_p(u, v) = 1 - rho_p(u, v). With
Y = softmax(Z / tau) the [B, C] probabilities of a batch:

    L_inter = (1/B) sum_i d_p(Y^S_{i,:}, Y^T_{i,:})   each example's ranking of the classes
    L_intra = (1/C) sum_j d_p(Y^S_{:,j}, Y^T_{:,j})   each class's ranking of the examples

    loss = beta * tau^2 * L_inter + gamma * tau^2 * L_intra + ce_weight * CE(s, y)

d_p ignores a positive scale and shift of either argument, so a student whose predictions are an
affine function of the teacher's (e.g. less confident) pays nothing. The tau^2 factor follows
the authors' code (`DIST.forward` in github.com/hunto/image_classification_sota,
lib/models/losses/dist_kd.py).

Defaults: the authors' CIFAR-100 recipe (`configs/strategies/distill/dist_cifar.yaml` in that
repository): `kd: dist_t4`, i.e. tau=4 and beta=gamma=1 inside the DIST loss, whose sum the trainer
scales by `kd_loss_weight: 2`, hence beta=gamma=2 here, with CE weight 1. Their ImageNet recipes
use `kd: dist`: tau=1, beta=gamma=1 inside the DIST loss.

L_intra correlates each class's probabilities across the batch, so it depends on the whole batch
(unlike the per-example terms of other methods) and needs at least two examples: with one, every
column is constant, rho_p is 0 and L_intra is the constant 1 (no gradient).

Reference: T. Huang, S. You, F. Wang, C. Qian, C. Xu, "Knowledge Distillation from A Stronger
Teacher", NeurIPS 2022, arXiv:2205.10536. Code: github.com/hunto/DIST_KD.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {"beta": 2.0, "gamma": 2.0, "temperature": 4.0, "ce_weight": 1.0}


def check(params: dict[str, Any], where: str) -> None:
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0 "
                      "(Huang et al. use 1 on ImageNet, 4 on CIFAR-100)")
  for key in ("beta", "gamma", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if params["beta"] == 0 and params["gamma"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: beta, gamma and ce_weight are all 0, so nothing is learned; set one > 0")


def loss(student_out, teacher_out, batch, *, beta: float, gamma: float, temperature: float,
         ce_weight: float) -> tuple[Any, dict[str, Any]]:
  teacher_logits = jax.lax.stop_gradient(teacher_out["logits"])
  student_logits = student_out["logits"]
  student_probs = jax.nn.softmax(student_logits / temperature, axis=-1)
  teacher_probs = jax.nn.softmax(teacher_logits / temperature, axis=-1)
  inter = temperature**2 * (1.0 - jnp.mean(losses.pearson_correlation(student_probs, teacher_probs, axis=-1)))
  intra = temperature**2 * (1.0 - jnp.mean(losses.pearson_correlation(student_probs, teacher_probs, axis=0)))
  hard = jnp.mean(losses.cross_entropy_with_integer_labels(student_logits, batch["label"]))
  total = beta * inter + gamma * intra + ce_weight * hard
  return total, {"inter": inter, "intra": intra, "ce": hard}
