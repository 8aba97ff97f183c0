"""Distillation methods: a method is a loss, not a trainer.

Each method is one module with
  - `loss(student_out, teacher_out, batch, **params) -> (scalar_loss, metrics_dict)`, where the
    outputs are those of the apply functions (`{"logits": ..., "features": {...}}`);
  - `DEFAULTS`: its parameters and their default values (the config's `method` block);
  - `NEEDS_TEACHER`: whether the stage must name a teacher;
  - `check(params, where)`: raises ConfigError for impossible values.

Methods that use intermediate features have the parameters `student_features` and
`teacher_features` (tuples of module-path patterns, see `kd.features`); the apply functions then
return those features, in pattern order, as `out["features"]` ({path: array}). A method may also
define
  - `check_features(params, student_shapes, teacher_shapes, where)`: raises ConfigError when the
    selected features cannot work together (e.g. shapes that differ without a connector);
  - `make_connector(params, student_shapes, teacher_shapes, num_examples) -> flax.linen.Module | None`:
    trainable parts of the method (a regressor, embeddings, a memory bank over the `num_examples`
    examples of the training split, indexed by `batch["index"]`). The connector is called as
    `connector(student_out, teacher_out, batch, train)` and returns a dict that the loss finds in
    `student_out["connector"]`. Its parameters and state live in the TrainState and the checkpoint,
    and are left out of the exported student.
The shapes are {path: shape} of the selected features for a batch of 2.

Token features [B, N, C] (a ViT's or MLP-Mixer's blocks) are accepted by fitnets, at and nst, which
compare them token by token (a [B, H, W, C] map pairs with tokens as its H*W positions; the
parameters `student_special_tokens` / `teacher_special_tokens` drop leading class or distillation
tokens), by sp, cc, rkd, pkt and crd, which flatten each example's tokens into one vector, and by ab,
which reads [B, N, C] as a 1-D map of N positions (as a ConvNet1D's); fsp, vid, ft and reviewkd need
convolutional maps and say so before anything is compiled. deit reads
the student's distillation-token logits as a feature (`head_dist` of `kd.models.vit`).

Two more optional hooks:
  - `make_prepare_batch(params, student_module, teacher_module) -> prepare` with
    `prepare(student_variables, teacher_variables, batch, rng) -> batch`, run inside the compiled step
    before the forward passes, e.g. to generate the batch with the teacher or the current student
    (sequence-level and on-policy distillation of language models);
  - `init_from_teacher(params, student_params, teacher_params, where) -> student_params`, applied to a
    fresh student's parameters (e.g. DistilBERT's initialisation from teacher layers).
A method whose connector is trained in a stage of its own (FT's paraphraser) has, in that stage,
`EXPORTS_CONNECTOR = True` (the connector's variables are exported with the stage,
`<stage>/connector/`) and, in the stage that uses it, `connector_source(params) -> stage name`: the trainer puts that stage's exported
connector variables into the connector's "pretrained" collection (variable "connector") before the
first step; they are not trained.

To add a method, write the module and add it to `METHODS`.
"""

import functools
import math
from typing import Any, Callable, Mapping

from kd.errors import ConfigError
from kd.methods import ab
from kd.methods import attention_transfer
from kd.methods import cc
from kd.methods import crd
from kd.methods import deit
from kd.methods import dist
from kd.methods import dkd
from kd.methods import dml
from kd.methods import fitnets
from kd.methods import fsp
from kd.methods import ft
from kd.methods import lm_alm
from kd.methods import lm_distilbert
from kd.methods import lm_gkd
from kd.methods import lm_hidden
from kd.methods import lm_kd
from kd.methods import lm_minilm
from kd.methods import lm_seqkd
from kd.methods import lm_supervised
from kd.methods import lm_tinybert
from kd.methods import lm_uld
from kd.methods import hinton_kd
from kd.methods import logit_mse
from kd.methods import logit_std
from kd.methods import multi_teacher_kd
from kd.methods import nst
from kd.methods import pkt
from kd.methods import reviewkd
from kd.methods import rkd
from kd.methods import sp
from kd.methods import supervised
from kd.methods import vid

METHODS = {
    "supervised": supervised,
    # Response-based: the teacher's logits.
    "hinton_kd": hinton_kd,
    "dkd": dkd,
    "dist": dist,
    "logit_std": logit_std,
    "logit_mse": logit_mse,
    "deit": deit,  # The teacher's logits, learned by a distillation token's head (a feature tap).
    # Each member of an ensemble teacher (its `member_<i>` taps), weighted.
    "multi_teacher_kd": multi_teacher_kd,
    # Feature-based: intermediate features, through trainable connectors where shapes differ.
    "fitnets": fitnets,
    "at": attention_transfer,
    "nst": nst,
    "fsp": fsp,
    "vid": vid,
    "ab": ab,
    "reviewkd": reviewkd,
    "ft_paraphraser": ft.PARAPHRASER,  # FT's first stage: trains the paraphraser on the teacher.
    "ft": ft,
    # Relation-based: similarities between the examples of a batch.
    "sp": sp,
    "cc": cc,
    "rkd": rkd,
    "pkt": pkt,
    "crd": crd,
    # Online: a cohort of students distilling from each other's current predictions.
    "dml": dml,
    # Language models: next-token targets over real tokens (see kd.methods.lm_common).
    "lm_supervised": lm_supervised,
    "lm_kd": lm_kd,
    "lm_seqkd": lm_seqkd,
    "lm_gkd": lm_gkd,
    "lm_distilbert": lm_distilbert,
    "lm_hidden": lm_hidden,  # Hidden states through a layer map and learned projections.
    "lm_minilm": lm_minilm,  # Self-attention relations (q, k, v) per relation head.
    "lm_tinybert": lm_tinybert,  # Embedding, attention-score, hidden-state and prediction layers.
    "lm_uld": lm_uld,  # Across tokenizers: sorted next-token probabilities (Boizard et al. 2024).
    "lm_alm": lm_alm,  # Across tokenizers: likelihoods of aligned chunks of text (Minixhofer et al. 2025).
}

PRETRAINED = ft.PRETRAINED  # The connector collection filled from connector_source.

LossFn = Callable[..., tuple[Any, dict[str, Any]]]


def method_params(method_config: Mapping[str, Any]) -> dict[str, Any]:
  return {key: value for key, value in dict(method_config).items() if key != "name"}


def check_method_config(method_config: Mapping[str, Any], where: str) -> None:
  """Raises ConfigError naming the key and the fix if the method config cannot work."""
  name = method_config.get("name", "")
  if name not in METHODS:
    raise ConfigError(f"{where}.name={name!r} is not a method; available methods: {sorted(METHODS)}")
  module = METHODS[name]
  params = method_params(method_config)
  for key in params:
    if key not in module.DEFAULTS:
      known = sorted(module.DEFAULTS) or "none"
      raise ConfigError(f"{where}.{key} is not a parameter of method {name!r}; its parameters: {known}")
  for key, value in params.items():
    numbers = value if isinstance(value, (list, tuple)) else (value,)
    if any(isinstance(n, float) and not math.isfinite(n) for n in numbers):
      raise ConfigError(f"{where}.{key}={value!r} must be finite")
  module.check({**module.DEFAULTS, **params}, where)


def method_config(name: str, **params) -> dict[str, Any]:
  """A full method config block: the method's defaults, overridden by `params`."""
  if name not in METHODS:
    raise ConfigError(f"{name!r} is not a method; available methods: {sorted(METHODS)}")
  return {"name": name, **METHODS[name].DEFAULTS, **params}


def build_loss(method_config: Mapping[str, Any]) -> LossFn:
  """`loss(student_out, teacher_out, batch) -> (loss, metrics)` with the config's parameters bound."""
  check_method_config(method_config, "method")
  module = METHODS[method_config["name"]]
  return functools.partial(module.loss, **{**module.DEFAULTS, **method_params(method_config)})


def needs_teacher(method_config: Mapping[str, Any]) -> bool:
  return METHODS[method_config["name"]].NEEDS_TEACHER


def feature_patterns(method_config: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(student patterns, teacher patterns) of the features a method reads; empty for logits only.

  A method with `feature_patterns(params)` decides them from its parameters (lm_kd and lm_gkd read the
  hidden states and heads when chunk_size > 0); others name them in student_features / teacher_features.
  """
  module = METHODS[method_config["name"]]
  params = {**module.DEFAULTS, **method_params(method_config)}
  if hasattr(module, "feature_patterns"):
    return module.feature_patterns(params)
  return tuple(params.get("student_features", ())), tuple(params.get("teacher_features", ()))


def check_feature_shapes(method_config: Mapping[str, Any], student_shapes: dict, teacher_shapes: dict,
                         where: str) -> None:
  module = METHODS[method_config["name"]]
  if hasattr(module, "check_features"):
    module.check_features({**module.DEFAULTS, **method_params(method_config)}, student_shapes,
                          teacher_shapes, where)


def build_connector(method_config: Mapping[str, Any], student_shapes: dict, teacher_shapes: dict,
                    num_examples: int, *, student_model: Mapping[str, Any] | None = None,
                    num_classes: int = 0, input_key: str = "image"):
  """The method's trainable connector module, or None.

  A method with `USES_STUDENT_MODEL = True` (networks of the student's architecture in its connector,
  e.g. mutual learning's peers) also gets the student's model config, the number of classes and the
  batch's input key.
  """
  module = METHODS[method_config["name"]]
  if not hasattr(module, "make_connector"):
    return None
  extra = ({"student_model": student_model, "num_classes": num_classes, "input_key": input_key}
           if getattr(module, "USES_STUDENT_MODEL", False) else {})
  return module.make_connector({**module.DEFAULTS, **method_params(method_config)}, student_shapes,
                               teacher_shapes, num_examples, **extra)


def build_prepare_batch(method_config: Mapping[str, Any], student_module, teacher_module):
  """The method's in-step batch preparation (see the module docstring), or None."""
  module = METHODS[method_config["name"]]
  if not hasattr(module, "make_prepare_batch"):
    return None
  return module.make_prepare_batch({**module.DEFAULTS, **method_params(method_config)}, student_module,
                                   teacher_module)


def build_init_from_teacher(method_config: Mapping[str, Any], where: str):
  """`init(student_params, teacher_params) -> student_params` of the method, or None."""
  module = METHODS[method_config["name"]]
  params = {**module.DEFAULTS, **method_params(method_config)}
  # Switched off: no hook at all, so a stage whose teacher is the cache never reads teacher weights.
  if not hasattr(module, "init_from_teacher") or not params.get("init_from_teacher", True):
    return None
  return functools.partial(module.init_from_teacher, params, where=where)


def exports_connector(method_config: Mapping[str, Any]) -> bool:
  """Whether a stage with this method exports its connector's variables (for a later stage)."""
  return getattr(METHODS[method_config["name"]], "EXPORTS_CONNECTOR", False)


def connector_source(method_config: Mapping[str, Any]) -> str:
  """The earlier stage whose exported connector this method loads, or "" for none."""
  module = METHODS[method_config["name"]]
  if not hasattr(module, "connector_source"):
    return ""
  return module.connector_source({**module.DEFAULTS, **method_params(method_config)})
