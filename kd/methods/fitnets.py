"""FitNets: the student's intermediate features regress the teacher's ("hints").

    loss = hint_weight * sum_i mean((r_i(s_i) - t_i)^2) + ce_weight * CE(s, y)
           + kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))

s_i, t_i are the i-th selected student and teacher features, r_i a trainable regressor (a conv, or a
dense layer for embeddings) that maps the student's shape to the teacher's (Section 2.2, eq. 3:
W_r and the L2 hint loss). The paper trains in two stages (hints up to the guided layer, then KD);
this is the one-stage form the CRD benchmark (Tian et al. 2020, RepDistiller) uses for its table:
CE plus hint_weight=100 times the hint loss, no KD term. The regressor follows RepDistiller's
`ConvReg`: a 3x3 conv when resolutions match, stride 2 when the student's is twice the teacher's,
a 4x4 transposed conv when half, a (1+dH)x(1+dW) valid conv otherwise; then BatchNorm and ReLU.

Token features [B, N, C] (a ViT's or MLP-Mixer's blocks): the regressor is a linear map C_s -> C_t
applied to each token (a Dense over the last axis, shared over the tokens: the paper's W_r for a
set of vectors, with no BatchNorm or ReLU, as token features are signed), and the hint is the MSE
over tokens and channels. Both sides need the same number of tokens: `student_special_tokens` and
`teacher_special_tokens` drop that many leading tokens first (a ViT's class token: 1; DeiT's class
and distillation tokens: 2), so a ViT's patch tokens can regress another's. A [B, H, W, C] map
paired with tokens is read as H*W tokens in row-major order (a CNN teacher for a ViT student, or the
reverse), which needs H*W to equal the token count: a 14x14 map for the 196 patch tokens of a
224-pixel ViT with 16-pixel patches. A token feature paired with a pooled [B, D] one is an error.

Reference: A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio, "FitNets: Hints
for Thin Deep Nets", ICLR 2015, arXiv:1412.6550.
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
    "regressor": True,  # False: the shapes must already match.
    "hint_weight": 100.0,
    "ce_weight": 1.0,
    "kd_weight": 0.0,
    "temperature": 4.0,
    # Token features: leading tokens (class token 1, DeiT's 2) dropped before the hint.
    "student_special_tokens": 0,
    "teacher_special_tokens": 0,
}


def check(params: dict[str, Any], where: str) -> None:
  common.check_non_negative(params, ("hint_weight", "ce_weight", "kd_weight"), where)
  common.check_positive(params, ("temperature",), where)
  common.check_special_tokens(params, where)
  if not params["student_features"] or len(params["student_features"]) != len(params["teacher_features"]):
    raise ConfigError(f"{where}: student_features {params['student_features']} and teacher_features "
                      f"{params['teacher_features']} must pair up one to one (same non-zero length)")


def _regressor_kind(student_shape, teacher_shape) -> str | None:
  """How RepDistiller's ConvReg maps a student map to a teacher map, or None if it cannot.

  "tokens" for a pair with token features (a Dense per token; token counts are checked apart).
  """
  if common.token_pair_shapes(student_shape, teacher_shape) is not None:
    return "tokens"
  if len(student_shape) == 2 and len(teacher_shape) == 2:
    return "dense"
  if len(student_shape) != 4 or len(teacher_shape) != 4:
    return None
  (_, s_h, s_w, _), (_, t_h, t_w, _) = student_shape, teacher_shape
  if s_h == 2 * t_h and s_w == 2 * t_w:
    return "stride2"
  if 2 * s_h == t_h and 2 * s_w == t_w:
    return "transpose"
  if s_h >= t_h and s_w >= t_w:
    return "valid"
  return None


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  common.check_token_pairs(params, student_shapes, teacher_shapes, where, "FitNets")
  for (s_path, s_shape), (t_path, t_shape) in zip(student_shapes.items(), teacher_shapes.items()):
    tokens = common.token_pair_shapes(s_shape, t_shape, params["student_special_tokens"],
                                      params["teacher_special_tokens"])
    if not params["regressor"]:
      if (tokens[0] != tokens[1]) if tokens else (s_shape != t_shape):
        raise ConfigError(
            f"{where}: student feature {s_path} {s_shape[1:]} and teacher feature {t_path} {t_shape[1:]} "
            f"differ and regressor=False: set {where}.regressor=True, or pick features of equal shape")
    elif _regressor_kind(s_shape, t_shape) is None:
      raise ConfigError(
          f"{where}: no regressor maps student feature {s_path} {s_shape[1:]} to teacher feature "
          f"{t_path} {t_shape[1:]} (needs both [B,H,W,C] with the student's resolution at least half "
          "the teacher's, tokens [B,N,C] paired with tokens or a map of N = H*W positions, or both "
          "[B,D]): pick other features")
  if len(student_shapes) != len(teacher_shapes):
    raise ConfigError(f"{where}: {len(student_shapes)} student features but {len(teacher_shapes)} "
                      "teacher features after resolving the patterns; they must pair up one to one")


class HintRegressors(nn.Module):
  """One regressor per (student, teacher) feature pair; returns {"hints": [regressed features]}."""

  teacher_shapes: Sequence[tuple[int, ...]]
  kinds: Sequence[str]
  student_special_tokens: int = 0

  @nn.compact
  def __call__(self, student_out, teacher_out, batch, train: bool):
    del teacher_out, batch
    hints = []
    for index, (feature, shape, kind) in enumerate(
        zip(student_out["features"].values(), self.teacher_shapes, self.kinds)):
      if kind == "dense":
        hints.append(nn.Dense(shape[-1], name=f"regressor{index}")(feature))
        continue
      if kind == "tokens":
        tokens = common.as_tokens(feature, self.student_special_tokens)
        hints.append(nn.Dense(shape[-1], name=f"regressor{index}")(tokens))
        continue
      channels = shape[-1]
      if kind == "stride2":
        x = nn.Conv(channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name=f"regressor{index}")(feature)
      elif kind == "transpose":
        x = nn.ConvTranspose(channels, (4, 4), strides=(2, 2), padding="SAME", name=f"regressor{index}")(feature)
      else:
        s_h, s_w, t_h, t_w = feature.shape[1], feature.shape[2], shape[1], shape[2]
        kernel = (3, 3) if (s_h, s_w) == (t_h, t_w) else (1 + s_h - t_h, 1 + s_w - t_w)
        padding = "SAME" if (s_h, s_w) == (t_h, t_w) else "VALID"
        x = nn.Conv(channels, kernel, padding=padding, name=f"regressor{index}")(feature)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"regressor{index}_norm")(x)
      hints.append(nn.relu(x))
    return {"hints": hints}


def make_connector(params, student_shapes, teacher_shapes, num_examples):
  del num_examples  # The regressors hold no per-example state.
  if not params["regressor"]:
    return None
  kinds = [_regressor_kind(s, t) for s, t in zip(student_shapes.values(), teacher_shapes.values())]
  return HintRegressors(teacher_shapes=tuple(teacher_shapes.values()), kinds=tuple(kinds),
                        student_special_tokens=params["student_special_tokens"])


def hint_loss(student_features, teacher_features) -> jax.Array:
  """sum over pairs of the mean squared error (RepDistiller's HintLoss, nn.MSELoss per pair)."""
  return sum(jnp.mean((s - t) ** 2) for s, t in zip(student_features, teacher_features))


def hint_pairs(student_out, teacher_out, *, regressor: bool, student_special_tokens: int = 0,
               teacher_special_tokens: int = 0) -> tuple[list[jax.Array], list[jax.Array]]:
  """(hints, targets): the (regressed) student features and the teacher's, without its gradient.

  A pair with token features is compared as tokens (`common.as_tokens`), special tokens dropped.
  """
  hints, targets = [], []
  regressed = student_out["connector"]["hints"] if regressor else [None] * len(student_out["features"])
  for hint, student, teacher in zip(regressed, student_out["features"].values(),
                                    teacher_out["features"].values()):
    teacher = jax.lax.stop_gradient(teacher)
    if student.ndim == 3 or teacher.ndim == 3:
      teacher = common.as_tokens(teacher, teacher_special_tokens)
      student = common.as_tokens(student, student_special_tokens)
    hints.append(student if hint is None else hint)
    targets.append(teacher)
  return hints, targets


def loss(student_out, teacher_out, batch, *, student_features, teacher_features, regressor: bool,
         hint_weight: float, ce_weight: float, kd_weight: float, temperature: float,
         student_special_tokens: int, teacher_special_tokens: int) -> tuple[Any, dict[str, Any]]:
  del student_features, teacher_features  # Resolved by the framework into the outputs' "features".
  hints, targets = hint_pairs(student_out, teacher_out, regressor=regressor,
                              student_special_tokens=student_special_tokens,
                              teacher_special_tokens=teacher_special_tokens)
  hint = hint_loss(hints, targets)
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  total = hint_weight * hint + ce_weight * ce
  return common.add_kd_term(total, {"hint": hint, "ce": ce}, student_out["logits"], teacher_out["logits"],
                            kd_weight=kd_weight, temperature=temperature)
