"""Factor transfer (FT): the student's translated features match the teacher's paraphrased factors.

Two stages, two methods:

  `ft_paraphraser` (PARAPHRASER below) trains a paraphraser P, a convolutional autoencoder on the
  teacher's feature map x [B,H,W,m]: the encoder maps it to k*m channels (k, the paraphrase rate),
  the decoder back to m, trained with the reconstruction loss mean((P(x) - x)^2) (Section 3.1,
  L_rec = ||x - P(x)||^2, as an element mean). Only the paraphraser learns; the stage's student
  model gets no gradient from this loss (it is trained, and exported, as an unused by-product). The
  paraphraser's variables are exported with the stage (`<stage>/connector/`).

  `ft` (this module) loads that export (`paraphraser_stage`) as fixed values: the teacher factor
  F_T = encoder(x) with the paraphraser frozen (not in the optimizer, BatchNorm in inference mode),
  while a translator (three 3x3 conv - BatchNorm - LeakyReLU(0.1) layers to k*m channels) turns the
  student's feature into the student factor F_S. The loss (eq. 3 and 4) is

      ce_weight * CE(s, y) + beta * mean_b || F_T/||F_T||_2 - F_S/||F_S||_2 ||_p

  with each factor flattened per example and p = 1, as in the paper, and k = 0.5 (the paper's and
  RepDistiller's paraphrase rate). beta defaults to 1: the L1 distance of two unit vectors grows
  with the factor's size (up to sqrt(2 H W k m)), so the weight is a per-setting choice.
  Where the two maps differ in resolution the larger factor is average-pooled to the smaller, as the
  CRD benchmark's FT does.

The layers follow the CRD benchmark's `Paraphraser` and `Translator` (RepDistiller): encoder conv
m->m, m->km, km->km; decoder transposed conv km->km, km->m, m->m; each 3x3, stride 1, with BatchNorm
and LeakyReLU(0.1). RepDistiller's loss differs from the paper's (it compares channel means of
squared factors with a mean absolute difference, weighted 200); this module follows the paper.

Reference: J. Kim, S. Park, N. Kwak, "Paraphrasing Complex Network: Network Compression via Factor
Transfer", NeurIPS 2018, arXiv:1802.04977.
"""

import types
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.errors import ConfigError
from kd.methods import common

PRETRAINED = "pretrained"  # The connector collection that holds an earlier stage's exported connector.

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "student_features": ("conv0",),
    "teacher_features": ("conv1",),
    "paraphraser_stage": "paraphraser",  # The earlier stage whose exported paraphraser is loaded.
    "rate": 0.5,  # k: the factor has k * (teacher channels) channels.
    "beta": 1.0,
    "p": 1.0,
    "ce_weight": 1.0,
}
PARAPHRASER_DEFAULTS: dict[str, Any] = {
    "teacher_features": ("conv1",),
    "rate": 0.5,
    "reconstruction_weight": 1.0,
}


def factor_channels(teacher_channels: int, rate: float) -> int:
  """k * m, at least 1 (int() as RepDistiller's Paraphraser)."""
  return max(1, int(teacher_channels * rate))


def _check_rate(params, where: str) -> None:
  if not common.is_number(params["rate"]) or not params["rate"] > 0:
    raise ConfigError(f"{where}.rate={params['rate']!r} must be a number > 0 (the paraphrase rate k; "
                      "the paper uses 0.5)")


def _check_map(path: str, shape, where: str, key: str) -> None:
  if len(shape) != 4:
    raise ConfigError(f"{where}.{key}: FT's paraphraser and translator are 3x3 convolutions over feature "
                      f"maps [B,H,W,C], but {path} is {tuple(shape)}: pick a convolutional tap point")


# The paraphraser stage.


def check_paraphraser(params: dict[str, Any], where: str) -> None:
  _check_rate(params, where)
  common.check_positive(params, ("reconstruction_weight",), where)
  patterns = params["teacher_features"]
  if isinstance(patterns, str) or not isinstance(patterns, (tuple, list)) or len(patterns) != 1:
    raise ConfigError(f"{where}.teacher_features={patterns!r} must name one tap point, e.g. ('conv1',)")


def check_paraphraser_features(params, student_shapes, teacher_shapes, where: str) -> None:
  del params, student_shapes
  common.reject_token_features("FT's paraphraser", {}, teacher_shapes, where)
  if len(teacher_shapes) != 1:
    raise ConfigError(f"{where}.teacher_features selected {list(teacher_shapes)}: select exactly one map")
  for path, shape in teacher_shapes.items():
    _check_map(path, shape, where, "teacher_features")


class _ConvLayer(nn.Module):
  """3x3 conv (or transposed conv), stride 1, BatchNorm, LeakyReLU(0.1)."""

  channels: int
  transpose: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    conv = nn.ConvTranspose if self.transpose else nn.Conv
    x = conv(self.channels, (3, 3), padding="SAME", name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x)
    return nn.leaky_relu(x, 0.1)


class Paraphraser(nn.Module):
  """The autoencoder on the teacher's feature; the connector of the `ft_paraphraser` stage.

  Called as a connector it returns {"reconstruction": P(x), "target": x} (x without gradient).
  `encode` gives the teacher factor, as the `ft` stage uses it.
  """

  channels: int  # m, the teacher feature's channels.
  rate: float

  def setup(self):
    k_m = factor_channels(self.channels, self.rate)
    self.encoder = [_ConvLayer(self.channels), _ConvLayer(k_m), _ConvLayer(k_m)]
    self.decoder = [_ConvLayer(k_m, transpose=True), _ConvLayer(self.channels, transpose=True),
                    _ConvLayer(self.channels, transpose=True)]

  def encode(self, feature_BxHxWxM, train: bool = False):
    x = feature_BxHxWxM
    for layer in self.encoder:
      x = layer(x, train)
    return x

  def __call__(self, student_out, teacher_out, batch, train: bool):
    del student_out, batch
    (feature,) = teacher_out["features"].values()
    feature = jax.lax.stop_gradient(feature)
    x = self.encode(feature, train)
    for layer in self.decoder:
      x = layer(x, train)
    return {"reconstruction": x, "target": feature}


def make_paraphraser(params, student_shapes, teacher_shapes, num_examples):
  del student_shapes, num_examples
  (shape,) = teacher_shapes.values()
  return Paraphraser(channels=shape[-1], rate=params["rate"])


def paraphraser_loss(student_out, teacher_out, batch, *, teacher_features, rate: float,
                     reconstruction_weight: float) -> tuple[Any, dict[str, Any]]:
  """reconstruction_weight * mean((P(x) - x)^2); the student's outputs are not used."""
  del teacher_out, batch, teacher_features, rate
  connector = student_out["connector"]
  reconstruction = jnp.mean((connector["reconstruction"] - connector["target"]) ** 2)
  return reconstruction_weight * reconstruction, {"reconstruction": reconstruction}


# The method table's entry for the paraphraser stage (`kd.methods.METHODS["ft_paraphraser"]`).
PARAPHRASER = types.SimpleNamespace(
    __name__="kd.methods.ft (paraphraser stage)",
    NEEDS_TEACHER=True,
    DEFAULTS=PARAPHRASER_DEFAULTS,
    EXPORTS_CONNECTOR=True,
    check=check_paraphraser,
    check_features=check_paraphraser_features,
    make_connector=make_paraphraser,
    loss=paraphraser_loss,
)


# The FT stage.


def check(params: dict[str, Any], where: str) -> None:
  _check_rate(params, where)
  common.check_non_negative(params, ("beta", "ce_weight"), where)
  if not common.is_number(params["p"]) or not params["p"] >= 1:
    raise ConfigError(f"{where}.p={params['p']!r} must be a number >= 1 (the paper uses p = 1)")
  if not isinstance(params["paraphraser_stage"], str) or not params["paraphraser_stage"]:
    raise ConfigError(f"{where}.paraphraser_stage={params['paraphraser_stage']!r} must name the earlier "
                      "stage that trained the paraphraser (method 'ft_paraphraser')")
  common.check_feature_patterns(params, where, ("conv0",))
  if len(params["student_features"]) != 1:
    raise ConfigError(f"{where}: FT transfers one feature map; student_features and teacher_features "
                      f"must each name one tap point, got {tuple(params['student_features'])}")


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  del params
  # The paraphraser and translator are 3x3 convolutions: they need spatial maps.
  common.reject_token_features("FT", student_shapes, teacher_shapes, where)
  common.check_feature_count(student_shapes, teacher_shapes, where)
  if len(student_shapes) != 1:
    raise ConfigError(f"{where}: select exactly one student and one teacher map, got {list(student_shapes)}")
  (s_path, s_shape), (t_path, t_shape) = next(iter(student_shapes.items())), next(iter(teacher_shapes.items()))
  _check_map(s_path, s_shape, where, "student_features")
  _check_map(t_path, t_shape, where, "teacher_features")
  if not common.poolable(s_shape, t_shape):
    raise ConfigError(f"{where}: student map {s_path} {s_shape[1:]} and teacher map {t_path} {t_shape[1:]} "
                      "cannot be pooled to one resolution: pick maps whose height and width are both >= "
                      "(or both <=) the other's")


def connector_source(params: dict[str, Any]) -> str:
  """The stage whose exported connector this method's connector holds in its "pretrained" collection."""
  return params["paraphraser_stage"]


class FactorTransfer(nn.Module):
  """The translator (trained) and the frozen paraphraser's encoder: the two factors.

  Variables: params `translator`; collection "pretrained", variable "connector": the paraphraser
  stage's exported connector variables (randomly initialised here; the trainer replaces them with
  the export before the first step), used in inference mode and never updated.
  """

  teacher_channels: int
  rate: float

  @nn.compact
  def __call__(self, student_out, teacher_out, batch, train: bool):
    del batch
    (student_feature,) = student_out["features"].values()
    (teacher_feature,) = teacher_out["features"].values()
    teacher_feature = jax.lax.stop_gradient(teacher_feature)
    # parent=None: a pure function of the "pretrained" values, not a trainable submodule.
    paraphraser = Paraphraser(channels=self.teacher_channels, rate=self.rate, parent=None)
    pretrained = self.variable(PRETRAINED, "connector", lambda: dict(paraphraser.init(
        self.make_rng("params"), {}, {"features": {"x": teacher_feature}}, None, train=False)))
    teacher_factor = jax.lax.stop_gradient(
        paraphraser.apply(pretrained.value, teacher_feature, train=False, method=Paraphraser.encode))
    x = student_feature
    k_m = factor_channels(self.teacher_channels, self.rate)
    for index, channels in enumerate((student_feature.shape[-1], k_m, k_m)):
      x = _ConvLayer(channels, name=f"translator{index}")(x, train)
    return {"student_factor": x, "teacher_factor": teacher_factor}


def make_connector(params, student_shapes, teacher_shapes, num_examples):
  del student_shapes, num_examples
  (shape,) = teacher_shapes.values()
  return FactorTransfer(teacher_channels=shape[-1], rate=params["rate"])


def factor_distance(student_factor_BxHxWxF: jax.Array, teacher_factor_BxHxWxF: jax.Array,
                    p: float = 1.0) -> jax.Array:
  """|| F_T/||F_T||_2 - F_S/||F_S||_2 ||_p per example (eq. 3).

  Args:
    student_factor_BxHxWxF: F_S, the translator's output.
    teacher_factor_BxHxWxF: F_T, the paraphraser's encoding (its resolution may differ: the larger
      is average-pooled to the smaller).
    p: the norm of the difference (the paper: 1).

  Returns:
    [B] the distance of each example's normalised factors (0 when they are proportional).

  References:
    Kim, Park & Kwak, NeurIPS 2018, arXiv:1802.04977, eq. 3.
  """
  student, teacher = common.match_resolution(student_factor_BxHxWxF, teacher_factor_BxHxWxF)
  student, teacher = common.flatten_examples(student), common.flatten_examples(teacher)
  # The epsilon keeps the gradient finite for an all-zero factor (e.g. after a dead LeakyReLU input).
  normalize = lambda f: f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  difference = jnp.abs(normalize(teacher) - normalize(student))
  return jnp.sum(difference**p, axis=-1) ** (1.0 / p)


def loss(student_out, teacher_out, batch, *, student_features, teacher_features, paraphraser_stage: str,
         rate: float, beta: float, p: float, ce_weight: float) -> tuple[Any, dict[str, Any]]:
  """beta * mean_b factor_distance + ce_weight * CE."""
  del teacher_out, student_features, teacher_features, paraphraser_stage, rate
  connector = student_out["connector"]
  ft = jnp.mean(factor_distance(connector["student_factor"],
                                jax.lax.stop_gradient(connector["teacher_factor"]), p))
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  return beta * ft + ce_weight * ce, {"ft": ft, "ce": ce}
