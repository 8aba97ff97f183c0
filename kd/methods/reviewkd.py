"""Knowledge review (ReviewKD): fused student features of several stages match the teacher's.

The student's features of stages 1..n (shallow to deep) are fused from deep to shallow by
attention-based fusion (ABF, Section 3.3, Figure 3): at stage i, a 1x1 conv and BatchNorm bring the
student feature to `mid` channels; unless i is the deepest stage, the fused feature of stage i+1
is upsampled (nearest) to this resolution, and a 1x1 conv with a sigmoid over both gives two
attention maps that mix them. The mix goes on to stage i-1, and, resized (nearest) to the teacher's
resolution, through a 3x3 conv and BatchNorm to the teacher's channel count: F_i. The hierarchical
context loss (HCL, Section 3.4) compares F_i with the teacher's feature T_i at the full resolution
and at 4x4, 2x2 and 1x1 (adaptive average pooling, levels not below the resolution skipped), with
weights 1, 1/2, 1/4, 1/8:

    HCL = sum_i [mse(F_i, T_i) + sum_l w_l mse(pool_l(F_i), pool_l(T_i))] / (1 + sum_l w_l)

    loss = review_weight * HCL + ce_weight * CE(s, y) (+ kd_weight * T^2 * KL, the code's --use-kl)

This follows the authors' code (`ReviewKD`, `ABF`, `hcl` in CIFAR-100/model/reviewkd.py): `mid` is
min(512, channels of the deepest student feature); conv kernels start Kaiming-uniform with a = 1;
BatchNorm has PyTorch's defaults. A [B, C] feature (the pooled embedding) is a 1x1 map.

Features: for the CIFAR ResNets the code fuses the student's stage outputs and pooled feature and
compares them with the teacher's pre-ReLU stage outputs and pooled feature, e.g. resnet32x4 ->
resnet8x4:
    student_features=("layer1_0", "layer2_0", "layer3_0", "pool"),
    teacher_features=("layer1_4/preact", "layer2_4/preact", "layer3_4/preact", "pool").
The defaults `("conv0",)` fit the quickstart `cnn` (a single stage: no fusion, HCL only).

The loss weight defaults to the code's 1.0; its CIFAR script sets it per pair (5.0 for most pairs,
0.6 for resnet56 -> resnet20, 8.0 for ShuffleNetV2). The code also warms the weight up linearly
over the first 20 epochs; that warmup is not applied here, as the loss does not see the step. For
non-square maps, a pyramid level is skipped when it is not below both sides (the code checks the
height only, its maps being square).

Reference: P. Chen, S. Liu, H. Zhao, J. Jia, "Distilling Knowledge via Knowledge Review", CVPR
2021, arXiv:2104.09044.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.errors import ConfigError
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "student_features": ("conv0",),
    "teacher_features": ("conv0",),
    "review_weight": 1.0,
    "ce_weight": 1.0,
    "kd_weight": 0.0,
    "temperature": 4.0,
}

PYRAMID_LEVELS = (4, 2, 1)  # Output sizes of the pooled levels; the weight halves at each.
MAX_MID_CHANNELS = 512

# PyTorch's kaiming_uniform_(a=1): gain 1, U(-sqrt(3/fan_in), sqrt(3/fan_in)).
_kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
# PyTorch's default conv kernel (the attention conv, which the code leaves alone).
_torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def check(params: dict[str, Any], where: str) -> None:
  common.check_non_negative(params, ("review_weight", "ce_weight", "kd_weight"), where)
  common.check_positive(params, ("temperature",), where)
  if not params["student_features"] or len(params["student_features"]) != len(params["teacher_features"]):
    raise ConfigError(f"{where}: student_features {params['student_features']} and teacher_features "
                      f"{params['teacher_features']} must pair up one to one (same non-zero length), "
                      "shallow to deep")


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  del params
  # Its fusion upsamples deeper maps to shallower resolutions and its loss pools a spatial pyramid.
  common.reject_token_features("ReviewKD", student_shapes, teacher_shapes, where,
                               needs="feature maps [B,H,W,C] (or pooled [B,C])")
  if len(student_shapes) != len(teacher_shapes):
    raise ConfigError(f"{where}: {len(student_shapes)} student features but {len(teacher_shapes)} "
                      "teacher features after resolving the patterns; they must pair up one to one")
  for path, shape in list(student_shapes.items()) + list(teacher_shapes.items()):
    if len(shape) not in (2, 4):
      raise ConfigError(f"{where}: ReviewKD fuses feature maps [B,H,W,C] (or pooled [B,C]), but "
                        f"{path} is {shape}: pick convolutional stage outputs")


def as_map(feature: jax.Array) -> jax.Array:
  """[B, H, W, C] unchanged; a pooled [B, C] as [B, 1, 1, C] (the code's 1x1 average-pool output)."""
  return feature if feature.ndim == 4 else feature.reshape(feature.shape[0], 1, 1, -1)


def resize_nearest(x_BxHxWxC: jax.Array, size: Sequence[int]) -> jax.Array:
  """PyTorch's `F.interpolate(mode="nearest")`: output pixel o reads input floor(o * in / out)."""
  (height, width), (out_height, out_width) = x_BxHxWxC.shape[1:3], size
  rows = (jnp.arange(out_height) * height) // out_height
  cols = (jnp.arange(out_width) * width) // out_width
  return x_BxHxWxC[:, rows][:, :, cols]


def hcl(student_maps: Sequence[jax.Array], teacher_maps: Sequence[jax.Array]) -> jax.Array:
  """Hierarchical context loss (the code's `hcl`): a scalar, summed over the pairs of maps.

  Args:
    student_maps: fused student features F_i, [B, H_i, W_i, C_i] each.
    teacher_maps: teacher features T_i of the same shapes.

  Returns:
    sum_i of the weighted mean of mse at full resolution (weight 1) and at the pooled levels
    4, 2, 1 below the resolution (weights 1/2, 1/4, 1/8, in that order of the levels used).
  """
  total = 0.0
  for fs, ft in zip(student_maps, teacher_maps):
    pair_loss, weight, weight_sum = jnp.mean((fs - ft) ** 2), 1.0, 1.0
    for level in PYRAMID_LEVELS:
      if level >= min(fs.shape[1], fs.shape[2]):
        continue
      weight /= 2.0
      pooled_difference = (common.adaptive_average_pool(fs, level, level)
                           - common.adaptive_average_pool(ft, level, level))
      pair_loss = pair_loss + weight * jnp.mean(pooled_difference**2)
      weight_sum += weight
    total = total + pair_loss / weight_sum
  return total


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class ABF(nn.Module):
  """Attention-based fusion of one stage (the code's `ABF`); returns (F_i, the mix for stage i-1).

  Attributes:
    mid_channels: channels of the mix passed between stages.
    out_channels: the teacher's channels at this stage.
    fuse: whether a deeper stage's mix is fused in (False for the deepest stage).
  """

  mid_channels: int
  out_channels: int
  fuse: bool

  @nn.compact
  def __call__(self, x_BxHxWxC, residual, out_size: Sequence[int], train: bool):
    x = nn.Conv(self.mid_channels, (1, 1), use_bias=False, kernel_init=_kaiming_uniform_a1,
                name="conv1")(x_BxHxWxC)
    x = _batch_norm(train, "bn1")(x)
    if self.fuse:
      residual = resize_nearest(residual, x.shape[1:3])
      attention = nn.Conv(2, (1, 1), kernel_init=_torch_default_kernel, name="att_conv")(
          jnp.concatenate([x, residual], axis=-1))
      attention = nn.sigmoid(attention)
      x = x * attention[..., 0:1] + residual * attention[..., 1:2]
    if tuple(x.shape[1:3]) != tuple(out_size):
      x = resize_nearest(x, out_size)
    out = nn.Conv(self.out_channels, (3, 3), padding=1, use_bias=False, kernel_init=_kaiming_uniform_a1,
                  name="conv2")(x)
    return _batch_norm(train, "bn2")(out), x


class ReviewFusion(nn.Module):
  """ABFs over the student's stages, deep to shallow; returns {"fused": [F_1, ..., F_n]} (shallow first).

  Attributes:
    teacher_shapes: the teacher's feature shapes, shallow to deep (a [B, C] one counts as 1x1).
  """

  teacher_shapes: Sequence[tuple[int, ...]]

  @nn.compact
  def __call__(self, student_out, teacher_out, batch, train: bool):
    del teacher_out, batch
    student_maps = [as_map(feature) for feature in student_out["features"].values()]
    mid_channels = min(MAX_MID_CHANNELS, student_maps[-1].shape[-1])
    fused, residual = [None] * len(student_maps), None
    for level in reversed(range(len(student_maps))):
      teacher_shape = self.teacher_shapes[level]
      out_size = tuple(teacher_shape[1:3]) if len(teacher_shape) == 4 else (1, 1)
      abf = ABF(mid_channels, teacher_shape[-1], fuse=residual is not None, name=f"abf{level}")
      fused[level], residual = abf(student_maps[level], residual, out_size, train)
    return {"fused": fused}


def make_connector(params, student_shapes, teacher_shapes, num_examples):
  del params, student_shapes, num_examples  # The fusion holds no per-example state.
  return ReviewFusion(teacher_shapes=tuple(tuple(shape) for shape in teacher_shapes.values()))


def loss(student_out, teacher_out, batch, *, student_features, teacher_features, review_weight: float,
         ce_weight: float, kd_weight: float, temperature: float) -> tuple[Any, dict[str, Any]]:
  """review_weight * HCL(fused student features, teacher features) + ce_weight * CE (+ KD)."""
  del student_features, teacher_features  # Resolved by the framework into the outputs' "features".
  targets = [as_map(jax.lax.stop_gradient(t)) for t in teacher_out["features"].values()]
  review = hcl(student_out["connector"]["fused"], targets)
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  total = review_weight * review + ce_weight * ce
  return common.add_kd_term(total, {"hcl": review, "ce": ce}, student_out["logits"], teacher_out["logits"],
                            kd_weight=kd_weight, temperature=temperature)
