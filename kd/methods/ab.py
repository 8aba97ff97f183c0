"""Activation boundaries (AB): the student's neurons fire where the teacher's do.

A ReLU neuron is active where its pre-activation is > 0; the boundary between its active and
inactive regions is what the student should copy, not the response's value. The student's
pre-ReLU feature s goes through a connector r (a 1x1 convolution and BatchNorm, mapping its
channels to the teacher's) and is compared with the teacher's pre-ReLU feature t by the
alternative loss of eq. 4, a squared hinge with margin mu on each element:

    l(r(s), t) = rho(t) * max(mu - r(s), 0)^2 + (1 - rho(t)) * max(mu + r(s), 0)^2,
    rho(t) = 1 if t > 0 else 0

which is 0 once r(s) >= mu wherever t > 0 and r(s) <= -mu wherever t <= 0. For n feature pairs,
as the authors' code and RepDistiller's `ABLoss` do, each pair's elements are summed, averaged
over the batch and weighted 2^(k - n + 1) (the last pair 1, the one before 1/2, ...):

    ab = sum_k 2^(k - n + 1) mean_b sum_{h,w,c} l(r_k(s_k), t_k)
    loss = ab_weight * ab + ce_weight * CE(student_logits, labels)

ab_weight = 3/1000 is the factor both codes apply (`loss / 1000 * 3`). The margin mu is a
parameter, 1.0 by default: the value both the authors' code (`cifar10_AB_distillation.py`) and
RepDistiller use. (A margin derived from the teacher's BatchNorm statistics belongs to the later
"overhaul" distillation of Heo et al., ICCV 2019, not to AB.)

Connector: as in the authors' code, a 1x1 convolution without bias, initialised with
N(0, 2 / C_T), then BatchNorm (scale 1, bias 0). `connector=False` uses the student's features
directly and needs equal shapes; the authors drop the connector when the widths match, and
RepDistiller's `Connector` uses a 3x3 `ConvReg` when they differ. A 1x1 convolution keeps the
resolution, so student and teacher features must have the same height and width.

Training schedule. The paper transfers activation boundaries in an
initialisation stage (the student and connectors minimise the AB loss alone), then trains the
student on the task. RepDistiller does the same: 30 `init_epochs` of the AB loss alone
(`helper/pretrain.py`), then cross-entropy only (`loss_kd = 0` for 'abound' in `helper/loops.py`;
its `-b 1` multiplies nothing). This module is the one-stage form: cross-entropy plus
ab_weight times the AB loss from the first step; `ce_weight = 0` gives the initialisation stage, and
`tian2020_crd.py` runs RepDistiller's two stages: `ab_init` (this loss alone), then the `ab` stage on
labels from that student (`init_from="stage:ab_init"`).

Features: pre-ReLU maps. For the zoo's resnets these are the `preact` tap points of the stage
outputs (the reference's `feat[1:-1]` with `preact=True`, e.g. `layer1_4/preact`,
`layer2_4/preact`, `layer3_4/preact` for resnet32x4); for the quickstart `cnn`, `norm0` (BatchNorm,
before its ReLU).

Reference: B. Heo, M. Lee, S. Yun, J. Y. Choi, "Knowledge Transfer via Distillation of Activation
Boundaries Formed by Hidden Neurons", AAAI 2019, arXiv:1811.03233, eq. 4. The CRD benchmark: Tian,
Krishnan & Isola, ICLR 2020, arXiv:1910.10699 (code: RepDistiller, `distiller_zoo/AB.py`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.errors import ConfigError
from kd.methods import common
from kd.models import cifar_resnet

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    # Pre-ReLU features; zoo experiments name e.g. ("layer1_4/preact", "layer2_4/preact", ...).
    "student_features": ("norm0",),
    "teacher_features": ("norm0",),
    "margin": 1.0,
    "connector": True,  # False: the shapes must already match.
    "ab_weight": 3e-3,
    "ce_weight": 1.0,
}


def check(params: dict[str, Any], where: str) -> None:
  common.check_weights(params, ("ab_weight", "ce_weight"), where)
  if not common.is_number(params["margin"]) or not params["margin"] >= 0:
    raise ConfigError(f"{where}.margin={params['margin']!r} must be a number >= 0 (the paper's mu; 1.0 "
                      "in the authors' code)")
  if not isinstance(params["connector"], bool):
    raise ConfigError(f"{where}.connector={params['connector']!r} must be True or False")
  common.check_feature_patterns(params, where, ("layer1_4", "layer2_4", "layer3_4"))


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  # Any rank works: the 1x1 connector is a dense layer over the channels of every position, so a 1-D
  # map [B, L, C] (ConvNet1D on MNIST-1D) is AB's own setting. Tokens [B, N, C] have the same shape
  # and go through the same math, but their boundaries are ReLU's only where the tap is pre-ReLU.
  common.check_feature_count(student_shapes, teacher_shapes, where)
  for (s_path, s_shape), (t_path, t_shape) in zip(student_shapes.items(), teacher_shapes.items()):
    if not params["connector"]:
      if s_shape != t_shape:
        raise ConfigError(
            f"{where}: student feature {s_path} {s_shape[1:]} and teacher feature {t_path} "
            f"{t_shape[1:]} differ and connector=False: set {where}.connector=True, or pick features "
            "of equal shape")
    elif len(s_shape) != len(t_shape) or s_shape[1:-1] != t_shape[1:-1]:
      raise ConfigError(
          f"{where}: AB's 1x1 connector keeps the resolution, but student feature {s_path} is "
          f"{s_shape[1:]} and teacher feature {t_path} is {t_shape[1:]}: pick pre-ReLU features of the "
          "same height and width (channels may differ)")


class BoundaryConnectors(nn.Module):
  """Per pair, a 1x1 convolution and BatchNorm to the teacher's channels: {"features": [...]}."""

  teacher_channels: Sequence[int]

  @nn.compact
  def __call__(self, student_out, teacher_out, batch, train: bool):
    del teacher_out, batch
    connected = []
    for index, (feature, channels) in enumerate(zip(student_out["features"].values(),
                                                    self.teacher_channels)):
      # A 1x1 convolution of a channels-last map is a dense layer over its last axis.
      x = nn.Dense(channels, use_bias=False, kernel_init=cifar_resnet.he_normal_fan_out,
                   name=f"connector{index}")(feature.astype(jnp.float32))
      connected.append(cifar_resnet.batch_norm(train)(name=f"connector{index}_norm")(x))
    return {"features": connected}


def make_connector(params, student_shapes, teacher_shapes, num_examples):
  del student_shapes, num_examples  # The connectors hold no per-example state.
  if not params["connector"]:
    return None
  return BoundaryConnectors(teacher_channels=tuple(shape[-1] for shape in teacher_shapes.values()))


def boundary_loss(student: jax.Array, teacher: jax.Array, margin: float = 1.0) -> jax.Array:
  """The alternative (squared hinge) loss of eq. 4, summed over all but the batch axis: [B].

  Args:
    student: [B, ...] the connected student pre-activation r(s).
    teacher: [B, ...] the teacher's pre-activation t, same shape.
    margin: mu >= 0; the student is penalised until it is mu on the right side of 0.

  Returns:
    [B] sum over elements of max(mu - r(s), 0)^2 where t > 0 and max(mu + r(s), 0)^2 where t <= 0.

  References:
    Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by
    Hidden Neurons", AAAI 2019, arXiv:1811.03233, eq. 4.
  """
  terms = jnp.where(teacher > 0, jnp.square(jax.nn.relu(margin - student)),
                    jnp.square(jax.nn.relu(margin + student)))
  return jnp.sum(terms.reshape(terms.shape[0], -1), axis=1)


def loss(student_out, teacher_out, batch, *, student_features, teacher_features, margin: float,
         connector: bool, ab_weight: float, ce_weight: float) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # Resolved by the framework into the outputs' "features".
  students = student_out["connector"]["features"] if connector else list(student_out["features"].values())
  teachers = [jax.lax.stop_gradient(t).astype(jnp.float32) for t in teacher_out["features"].values()]
  count = len(teachers)
  ab = sum(2.0**(k - count + 1) * jnp.mean(boundary_loss(s, t, margin))
           for k, (s, t) in enumerate(zip(students, teachers)))
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  return ab_weight * ab + ce_weight * ce, {"ab": ab, "ce": ce}
