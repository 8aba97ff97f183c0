"""An ensemble of trained classifiers as one model: a teacher, a report-card row, an export.

Hinton et al. (2015), "Distilling the Knowledge in a Neural Network", Sec. 1 and 6: an ensemble's
predictions are the arithmetic or the geometric mean of its members' predictive distributions, and
distilling it into one small model keeps most of its gain. Both means are `combine` choices:

    mean_probs    p(x) = sum_i w_i softmax(z_i(x))            arithmetic mean (deep ensembles,
                  logits = log p(x)                            Lakshminarayanan et al. 2017, Sec. 2.4)
    mean_logits   logits = sum_i w_i z_i(x),                   normalised weighted geometric mean
                  softmax(logits) ∝ prod_i softmax(z_i)^w_i     of the members' distributions

with weights w_i >= 0 normalised to sum 1 (equal when `weights` is empty). The logits of "mean_probs"
are log-probabilities, so a temperature applied to them by a distillation loss sharpens or softens the
ensemble's distribution itself.

Each member keeps its own architecture and input preprocessing (the ensemble reads the batch's inputs
unchanged and preprocesses them per member), and is the submodule `member_<i>`: its variables are
`{"params": {"member_0": ..., ...}, "batch_stats": {...}}`, and its logits are the tap point
`member_<i>` (kd.features), for a method that reads each teacher's output (per-teacher losses).

`kd.config.ensemble_stage` makes the stage that assembles an ensemble from earlier stages' exports
(`init_from = "stage:a,b,c"`, no training steps); later stages name that stage as their `teacher`.
"""

from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.models import attributes
from kd.models import preprocessing

COMBINE = ("mean_probs", "mean_logits")


def normalised_weights(weights: Sequence[float], num_members: int) -> jax.Array:
  """The members' weights, summing to 1 (equal weights when none are given)."""
  if not weights:
    return jnp.full((num_members,), 1.0 / num_members, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  return weights / jnp.sum(weights)


def combine_logits(member_logits_MxBxC: jax.Array, weights_M: jax.Array, combine: str) -> jax.Array:
  """The ensemble's logits from its members' (see the module docstring)."""
  if combine == "mean_logits":
    return jnp.einsum("m,m...->...", weights_M, member_logits_MxBxC)
  log_probs_MxBxC = jax.nn.log_softmax(member_logits_MxBxC, axis=-1)
  # log sum_i w_i p_i, computed in log space so confident members do not underflow.
  return jax.nn.logsumexp(log_probs_MxBxC, axis=0, b=weights_M.reshape((-1,) + (1,) * (log_probs_MxBxC.ndim - 1)))


class Ensemble(nn.Module):
  """Members' logits combined into one prediction.

  Attributes:
    num_classes: size of the output (every member predicts the same classes).
    members: the members' model configs (kd.models.model_config dicts, each with its `preprocess`).
    combine: "mean_probs" or "mean_logits".
    weights: one weight per member (>= 0), or () for equal weights.
  """

  num_classes: int
  members: Sequence[Mapping[str, Any]] = ()
  combine: str = "mean_probs"
  weights: Sequence[float] = ()

  ATTRIBUTE_RANGES: ClassVar[dict] = {"combine": attributes.Choice(*COMBINE),
                                      "weights": attributes.Range(0.0)}
  # The batch's inputs reach __call__ unchanged: each member applies its own preprocessing.
  raw_inputs: ClassVar[bool] = True

  def setup(self):
    from kd import models  # pylint: disable=g-import-not-at-top  # kd.models registers this class.
    for index, member in enumerate(self.members):  # Named member_<i>: the tap point of its logits.
      setattr(self, f"member_{index}", models.build_model(dict(member), self.num_classes))

  def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
    member_logits = []
    from kd import models  # pylint: disable=g-import-not-at-top
    for index, member in enumerate(self.members):
      module, preprocess = getattr(self, f"member_{index}"), models.preprocess_of(member)
      member_inputs = inputs if getattr(module, "integer_inputs", False) else preprocessing.apply(preprocess, inputs)
      member_logits.append(module(member_inputs, train=train).astype(jnp.float32))
    weights_M = normalised_weights(tuple(self.weights), len(member_logits))
    return combine_logits(jnp.stack(member_logits), weights_M, self.combine)
