"""FSP: the student matches the teacher's "flow of solution procedure" between consecutive layers.

For two feature maps F1 [B, H, W, M] and F2 [B, H, W, N] of one network at the same resolution,
the FSP matrix of an example is the Gram matrix between their channels (Section 3.2, eq. 1):

    G_{i,j} = sum_{h,w} F1_{h,w,i} F2_{h,w,j} / (H * W)          G [B, M, N]

Selected features f_0, ..., f_{n-1} of each network (n >= 2) give n - 1 matrices, one per
consecutive pair (f_k, f_{k+1}); where the two differ in resolution, the larger is average-pooled
to the smaller (RepDistiller's `FSP.compute_fsp`, with `F.adaptive_avg_pool2d`). The student's and
the teacher's matrices must have the same shape, so the k-th student and teacher features must have
the same number of channels (their resolutions may differ). The paper pairs maps of one resolution
(the first and last layer of a residual section); RepDistiller pairs consecutive stage outputs and
pools, which is what the defaults of the zoo experiments do. The distance (eq. 2) is

    fsp = sum_k mean_{b,i,j} (G^S_k - G^T_k)^2
    loss = fsp_weight * fsp + ce_weight * CE(student_logits, labels)

The paper sums the squared differences over (i, j) with equal weights lambda_k; RepDistiller
(`compute_loss`) takes their mean, so its fsp_weight absorbs the 1/(M N).

Training schedule. The paper trains in two stages: first the student
minimises the FSP loss alone, then it is trained on the task (its learning procedure, Section 3).
RepDistiller does the same: `helper/pretrain.py` trains the student's feature layers on the unweighted FSP loss for
`init_epochs` = 30 epochs, then the main 240 epochs use cross-entropy alone (`loss_kd = 0` for
'fsp' in `helper/loops.py`), so its `-b 50` multiplies nothing. This module is the one-stage form:
cross-entropy plus fsp_weight (50 by default, the value in the benchmark's script) times the FSP
loss, from the first step; a two-stage run is `ce_weight = 0` (the student's head gets no gradient)
followed by supervised training of that student, as `tian2020_crd.py` runs it: `fsp_init` (this loss
alone, fsp_weight 1), then the `fsp` stage on labels from it (`init_from="stage:fsp_init"`).

Features follow the benchmark's resnets: the stem and the three stage outputs (the reference's
`feat[:-1]`, e.g. `stem`, `layer1_4`, `layer2_4`, `layer3_4` for resnet32x4 against `stem`,
`layer1_0`, `layer2_0`, `layer3_0` for resnet8x4, whose widths are the same).

Reference: J. Yim, D. Joo, J. Bae, J. Kim, "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning", CVPR 2017, eq. 1-2. The CRD benchmark:
Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, arXiv:1910.10699
(code: RepDistiller, `distiller_zoo/FSP.py`).
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd.errors import ConfigError
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    # A consecutive pair that every quickstart `cnn` has; zoo experiments name the stem and stages.
    "student_features": ("conv0", "norm0"),
    "teacher_features": ("conv0", "norm0"),
    "fsp_weight": 50.0,
    "ce_weight": 1.0,
}


def check(params: dict[str, Any], where: str) -> None:
  common.check_weights(params, ("fsp_weight", "ce_weight"), where)
  common.check_feature_patterns(params, where, ("layer1_4", "layer2_4", "layer3_4"))


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  del params
  # An FSP matrix pairs two layers' channels over shared spatial positions, and its paper and code
  # pool maps between stages; token layers of different widths have no such pooling.
  common.reject_token_features("FSP", student_shapes, teacher_shapes, where)
  common.check_feature_count(student_shapes, teacher_shapes, where)
  if len(student_shapes) < 2:
    raise ConfigError(f"{where}: FSP matrices are built between consecutive features, but "
                      f"student_features selected only {list(student_shapes)}: select at least two, "
                      "e.g. ('stem', 'layer1_4', 'layer2_4', 'layer3_4')")
  for who, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
    for path, shape in shapes.items():
      if len(shape) != 4:
        raise ConfigError(f"{where}: FSP needs feature maps [B,H,W,C], but {who} feature {path} is "
                          f"{shape[1:]}: pick convolutional tap points")
    paths = list(shapes)
    for bottom, top in zip(paths, paths[1:]):
      if not common.poolable(shapes[bottom], shapes[top]):
        raise ConfigError(
            f"{where}: {who} features {bottom} {shapes[bottom][1:]} and {top} {shapes[top][1:]} "
            "cannot be pooled to one resolution for their FSP matrix: pick consecutive maps whose "
            "height and width are both >= (or both <=) the other's")
  for (s_path, s_shape), (t_path, t_shape) in zip(student_shapes.items(), teacher_shapes.items()):
    if s_shape[-1] != t_shape[-1]:
      raise ConfigError(
          f"{where}: FSP matrices of student and teacher must have the same shape, but student "
          f"feature {s_path} has {s_shape[-1]} channels and teacher feature {t_path} {t_shape[-1]}: "
          "pair features of equal width (resolutions may differ)")


def fsp_matrix(bottom_BxHxWxM: jax.Array, top_BxHxWxN: jax.Array) -> jax.Array:
  """G_{i,j} = mean over positions of bottom_i * top_j, the larger map pooled first: [B, M, N].

  Args:
    bottom_BxHxWxM: [B, H, W, M] the earlier feature map.
    top_BxHxWxN: [B, H', W', N] the later one.

  Returns:
    [B, M, N] the FSP matrix of each example.

  References:
    Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation", CVPR 2017, eq. 1.
  """
  bottom_BxHxWxM, top_BxHxWxN = common.match_resolution(bottom_BxHxWxM, top_BxHxWxN)
  _, height, width, _ = bottom_BxHxWxM.shape
  return jnp.einsum("bhwi,bhwj->bij", bottom_BxHxWxM.astype(jnp.float32),
                    top_BxHxWxN.astype(jnp.float32)) / (height * width)


def fsp_matrices(features: list[jax.Array]) -> list[jax.Array]:
  """The FSP matrices of each consecutive pair of features."""
  return [fsp_matrix(bottom, top) for bottom, top in zip(features, features[1:])]


def fsp_distance(student_features: list[jax.Array], teacher_features: list[jax.Array]) -> jax.Array:
  """sum over consecutive pairs k of mean_{b,i,j} (G^S_k - G^T_k)^2 (RepDistiller's FSP loss)."""
  return sum(jnp.mean(jnp.square(s - t))
             for s, t in zip(fsp_matrices(student_features), fsp_matrices(teacher_features)))


def loss(student_out, teacher_out, batch, *, student_features, teacher_features, fsp_weight: float,
         ce_weight: float) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # Resolved by the framework into the outputs' "features".
  teacher_maps = [jax.lax.stop_gradient(t) for t in teacher_out["features"].values()]
  fsp = fsp_distance(list(student_out["features"].values()), teacher_maps)
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  return fsp_weight * fsp + ce_weight * ce, {"fsp": fsp, "ce": ce}
