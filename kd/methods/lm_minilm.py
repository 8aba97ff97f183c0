"""MiniLM's self-attention relation transfer (Wang et al. 2020; MiniLMv2, Wang et al. 2021).

At one layer of each model (by default the last, as MiniLM; MiniLMv2 also distils an upper-middle
teacher layer), the queries, keys and values of all attention heads are concatenated and split into
`relation_heads` relation heads, and each relation of a pair (A_i, A_j) of them is distilled:

    R_ij,a = softmax(A_i,a A_j,a^T / sqrt(d_r))                 [L, L] per relation head a
    L_ij   = 1 / (A_r |x|) sum_a sum_t KL(R^T_ij,a,t || R^S_ij,a,t)
    loss   = relation_weight * sum_{ij in relations} L_ij + kd_weight * T^2 * KL + ce_weight * CE

(MiniLMv2, Section 3: the multi-head self-attention relations and their KL loss, averaged over the
A_r relation heads and the |x| tokens; i, j over queries, keys, values, "qq", "kk", "vv" by
default, its best choice; d_r = d / A_r is each model's own relation-head size, so the student and the
teacher may differ in width and in attention heads, and the relations are [L, L] on both sides.) MiniLM
(v1) transfers the attention distributions softmax(Q K^T / sqrt(d_k)) per attention head and the
value relation softmax(V V^T / sqrt(d_k)) (Section 3.1, L_AT and L_VR): relations=("qk", "vv") with
relation_heads equal to the models' attention heads is that loss.

Causal language models: row t covers positions <= t only (the columns the decoder's attention sees)
and padding positions are left out as rows and as columns (`kd.methods.lm_layers`). Queries, keys and
values are the projections' outputs (the `student_features` taps: kd's fused `layers_<i>/attention/qkv`
by default; see `kd.methods.lm_layers` for the Hugging Face families), before any rotary embedding:
MiniLM's BERT teachers have absolute positions, so these are its relations; in a rotary model they
relate content, not position.

References:
  W. Wang, F. Wei, L. Dong, H. Bao, N. Yang, M. Zhou, "MiniLM: Deep Self-Attention Distillation for
  Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020, arXiv:2002.10957, Section 3.1.
  W. Wang, H. Bao, S. Huang, L. Dong, F. Wei, "MiniLMv2: Multi-Head Self-Attention Relation Distillation
  for Compressing Pretrained Transformers", Findings of ACL 2021, arXiv:2012.15828, Section 3.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from kd.errors import ConfigError
from kd.methods import lm_common
from kd.methods import lm_layers

LANGUAGE_MODEL = True
NEEDS_TEACHER = True
PROJECTIONS = "qkv"
QKV = ("re:layers_[0-9]+/attention/qkv",)  # kd.models.transformer_lm's fused projection, every layer.
DEFAULTS: dict[str, Any] = {
    **lm_common.DIVERGENCE_DEFAULTS,
    "kd_weight": 0.0,  # MiniLM distils the relations alone.
    "relation_weight": 1.0,
    "relations": ("qq", "kk", "vv"),
    "relation_heads": 4,  # MiniLMv2 uses 48 with its large teachers; it must divide both widths.
    "student_layer": -1,
    "teacher_layer": -1,
    "student_features": QKV,
    "teacher_features": QKV,
}


def check(params: dict[str, Any], where: str) -> None:
  lm_layers.check_lm_terms(params, where, ("relation_weight",))
  relations = params["relations"]
  valid = [a + b for a in PROJECTIONS for b in PROJECTIONS]
  if (not isinstance(relations, (tuple, list)) or not relations or len(set(relations)) != len(relations)
      or any(r not in valid for r in relations)):
    raise ConfigError(f"{where}.relations={relations!r} must be distinct pairs of q, k, v, from {valid} "
                      "(MiniLMv2: ('qq', 'kk', 'vv'); MiniLM: ('qk', 'vv'))")
  heads = params["relation_heads"]
  if not lm_layers._is_index(heads) or heads < 1:  # pylint: disable=protected-access
    raise ConfigError(f"{where}.relation_heads={heads!r} must be an integer >= 1")
  for key in ("student_layer", "teacher_layer"):
    if not lm_layers._is_index(params[key]):  # pylint: disable=protected-access
      raise ConfigError(f"{where}.{key}={params[key]!r} must be a layer index (-1: the last)")
  for key in ("student_features", "teacher_features"):
    if len(params[key]) not in (1, 3):
      raise ConfigError(f"{where}.{key}={tuple(params[key])} must be one pattern of fused q/k/v taps or "
                        "three (queries, keys, values)")


def _layer(params, side: str, paths, where: str) -> list[str]:
  layers = lm_layers.attention_layers(params[f"{side}_features"], paths, 3, where, f"{side}_features")
  lm_layers.check_layer_indices(f"{side}_layer", (params[f"{side}_layer"],), [" + ".join(l) for l in layers],
                                where, side, shown=params[f"{side}_layer"])
  return layers[params[f"{side}_layer"]]


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  lengths, sides = set(), {}
  for side, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
    paths = _layer(params, side, list(shapes), where)
    try:
      widths = [w for w, _ in lm_layers.projection_shapes([shapes[p] for p in paths], 3)]
    except ValueError as error:
      raise ConfigError(f"{where}.{side}_features: {', '.join(paths)}: {error}; select the attention's "
                        "q/k/v projections (see kd.methods.lm_layers)") from None
    lengths.update(shapes[p][1] for p in paths)
    for relation in params["relations"]:
      first, second = (widths[PROJECTIONS.index(c)] for c in relation)
      if first != second:
        raise ConfigError(f"{where}.relations: {relation!r} pairs the {side}'s {relation[0]} ({first} wide) "
                          f"with its {relation[1]} ({second} wide, grouped-query attention); relate "
                          "projections of equal width, e.g. ('qq', 'kk', 'vv')")
    sides[side] = (paths, {widths[PROJECTIONS.index(c)] for relation in params["relations"] for c in relation})
  every_width = sides["student"][1] | sides["teacher"][1]
  for side, (paths, side_widths) in sides.items():
    for width in sorted(side_widths):
      if width % params["relation_heads"]:
        common = [d for d in range(1, min(every_width) + 1) if all(w % d == 0 for w in every_width)]
        raise ConfigError(f"{where}.relation_heads={params['relation_heads']} does not divide the {side}'s "
                          f"width {width} ({', '.join(paths)}); relation heads split every related projection "
                          f"of both models: choose one of {common}")
  if len(lengths) != 1:
    raise ConfigError(f"{where}: the student's and teacher's relations cover different lengths {sorted(lengths)}")


def relation_logits(a_BxLxC: jax.Array, b_BxLxC: jax.Array, heads: int) -> jax.Array:
  """A_a B_a^T / sqrt(d_r) per relation head a: [B, heads, L, L] (MiniLMv2's relation, before softmax).

  The C channels (all attention heads side by side) are split into `heads` chunks of d_r = C / heads.
  """
  batch, length, width = a_BxLxC.shape
  a_BxLxRxD = a_BxLxC.reshape(batch, length, heads, width // heads)
  b_BxLxRxD = b_BxLxC.reshape(batch, length, heads, width // heads)
  return jnp.einsum("blrd,bmrd->brlm", a_BxLxRxD, b_BxLxRxD) / math.sqrt(width // heads)


def relation_kl(student_logits_BxRxLxL: jax.Array, teacher_logits_BxRxLxL: jax.Array, valid_Bx1xLxL: jax.Array,
                weights_BxL: jax.Array) -> jax.Array:
  """mean over relation heads and real rows of KL(softmax(teacher row) || softmax(student row)).

  Each row's softmax covers its valid columns only (causal, real tokens); a row's weight is its
  position's token weight.
  """
  lowest = jnp.finfo(jnp.float32).min
  student_log = jax.nn.log_softmax(jnp.where(valid_Bx1xLxL, student_logits_BxRxLxL, lowest), axis=-1)
  teacher_log = jax.nn.log_softmax(jnp.where(valid_Bx1xLxL, teacher_logits_BxRxLxL, lowest), axis=-1)
  kl_BxRxL = jnp.sum(jnp.where(valid_Bx1xLxL, jnp.exp(teacher_log) * (teacher_log - student_log), 0.0), axis=-1)
  heads = kl_BxRxL.shape[1]
  return jnp.sum(kl_BxRxL * weights_BxL[:, None, :]) / (heads * jnp.maximum(jnp.sum(weights_BxL), 1.0))


def _projections(out, params, side: str) -> list[jax.Array]:
  paths = _layer(params, side, list(out["features"]), "method")
  return lm_layers.projections([out["features"][p] for p in paths], 3)


def loss(student_out, teacher_out, batch, *, relation_weight, relations, relation_heads, student_layer,
         teacher_layer, student_features, teacher_features, **params) -> tuple[Any, dict[str, Any]]:
  total, metrics = lm_common.distillation_loss(student_out, teacher_out, batch, **params)
  layer_params = {"student_features": student_features, "teacher_features": teacher_features,
                  "student_layer": student_layer, "teacher_layer": teacher_layer}
  student_qkv = _projections(student_out, layer_params, "student")
  teacher_qkv = [jax.lax.stop_gradient(x) for x in _projections(teacher_out, layer_params, "teacher")]
  valid_Bx1xLxL = lm_layers.causal_valid(lm_layers.key_mask(batch))
  weights_BxL = lm_layers.token_weights(batch)
  relation = 0.0
  for name in relations:
    first, second = (PROJECTIONS.index(c) for c in name)
    term = relation_kl(relation_logits(student_qkv[first], student_qkv[second], relation_heads),
                       relation_logits(teacher_qkv[first], teacher_qkv[second], relation_heads),
                       valid_Bx1xLxL, weights_BxL)
    metrics[f"relation_{name}"] = term
    relation = relation + term
  metrics["relation"] = relation
  return total + relation_weight * relation, metrics
