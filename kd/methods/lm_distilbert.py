"""DistilBERT's recipe (Sanh et al. 2019), transposed to a causal language model.

The student has the teacher's width and half its layers, and is initialised from the teacher's
layers spread evenly from the first to the last, as HF's extraction script for DistilBERT does
(`examples/research_projects/distillation/scripts/extract_distilbert.py`: teacher layers
[0, 2, 4, 7, 9, 11] of BERT-base's 12 for 6): student layer i <- teacher layer
round(i * (n_teacher - 1) / (n_student - 1)), halves rounded up (`default_layer_map`); `layer_map`
(a tuple of teacher layers, one per student layer) overrides it. Embeddings, final norm and head are
copied. Its loss is the paper's triple loss, with next-token prediction in place of masked-LM:

    loss = kd_weight * T^2 * KL(p_teacher || q_student) + ce_weight * CE(data)
           + cosine_weight * mean_tokens (1 - cos(h_student, h_teacher))

with h the hidden states at `student_features` / `teacher_features` (default: the output of the final
LayerNorm, the paper's last hidden states), every mean over real tokens. The paper's weights are
5 : 2 : 1 (its training code), at T = 2.

The teacher's outputs can come from the teacher cache (`teacher_cache.enabled`): its logits, or top k
(`top_k_cache="sparse"` computes the KL on the cache's k + 1 buckets, `kd.methods.lm_common`), and
its hidden states (the cache stores `features/<teacher_features path>`). `init_from_teacher` copies the
teacher's weights, which the cache does not hold: with the cache it must be False (`kd.config` refuses True).

Reference: V. Sanh, L. Debut, J. Chaumond, T. Wolf, "DistilBERT, a distilled version of BERT: smaller,
faster, cheaper and lighter", NeurIPS 2019 EMC^2 workshop, arXiv:1910.01108, Section 3.
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError
from kd.lm import tokens as lm_tokens
from kd.methods import lm_common

LANGUAGE_MODEL = True  # Reads next-token targets of a token dataset (kd.lm.check_stages).
NEEDS_TEACHER = True
# Reads the teacher's logits and hidden states on the dataset's windows only: kd.teacher_cache holds both.
CACHEABLE = True
DEFAULTS: dict[str, Any] = {**lm_common.DIVERGENCE_DEFAULTS, "temperature": 2.0, "kd_weight": 5.0,
                            "ce_weight": 2.0, "cosine_weight": 1.0, "init_from_teacher": True,
                            "student_features": ("final_norm",), "teacher_features": ("final_norm",),
                            "layer_map": (), "top_k_cache": "dense"}  # layer_map (): default_layer_map.


def default_layer_map(num_teacher_layers: int, num_student_layers: int) -> tuple[int, ...]:
  """Teacher layers for the student's, evenly spread and keeping the first and the last.

  Student layer i takes teacher layer round(i * (n_t - 1) / (n_s - 1)), a half rounded up; a
  one-layer student takes layer 0. 12 -> 6: (0, 2, 4, 7, 9, 11), HF's DistilBERT extraction.
  """
  if num_student_layers == 1:
    return (0,)
  span, steps = num_teacher_layers - 1, num_student_layers - 1
  return tuple((2 * i * span + steps) // (2 * steps) for i in range(num_student_layers))


def check(params: dict[str, Any], where: str) -> None:
  lm_common.check_divergence(params, where)
  lm_common.check_top_k_cache(params, where)
  if params["cosine_weight"] < 0:
    raise ConfigError(f"{where}.cosine_weight={params['cosine_weight']} must be >= 0")
  layer_map = params["layer_map"]
  if not isinstance(layer_map, (tuple, list)) or not all(
      isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0 for layer in layer_map):
    raise ConfigError(f"{where}.layer_map={layer_map!r} must be a tuple of teacher layer indices >= 0, one "
                      "per student layer (or () for the default: first to last, evenly spread)")


def check_features(params, student_shapes, teacher_shapes, where) -> None:
  del params
  if len(student_shapes) != len(teacher_shapes):
    raise ConfigError(f"{where}: {len(student_shapes)} student features but {len(teacher_shapes)} teacher "
                      "features; pair them one to one")
  for (student_path, student_shape), (teacher_path, teacher_shape) in zip(student_shapes.items(),
                                                                          teacher_shapes.items()):
    if student_shape != teacher_shape:
      raise ConfigError(f"{where}: student feature {student_path} {student_shape} and teacher feature "
                        f"{teacher_path} {teacher_shape} differ; the cosine loss needs the teacher's width")


def _num_layers(params) -> int:
  return sum(1 for name in params if name.startswith("layers_"))


def resolve_layer_map(params: dict[str, Any], student_params, teacher_params, where: str) -> tuple[int, ...]:
  """The teacher layer of each student layer: `params["layer_map"]`, or `default_layer_map`."""
  num_student, num_teacher = _num_layers(student_params), _num_layers(teacher_params)
  chosen = tuple(params["layer_map"]) or default_layer_map(num_teacher, num_student)
  if len(chosen) != num_student:
    raise ConfigError(f"{where}.layer_map={chosen} has {len(chosen)} entries but the student has {num_student} "
                      "layers; give one teacher layer per student layer")
  if any(layer >= num_teacher for layer in chosen):
    raise ConfigError(f"{where}.layer_map={chosen} names a layer the teacher lacks (it has {num_teacher}: "
                      f"0..{num_teacher - 1})")
  return chosen


def init_from_teacher(params: dict[str, Any], student_params, teacher_params, where: str):
  """The student's parameters taken from the teacher's: layer i from teacher layer `layer_map[i]`."""
  if not params["init_from_teacher"]:
    return student_params
  sources = resolve_layer_map(params, student_params, teacher_params, where)
  new = {}
  for name, value in student_params.items():
    source = f"layers_{sources[int(name.split('_')[1])]}" if name.startswith("layers_") else name
    if source not in teacher_params:
      raise ConfigError(f"{where}.init_from_teacher: the student's {name} would come from the teacher's "
                        f"{source}, which it lacks (teacher: {sorted(teacher_params)}); give the student "
                        "the teacher's layer names, or set init_from_teacher=False")
    shapes = jax.tree.map(jnp.shape, value), jax.tree.map(jnp.shape, teacher_params[source])
    if shapes[0] != shapes[1]:
      raise ConfigError(f"{where}.init_from_teacher: the student's {name} and the teacher's {source} have "
                        "different shapes; give the student the teacher's width, heads and MLP ratio, or "
                        "set init_from_teacher=False")
    new[name] = teacher_params[source]
  return new


def loss(student_out, teacher_out, batch, *, cosine_weight, init_from_teacher, student_features,
         teacher_features, layer_map, **params) -> tuple[Any, dict[str, Any]]:
  del init_from_teacher, student_features, teacher_features, layer_map
  total, metrics = lm_common.distillation_loss(student_out, teacher_out, batch, **params)
  _, weights_BxT = lm_tokens.next_token_targets(batch)
  # Hidden states at positions 0..L-2, the ones that predict a real next token.
  cosine = 0.0
  for student_h, teacher_h in zip(student_out["features"].values(), teacher_out["features"].values()):
    similarity_BxT = jnp.sum(losses.l2_normalize(student_h[:, :-1])
                             * losses.l2_normalize(jax.lax.stop_gradient(teacher_h[:, :-1])), axis=-1)
    cosine = cosine + lm_tokens.masked_mean(1.0 - similarity_BxT, weights_BxT)
  metrics["cosine"] = cosine
  return total + cosine_weight * cosine, metrics
