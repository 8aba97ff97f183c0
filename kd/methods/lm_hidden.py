"""Hidden-state distillation with a layer map and learned projections (DistillKit's `layer_mapping`).

Mapped student layers regress the teacher's hidden states through a learned linear projection:

    loss = kd_weight * T^2 * KL + ce_weight * CE                       (kd.methods.lm_common)
           + hidden_weight * (1 / |map|) sum_{(m, n) in map} D(h^S_m W_m, h^T_n)

    D = mse:     sum_{real t} ||h^S_t W - h^T_t||^2 / (#real tokens * d_T)
        cosine:  sum_{real t} (1 - cos(h^S_t W, h^T_t)) / #real tokens

as DistillKit computes them (`distillkit/lossfuncs/hidden_state.py`, `compute_hs_loss`: the squared
error summed over the masked positions and divided by their count times the width; 1 - cosine
similarity averaged over them; the layer losses averaged over the mapping). W_m (`HiddenStateMapping`,
`distillkit/hsd_mapping.py`) is one bias-free Linear d_S -> d_T per mapped pair, used when the widths
differ or with `force_projection` (DistillKit's `force_hidden_state_projection`), initialised by
`projection_init` (its `init_strategy`: xavier, the default; kaiming; zero; identity = the truncated
identity); it is kd's connector, trained with the student and left out of the exported model.

The layer map: `student_layers[i]` is paired with `teacher_layers[i]`, indices into the selected hidden
states (`student_features` / `teacher_features`; by default the blocks' outputs `layers_0`, `layers_1`,
...); () maps the student's layers uniformly onto the teacher's (`kd.methods.lm_layers`), which for
equal depths is DistillKit's `layer_mapping: all`. DistillKit indexes Hugging Face's `hidden_states`,
whose entry 0 is the embedding output: with `student_features=("embed", "re:layers_[0-9]+")` (or `wte`,
`embed_tokens` for the HF families) index 0 is the embedding too and index i is block i - 1's output,
DistillKit's numbering (HF's last entry is after the final norm, here `final_norm`).

Where DistillKit divides the weighted sum of its losses by the sum of the weights, kd adds the weighted
terms, as every kd method does. Masks: `kd.methods.lm_layers` (padding positions never count).

Reference: arcee-ai/DistillKit (github.com/arcee-ai/DistillKit), README "Hidden State Distillation";
`distillkit/hsd_mapping.py`, `distillkit/lossfuncs/hidden_state.py`, `distillkit/configuration.py`
(`layer_mapping`, `force_hidden_state_projection`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError
from kd.methods import lm_common
from kd.methods import lm_layers

LANGUAGE_MODEL = True  # Reads next-token targets of a token dataset (kd.lm.check_stages).
NEEDS_TEACHER = True
LOSS_TYPES = ("mse", "cosine")
HIDDEN_STATES = ("re:layers_[0-9]+",)  # Every block's output, in the model's order.
DEFAULTS: dict[str, Any] = {
    **lm_common.DIVERGENCE_DEFAULTS,
    "hidden_weight": 1.0,
    "loss_type": "mse",  # DistillKit's hs_mse; "cosine" is its hs_cosine.
    "force_projection": False,
    "projection_init": "xavier",
    "student_features": HIDDEN_STATES,
    "teacher_features": HIDDEN_STATES,
    "student_layers": (),  # () and (): the uniform map (see kd.methods.lm_layers).
    "teacher_layers": (),
}


def _identity_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(shape[0], shape[1], dtype=dtype)  # kernel [d_S, d_T]: the truncated identity.


PROJECTION_INITS = {
    "xavier": nn.initializers.xavier_uniform(),  # torch's xavier_uniform_.
    "kaiming": nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),  # kaiming_uniform_, linear.
    "zero": nn.initializers.zeros,
    "identity": _identity_init,
}


def check(params: dict[str, Any], where: str) -> None:
  lm_layers.check_lm_terms(params, where, ("hidden_weight",))
  lm_layers.check_layer_lists(params, where)
  if params["loss_type"] not in LOSS_TYPES:
    raise ConfigError(f"{where}.loss_type={params['loss_type']!r}: choose one of {LOSS_TYPES}")
  if params["projection_init"] not in PROJECTION_INITS:
    raise ConfigError(f"{where}.projection_init={params['projection_init']!r}: choose one of "
                      f"{sorted(PROJECTION_INITS)}")
  if not params["student_features"] or not params["teacher_features"]:
    raise ConfigError(f"{where}: student_features and teacher_features must each select hidden states")


def _pairs(params, student_shapes, teacher_shapes):
  return lm_layers.resolve_layer_map(params, len(student_shapes), len(teacher_shapes))


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  for side, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
    for path, shape in shapes.items():
      if len(shape) != 3:
        raise ConfigError(f"{where}.{side}_features: {path} is {shape[1:]}, not a hidden state [L, C] per "
                          f"example; select block outputs (e.g. {HIDDEN_STATES[0]!r})")
  lm_layers.check_layer_indices("student_layers", params["student_layers"], list(student_shapes), where,
                                "student")
  lm_layers.check_layer_indices("teacher_layers", params["teacher_layers"], list(teacher_shapes), where,
                                "teacher")
  student_list, teacher_list = list(student_shapes.items()), list(teacher_shapes.items())
  for s, t in zip(*_pairs(params, student_shapes, teacher_shapes)):
    (s_path, s_shape), (t_path, t_shape) = student_list[s], teacher_list[t]
    if s_shape[1] != t_shape[1]:
      raise ConfigError(f"{where}: student {s_path} has {s_shape[1]} positions, teacher {t_path} "
                        f"{t_shape[1]}; hidden states pair position by position")


def _needs_projection(params, student_shapes, teacher_shapes) -> bool:
  student_list, teacher_list = list(student_shapes.values()), list(teacher_shapes.values())
  return params["force_projection"] or any(
      student_list[s][-1] != teacher_list[t][-1] for s, t in zip(*_pairs(params, student_shapes, teacher_shapes)))


class HiddenProjections(nn.Module):
  """DistillKit's `distillation_projections`: one bias-free Linear d_S -> d_T per mapped pair.

  Returns {"projected": [h^S_m W_m for each pair, in map order]}.
  """

  student_layers: Sequence[int]
  teacher_widths: Sequence[int]
  projection_init: str = "xavier"

  @nn.compact
  def __call__(self, student_out, teacher_out, batch, train: bool):
    del teacher_out, batch, train
    hidden = list(student_out["features"].values())
    return {"projected": [
        nn.Dense(width, use_bias=False, kernel_init=PROJECTION_INITS[self.projection_init],
                 name=f"projection{index}")(hidden[layer].astype(jnp.float32))
        for index, (layer, width) in enumerate(zip(self.student_layers, self.teacher_widths))]}


def make_connector(params, student_shapes, teacher_shapes, num_examples):
  del num_examples
  if not _needs_projection(params, student_shapes, teacher_shapes):
    return None
  student_layers, teacher_layers = _pairs(params, student_shapes, teacher_shapes)
  teacher_list = list(teacher_shapes.values())
  return HiddenProjections(student_layers=student_layers,
                           teacher_widths=tuple(teacher_list[t][-1] for t in teacher_layers),
                           projection_init=params["projection_init"])


def hidden_state_loss(student_h_BxLxC: jax.Array, teacher_h_BxLxC: jax.Array, weights_BxL: jax.Array, *,
                      loss_type: str = "mse") -> jax.Array:
  """DistillKit's per-layer hidden-state loss over the real positions (weights 1), a scalar.

  Args:
    student_h_BxLxC: the (projected) student hidden states, [B, L, C].
    teacher_h_BxLxC: the teacher's, [B, L, C].
    weights_BxL: 1 for a real token position, 0 for padding.
    loss_type: "mse" (squared error summed over positions and channels, divided by the real positions
      times C) or "cosine" (1 - cosine similarity, averaged over the real positions).

  Returns:
    [] the loss.

  References:
    DistillKit, `distillkit/lossfuncs/hidden_state.py` (`compute_hs_loss`).
  """
  student_h, teacher_h = student_h_BxLxC.astype(jnp.float32), teacher_h_BxLxC.astype(jnp.float32)
  if loss_type == "mse":
    squared_BxL = jnp.sum((student_h - teacher_h) ** 2, axis=-1)
    return jnp.sum(squared_BxL * weights_BxL) / (jnp.maximum(jnp.sum(weights_BxL), 1.0) * student_h.shape[-1])
  cosine_BxL = jnp.sum(losses.l2_normalize(student_h) * losses.l2_normalize(teacher_h), axis=-1)
  return lm_layers.masked_token_mean(1.0 - cosine_BxL, weights_BxL)


def loss(student_out, teacher_out, batch, *, hidden_weight, loss_type, force_projection, projection_init,
         student_features, teacher_features, student_layers, teacher_layers,
         **params) -> tuple[Any, dict[str, Any]]:
  del force_projection, projection_init, student_features, teacher_features
  total, metrics = lm_common.distillation_loss(student_out, teacher_out, batch, **params)
  student_hidden = list(student_out["features"].values())
  teacher_hidden = [jax.lax.stop_gradient(h) for h in teacher_out["features"].values()]
  pairs = lm_layers.resolve_layer_map({"student_layers": student_layers, "teacher_layers": teacher_layers},
                                      len(student_hidden), len(teacher_hidden))
  projected = (student_out["connector"]["projected"] if "connector" in student_out
               else [student_hidden[s] for s in pairs[0]])
  weights_BxL = lm_layers.token_weights(batch)
  hidden = sum(hidden_state_loss(p, teacher_hidden[t], weights_BxL, loss_type=loss_type)
               for p, t in zip(projected, pairs[1])) / len(projected)
  metrics["hidden"] = hidden
  return total + hidden_weight * hidden, metrics
