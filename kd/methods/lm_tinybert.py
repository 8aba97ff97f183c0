"""TinyBERT's Transformer distillation (Jiao et al. 2020): embedding, attention, hidden and prediction layers.

With a layer map g from the student's M layers to the teacher's N (`student_layers` / `teacher_layers`;
() is the paper's uniform g(m) = m * N / M, see `kd.methods.lm_layers`):

    L_attn = 1/h sum_{i=1..h} MSE(A^S_i, A^T_i)          (Eq. 7; A = Q K^T / sqrt(d_k), before softmax)
    L_hidn = MSE(H^S W_h, H^T)                            (Eq. 8)
    L_embd = MSE(E^S W_e, E^T)                            (Eq. 9)
    L_pred = CE(z^T / t, z^S / t)                         (Eq. 10; soft cross-entropy, t = temperature)
    L_layer(S_m, T_g(m)) = L_embd (m = 0), L_hidn + L_attn (0 < m <= M), L_pred (m = M + 1)   (Eq. 11)
    loss = sum_m lambda_m L_layer  (Eq. 12) = embedding_weight * L_embd
           + sum_{m=1..M} (hidden_weight * L_hidn(m) + attention_weight * L_attn(m))
           + prediction_weight * L_pred + ce_weight * CE(data)

The paper's attention matrices are the unnormalised scores (it found them to converge faster than the
softmax); here they are the decoder's own: computed from the layer's q and k taps with the rotary
embedding the model applies (`student_rope_theta` / `teacher_rope_theta`, 10000 for kd's transformer_lm
and Llama's default; 0 for GPT-2 and learned positions), grouped-query keys shared as the model shares
them, and compared over the causal entries j <= i of real rows and columns only (TinyBERT's code zeroes
the masked scores on both sides). The per-head comparison needs equal numbers of heads (the paper's
TinyBERT keeps the teacher's 12); the widths may differ. W_h (one matrix for every mapped layer) and
W_e are learned Dense maps d_S -> d_T with a bias (the released code's `fit_dense`, an nn.Linear; the
code shares one matrix between embeddings and layers, the paper names two), trained as kd's connector
with the student, applied where the widths differ or with `force_projection`. MSEs average over the
real positions and channels, L_pred over the real next-token positions; padding counts nowhere.

Feature roles, by pattern: `student_features` / `teacher_features` are (embedding, hidden states,
attention projections...): the embedding tap (`embed`; `wte` or `embed_tokens` for the HF families),
the block outputs (`re:layers_[0-9]+`), then either one pattern of fused q/k/v taps (kd's
`layers_<i>/attention/qkv`, GPT-2's `c_attn`) or two: the queries of every layer, then the keys
(`re:layers_[0-9]+/self_attn/q_proj`, `.../k_proj`). Flat [B, L, C] queries need `attention_heads`.

Reference: X. Jiao, Y. Yin, L. Shang, X. Jiang, X. Chen, L. Li, F. Wang, Q. Liu, "TinyBERT: Distilling
BERT for Natural Language Understanding", Findings of EMNLP 2020, arXiv:1909.10351, Section 3.1,
Eq. 7-12; code: huawei-noah/Pretrained-Language-Model, TinyBERT/general_distill.py.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError
from kd.lm import tokens as lm_tokens
from kd.methods import lm_common
from kd.methods import lm_layers

LANGUAGE_MODEL = True
NEEDS_TEACHER = True
FEATURES = ("embed", "re:layers_[0-9]+", "re:layers_[0-9]+/attention/qkv")  # kd.models.transformer_lm.
TERMS = ("embedding_weight", "hidden_weight", "attention_weight", "prediction_weight", "ce_weight")
DEFAULTS: dict[str, Any] = {
    "embedding_weight": 1.0,
    "hidden_weight": 1.0,
    "attention_weight": 1.0,
    "prediction_weight": 1.0,
    "ce_weight": 0.0,  # Cross-entropy on the data, not in the paper.
    "temperature": 1.0,  # The paper's t.
    "attention_heads": 0,  # 0: read from the q taps' shapes ([B, L, 3, H, D] or [B, L, H, D]).
    "student_rope_theta": 10000.0,  # 0: the model has no rotary embedding.
    "teacher_rope_theta": 10000.0,
    "force_projection": False,
    "student_features": FEATURES,
    "teacher_features": FEATURES,
    "student_layers": (),
    "teacher_layers": (),
}


def check(params: dict[str, Any], where: str) -> None:
  lm_layers.check_weights(params, TERMS, where)
  lm_layers.check_layer_lists(params, where)
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0")
  heads = params["attention_heads"]
  if not lm_layers._is_index(heads) or heads < 0:  # pylint: disable=protected-access
    raise ConfigError(f"{where}.attention_heads={heads!r} must be an integer >= 0 (0: from the q taps' shapes)")
  for key in ("student_rope_theta", "teacher_rope_theta"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0 (0: no rotary embedding)")
  for key in ("student_features", "teacher_features"):
    if len(params[key]) not in (3, 4):
      raise ConfigError(f"{where}.{key}={tuple(params[key])} must be (embedding, hidden states, fused q/k/v) "
                        "or (embedding, hidden states, queries, keys) patterns")


def _roles(params, side: str, paths: Sequence[str], where: str):
  """(embedding path, hidden-state paths, attention tap paths per layer) of one side."""
  patterns = params[f"{side}_features"]
  key = f"{side}_features"
  groups = lm_layers.pattern_groups(patterns[:2], paths, f"{where}.{key}")
  attention = lm_layers.attention_layers(patterns[2:], paths, 2, where, key)
  lm_layers.check_disjoint(groups + [sum(attention, [])], [patterns[0], patterns[1], " ".join(patterns[2:])],
                           where, key)
  if len(groups[0]) != 1:
    raise ConfigError(f"{where}.{key}: the embedding pattern {patterns[0]!r} selects {groups[0]}; it must "
                      "select one tap (the token embedding)")
  return groups[0][0], groups[1], attention


def _heads(params, side: str, shapes: Sequence[tuple[int, ...]], where: str) -> tuple[int, int, int]:
  """(query heads, key heads, head size) of one layer's q/k taps."""
  try:
    (q_width, q_heads), (k_width, k_heads) = lm_layers.projection_shapes(shapes, 2)
  except ValueError as error:
    raise ConfigError(f"{where}.{side}_features: {error}; select the attention's q/k projections") from None
  heads = q_heads or params["attention_heads"]
  if not heads:
    raise ConfigError(f"{where}.attention_heads=0 but the {side}'s queries are flat {shapes[0][1:]}: set "
                      "attention_heads to the models' number of attention heads")
  if q_width % heads or (k_heads and q_width // heads != k_width // k_heads) or k_width % (q_width // heads):
    raise ConfigError(f"{where}: the {side}'s queries ({q_width} wide) and keys ({k_width}) do not split into "
                      f"heads of one size with {heads} query heads; set attention_heads to the model's")
  head_size = q_width // heads
  kv_heads = k_width // head_size
  if heads % kv_heads:
    raise ConfigError(f"{where}: the {side}'s {heads} query heads do not share its {kv_heads} key heads evenly")
  return heads, kv_heads, head_size


def _pairs(params, num_student: int, num_teacher: int):
  return lm_layers.resolve_layer_map(params, num_student, num_teacher)


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  roles = {}
  for side, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
    embedding, hidden, attention = _roles(params, side, list(shapes), where)
    for path in [embedding] + hidden:
      if len(shapes[path]) != 3:
        raise ConfigError(f"{where}.{side}_features: {path} is {shapes[path][1:]}, not [L, C] per example; the "
                          "embedding and hidden-state patterns must select token features")
    if params["attention_weight"] and len(attention) != len(hidden):
      raise ConfigError(f"{where}.{side}_features: {len(hidden)} hidden states but {len(attention)} attention "
                        "layers; each mapped layer needs both (or set attention_weight=0)")
    lm_layers.check_layer_indices(f"{side}_layers", params[f"{side}_layers"], hidden, where, side)
    heads = _heads(params, side, [shapes[p] for p in attention[0]], where) if attention else None
    roles[side] = (embedding, hidden, attention, heads)
  s_heads, t_heads = roles["student"][3], roles["teacher"][3]
  if params["attention_weight"] and s_heads[0] != t_heads[0]:
    raise ConfigError(f"{where}: TinyBERT's attention loss compares head by head, but the student has "
                      f"{s_heads[0]} heads and the teacher {t_heads[0]}; give the student the teacher's number "
                      "of heads (widths may differ), or set attention_weight=0")
  lengths = {shape[1] for shape in list(student_shapes.values()) + list(teacher_shapes.values())}
  if len(lengths) != 1:
    raise ConfigError(f"{where}: the selected features cover different lengths {sorted(lengths)}")


class TinyBertProjections(nn.Module):
  """W_e and W_h (Eq. 8, 9): {"embedding": E^S W_e, "hidden": [H^S_m W_h for each mapped m]}.

  A width of 0 leaves that role unprojected (equal widths, no force_projection).
  """

  embedding_path: str
  hidden_paths: Sequence[str]
  embedding_width: int
  hidden_width: int

  @nn.compact
  def __call__(self, student_out, teacher_out, batch, train: bool):
    del teacher_out, batch, train
    features = student_out["features"]
    out = {}
    if self.embedding_width:
      out["embedding"] = nn.Dense(self.embedding_width, name="W_e")(features[self.embedding_path].astype(jnp.float32))
    if self.hidden_width:
      w_h = nn.Dense(self.hidden_width, name="W_h")
      out["hidden"] = [w_h(features[path].astype(jnp.float32)) for path in self.hidden_paths]
    return out


def make_connector(params, student_shapes, teacher_shapes, num_examples):
  del num_examples
  s_embedding, s_hidden, _ = _roles(params, "student", list(student_shapes), "method")
  t_embedding, t_hidden, _ = _roles(params, "teacher", list(teacher_shapes), "method")
  force = params["force_projection"]
  embedding_width = teacher_shapes[t_embedding][-1]
  if not force and student_shapes[s_embedding][-1] == embedding_width:
    embedding_width = 0
  student_layers, teacher_layers = _pairs(params, len(s_hidden), len(t_hidden))
  hidden_width = teacher_shapes[t_hidden[teacher_layers[0]]][-1]
  if not force and all(student_shapes[s_hidden[s]][-1] == teacher_shapes[t_hidden[t]][-1]
                       for s, t in zip(student_layers, teacher_layers)):
    hidden_width = 0
  if not embedding_width and not hidden_width:
    return None
  return TinyBertProjections(embedding_path=s_embedding, hidden_paths=tuple(s_hidden[s] for s in student_layers),
                             embedding_width=embedding_width, hidden_width=hidden_width)


def token_mse(student_BxLxC: jax.Array, teacher_BxLxC: jax.Array, weights_BxL: jax.Array) -> jax.Array:
  """MSE over the real positions and the channels (Eq. 8, 9): sum w ||s - t||^2 / (sum w * C)."""
  squared_BxL = jnp.sum((student_BxLxC.astype(jnp.float32) - teacher_BxLxC.astype(jnp.float32)) ** 2, axis=-1)
  return jnp.sum(squared_BxL * weights_BxL) / (jnp.maximum(jnp.sum(weights_BxL), 1.0) * student_BxLxC.shape[-1])


def attention_scores(q_BxLxC: jax.Array, k_BxLxC: jax.Array, heads: int, rope_theta: float) -> jax.Array:
  """The decoder's unnormalised attention scores Q K^T / sqrt(d_k): [B, heads, L, L].

  q and k are the projections' outputs (heads side by side); grouped-query keys (fewer key heads) are
  shared by heads // key heads query heads each, as the model's `repeat_kv`; `rope_theta` > 0 rotates
  q and k first, as the model does.
  """
  batch, length, width = q_BxLxC.shape
  head_size = width // heads
  q = lm_layers.rotate(q_BxLxC.reshape(batch, length, heads, head_size), rope_theta)
  k = lm_layers.rotate(k_BxLxC.reshape(batch, length, -1, head_size), rope_theta)
  k = jnp.repeat(k, heads // k.shape[2], axis=2)
  return jnp.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(head_size)


def attention_mse(student_scores_BxHxLxL: jax.Array, teacher_scores_BxHxLxL: jax.Array, valid_Bx1xLxL: jax.Array,
                  weights_BxL: jax.Array) -> jax.Array:
  """Eq. 7 over the valid entries: sum of squared differences at causal, real (row, column) pairs,
  rows weighted by their token weight, divided by heads times the weighted number of such pairs."""
  squared = jnp.where(valid_Bx1xLxL, (student_scores_BxHxLxL - teacher_scores_BxHxLxL) ** 2, 0.0)
  row_weights = weights_BxL[:, None, :, None]
  count = jnp.sum(valid_Bx1xLxL * row_weights) * student_scores_BxHxLxL.shape[1]
  return jnp.sum(squared * row_weights) / jnp.maximum(count, 1.0)


def loss(student_out, teacher_out, batch, *, embedding_weight, hidden_weight, attention_weight, prediction_weight,
         ce_weight, temperature, attention_heads, student_rope_theta, teacher_rope_theta, force_projection,
         student_features, teacher_features, student_layers, teacher_layers) -> tuple[Any, dict[str, Any]]:
  del force_projection
  params = {"student_features": student_features, "teacher_features": teacher_features,
            "student_layers": student_layers, "teacher_layers": teacher_layers, "attention_heads": attention_heads}
  total, metrics = lm_common.distillation_loss(student_out, teacher_out, batch, divergence="forward_kl", beta=0.5,
                                               alpha=0.1, temperature=1.0, kd_weight=0.0, ce_weight=ce_weight)
  s_features = student_out["features"]
  t_features = jax.lax.stop_gradient(teacher_out["features"])
  s_embedding, s_hidden, s_attention = _roles(params, "student", list(s_features), "method")
  t_embedding, t_hidden, t_attention = _roles(params, "teacher", list(t_features), "method")
  student_layers, teacher_layers = _pairs(params, len(s_hidden), len(t_hidden))
  projected = student_out.get("connector", {})
  weights_BxL = lm_layers.token_weights(batch)

  embedding = token_mse(projected.get("embedding", s_features[s_embedding]), t_features[t_embedding], weights_BxL)
  hidden_students = projected.get("hidden", [s_features[s_hidden[s]] for s in student_layers])
  hidden = sum(token_mse(h, t_features[t_hidden[t]], weights_BxL) for h, t in zip(hidden_students, teacher_layers))
  attention = 0.0
  if attention_weight:
    valid_Bx1xLxL = lm_layers.causal_valid(lm_layers.key_mask(batch))
    s_heads = _heads(params, "student", [s_features[p].shape for p in s_attention[0]], "method")[0]
    t_heads = _heads(params, "teacher", [t_features[p].shape for p in t_attention[0]], "method")[0]
    for s, t in zip(student_layers, teacher_layers):
      s_q, s_k = lm_layers.projections([s_features[p] for p in s_attention[s]], 2)
      t_q, t_k = lm_layers.projections([t_features[p] for p in t_attention[t]], 2)
      attention = attention + attention_mse(attention_scores(s_q, s_k, s_heads, student_rope_theta),
                                            attention_scores(t_q, t_k, t_heads, teacher_rope_theta),
                                            valid_Bx1xLxL, weights_BxL)
  _, next_weights_BxT = lm_tokens.next_token_targets(batch)
  soft_ce_BxT = losses.soft_cross_entropy_with_logits(student_out["logits"][:, :-1],
                                                      jax.lax.stop_gradient(teacher_out["logits"][:, :-1]),
                                                      temperature=temperature)
  prediction = lm_tokens.masked_mean(soft_ce_BxT, next_weights_BxT)
  metrics.update(embedding=embedding, hidden=hidden, attention=attention, prediction=prediction)
  total = (total + embedding_weight * embedding + hidden_weight * hidden + attention_weight * attention
           + prediction_weight * prediction)
  return total, metrics
