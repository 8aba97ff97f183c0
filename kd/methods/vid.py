"""Variational information distillation (VID): maximise a variational bound on I(teacher; student).

For each pair of a student feature s and a teacher feature t, VID fits a Gaussian q(t | s) whose
mean is a regression of the student's feature, mu(s), and whose variance is a learned positive
number per teacher channel c, sigma_c^2 = softplus(alpha_c) + epsilon (Section 3, the form for
intermediate feature maps). Maximising E[log q(t | s)] maximises a lower bound on the mutual
information, so the loss is the Gaussian negative log-likelihood, up to a constant:

    vid = sum_pairs mean_{b,h,w,c} 1/2 (log sigma_c^2 + (mu_{h,w,c}(s) - t_{h,w,c})^2 / sigma_c^2)
    loss = vid_weight * vid + ce_weight * CE(student_logits, labels)

Unlike FitNets' L2, a channel the student cannot predict learns a large variance and weighs less.
The loss is not bounded below by 0: for a residual r of one channel, 1/2 (log v + r^2 / v) is
smallest at v = r^2, where it is 1/2 (log r^2 + 1).

The connector follows RepDistiller's `VIDLoss` (from the authors' code): mu is three 1x1
convolutions without bias, with ReLUs between them and C_T channels throughout (C_T: the teacher
feature's channels), initialised like PyTorch's convolutions; alpha starts at
softplus^-1(init_variance - epsilon), so every variance starts at init_variance = 5; epsilon = 1e-5.
Where the resolutions differ, the larger map is average-pooled to the smaller first (the student's
before the regressor). An embedding [B, D] works too: its 1x1 convolution is a dense layer.

Defaults of the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020, arXiv:1910.10699; RepDistiller,
`distiller_zoo/VID.py`, `scripts/run_cifar_distill.sh`): the three stage outputs (the reference's
`feat[1:-1]`, e.g. `layer1_4`, `layer2_4`, `layer3_4` for resnet32x4), vid_weight = 1 (`-b 1`),
ce_weight = 1, no KD term.

Reference: S. Ahn, S. X. Hu, A. Damianou, N. D. Lawrence, Z. Dai, "Variational Information
Distillation for Knowledge Transfer", CVPR 2019, arXiv:1904.05835, Section 3.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd.errors import ConfigError
from kd.methods import common
from kd.models import cifar_resnet

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    # Zoo experiments name the stage outputs, e.g. ("layer1_4", "layer2_4", "layer3_4").
    "student_features": ("conv0",),
    "teacher_features": ("conv0",),
    "vid_weight": 1.0,
    "ce_weight": 1.0,
    "init_variance": 5.0,
    "variance_epsilon": 1e-5,
}


def check(params: dict[str, Any], where: str) -> None:
  common.check_weights(params, ("vid_weight", "ce_weight"), where)
  if not common.is_number(params["variance_epsilon"]) or not params["variance_epsilon"] > 0:
    raise ConfigError(f"{where}.variance_epsilon={params['variance_epsilon']!r} must be a number > 0 "
                      "(it keeps the variance away from 0; RepDistiller uses 1e-5)")
  if (not common.is_number(params["init_variance"])
      or not params["init_variance"] > params["variance_epsilon"]):
    raise ConfigError(f"{where}.init_variance={params['init_variance']!r} must be a number > "
                      f"variance_epsilon={params['variance_epsilon']} (RepDistiller uses 5.0)")
  common.check_feature_patterns(params, where, ("layer1_4", "layer2_4", "layer3_4"))


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  del params
  # VID's regressor and per-channel variances follow the paper's convolutional maps (or embeddings).
  common.reject_token_features("VID", student_shapes, teacher_shapes, where,
                               needs="feature maps [B,H,W,C] or embeddings [B,D]")
  common.check_feature_count(student_shapes, teacher_shapes, where)
  for (s_path, s_shape), (t_path, t_shape) in zip(student_shapes.items(), teacher_shapes.items()):
    maps = len(s_shape) == 4 and len(t_shape) == 4 and common.poolable(s_shape, t_shape)
    embeddings = len(s_shape) == 2 and len(t_shape) == 2
    if not (maps or embeddings):
      raise ConfigError(
          f"{where}: VID regresses teacher feature {t_path} {t_shape[1:]} from student feature "
          f"{s_path} {s_shape[1:]} with 1x1 convolutions, which needs both [B,H,W,C] with height and "
          "width both >= (or both <=) the other's (the larger is pooled), or both [B,D]: pick other "
          "features")


class VariationalRegressors(nn.Module):
  """Per pair, the predicted mean of the teacher's feature and the per-channel variance.

  Returns {"means": [[B, ..., C_T]], "variances": [[C_T]]}.
  """

  teacher_shapes: Sequence[tuple[int, ...]]
  init_variance: float = 5.0
  variance_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, student_out, teacher_out, batch, train: bool):
    del teacher_out, batch, train
    # softplus^-1(v - eps) = log(exp(v - eps) - 1), RepDistiller's initial log_scale.
    alpha_init = float(np.log(np.expm1(self.init_variance - self.variance_epsilon)))
    means, variances = [], []
    for index, (feature, shape) in enumerate(zip(student_out["features"].values(), self.teacher_shapes)):
      if len(shape) == 4:
        feature = common.adaptive_average_pool(feature, *_pooled_resolution(feature.shape, shape))
      channels = shape[-1]
      x = nn.relu(_conv1x1(channels, f"regressor{index}_conv0")(feature.astype(jnp.float32)))
      x = nn.relu(_conv1x1(channels, f"regressor{index}_conv1")(x))
      means.append(_conv1x1(channels, f"regressor{index}_conv2")(x))
      alpha = self.param(f"alpha{index}", nn.initializers.constant(alpha_init), (channels,), jnp.float32)
      variances.append(jax.nn.softplus(alpha) + self.variance_epsilon)
    return {"means": means, "variances": variances}


def _conv1x1(channels: int, name: str) -> nn.Dense:
  # A 1x1 convolution of a channels-last map is a dense layer over its last axis (and works on [B, D]).
  return nn.Dense(channels, use_bias=False, kernel_init=cifar_resnet.torch_default_kernel, name=name)


def _pooled_resolution(student_shape, teacher_shape) -> tuple[int, int]:
  """The resolution the regressor works at: the smaller of the two maps'."""
  return min(student_shape[1], teacher_shape[1]), min(student_shape[2], teacher_shape[2])


def make_connector(params, student_shapes, teacher_shapes, num_examples):
  del student_shapes, num_examples  # The regressors hold no per-example state.
  return VariationalRegressors(teacher_shapes=tuple(teacher_shapes.values()),
                               init_variance=params["init_variance"],
                               variance_epsilon=params["variance_epsilon"])


def gaussian_nll(mean: jax.Array, variance_C: jax.Array, target: jax.Array) -> jax.Array:
  """1/2 (log sigma^2 + (mu - t)^2 / sigma^2), averaged over all but the batch axis: [B].

  Args:
    mean: [B, ..., C] the predicted mean mu of the target.
    variance_C: [C] the variance sigma^2 of each channel (> 0).
    target: [B, ..., C] the teacher's feature t.

  Returns:
    [B] the negative log-likelihood of each example, less the constant 1/2 log(2 pi).

  References:
    Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation for Knowledge
    Transfer", CVPR 2019, arXiv:1904.05835, Section 3: -log q(t | s) for a Gaussian with a
    regressed mean and one variance per channel.
  """
  terms = 0.5 * (jnp.log(variance_C) + jnp.square(mean - target) / variance_C)
  return jnp.mean(terms.reshape(terms.shape[0], -1), axis=1)


def loss(student_out, teacher_out, batch, *, student_features, teacher_features, vid_weight: float,
         ce_weight: float, init_variance: float, variance_epsilon: float) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # Resolved by the framework into the outputs' "features".
  del init_variance, variance_epsilon  # The connector's.
  connector = student_out["connector"]
  vid = 0.0
  for mean, variance, target in zip(connector["means"], connector["variances"],
                                    teacher_out["features"].values()):
    target = jax.lax.stop_gradient(target).astype(jnp.float32)
    if target.ndim == 4:
      target = common.adaptive_average_pool(target, mean.shape[1], mean.shape[2])
    vid = vid + jnp.mean(gaussian_nll(mean, variance, target))
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  return vid_weight * vid + ce_weight * ce, {"vid": vid, "ce": ce}
