"""Deep mutual learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018): a cohort of students, trained
together in one step, each learning from the labels and from the others' current predictions.

For K networks with predictions p_k (softmax of their logits at temperature T), network k minimises
(Eq. 10 of the paper)

    L_k = CE(z_k, y) + 1/(K - 1) * sum_{l != k} KL(p_l || p_k)

where p_l is a target: its gradient is stopped, so each network's loss reaches only its own
parameters. The paper updates the networks in turn on each mini-batch; here all K update at once from
the same mini-batch (one compiled step), which is what its multi-GPU recipe does with simultaneous
updates. The stage's model is network 0 (evaluated and exported as the stage's student); the K - 1
peers are the method's connector (`peer_<i>`), trained with the same optimizer and exported with the
stage (`<stage>/connector/`). `peer_model` ({} = the student's own architecture) sets the peers'
architecture, as in the paper's pairs of different networks (e.g. ResNet-32 with WRN-28-10).

    loss = ce_weight * sum_k CE(z_k, y) + kl_weight * T^2 * sum_k 1/(K-1) sum_{l!=k} KL(p_l^T || p_k^T)

with T = 1 and both weights 1 in the paper. Reported metrics: the student's `ce` and `kl`, and the
peers' mean `peer_ce`, `peer_kl` and `peer_accuracy` (on the training batch).

Reference: Y. Zhang, T. Xiang, T. M. Hospedales, H. Lu, "Deep Mutual Learning", CVPR 2018,
arXiv:1706.00384.
"""

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError

NEEDS_TEACHER = False
EXPORTS_CONNECTOR = True  # The peers are networks of their own: kept with the stage's export.
USES_STUDENT_MODEL = True  # make_connector gets the student's model config (the peers' default).
DEFAULTS: dict[str, Any] = {"peers": 1, "peer_model": {}, "temperature": 1.0, "kl_weight": 1.0, "ce_weight": 1.0}


def check(params: dict[str, Any], where: str) -> None:
  from kd import models  # pylint: disable=g-import-not-at-top  # kd.models imports kd.methods' users.
  if not (isinstance(params["peers"], int) and params["peers"] >= 1):
    raise ConfigError(f"{where}.peers={params['peers']!r} must be an integer >= 1 (the cohort is the student "
                      "and its peers)")
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0 (the paper uses 1)")
  for key in ("kl_weight", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if params["peer_model"]:
    models.check_model_config(dict(params["peer_model"]), f"{where}.peer_model")


class Peers(nn.Module):
  """The peers of a mutual-learning cohort, applied to the student's batch; returns their logits."""

  peer_models: Sequence[Mapping[str, Any]]
  num_classes: int
  input_key: str

  def setup(self):
    from kd import models  # pylint: disable=g-import-not-at-top
    for index, model_config in enumerate(self.peer_models):
      setattr(self, f"peer_{index}", models.build_model(dict(model_config), self.num_classes))

  def __call__(self, student_out, teacher_out, batch, train: bool) -> dict[str, Any]:
    del student_out, teacher_out  # The peers see the student's inputs, not its outputs.
    from kd import models  # pylint: disable=g-import-not-at-top
    logits = []
    for index, model_config in enumerate(self.peer_models):
      module = getattr(self, f"peer_{index}")
      inputs = models.model_inputs(module, batch[self.input_key], models.preprocess_of(model_config))
      logits.append(module(inputs, train=train).astype(jnp.float32))
    return {"peer_logits": tuple(logits)}


def make_connector(params: dict[str, Any], student_shapes, teacher_shapes, num_examples: int, *,
                   student_model: Mapping[str, Any], num_classes: int, input_key: str) -> nn.Module:
  del student_shapes, teacher_shapes, num_examples
  peer = dict(params["peer_model"]) or dict(student_model)
  return Peers(peer_models=tuple(peer for _ in range(params["peers"])), num_classes=num_classes,
               input_key=input_key)


def _mutual_kl(logits_K: Sequence[jax.Array], k: int, temperature: float) -> jax.Array:
  """1/(K-1) sum_{l != k} KL(p_l || p_k), p_l a target (no gradient), per example."""
  others = [jax.lax.stop_gradient(logits) for l, logits in enumerate(logits_K) if l != k]
  return sum(losses.kl_divergence_with_logits(logits_K[k], other, temperature=temperature)
             for other in others) / len(others)


def loss(student_out, teacher_out, batch, *, peers: int, peer_model, temperature: float, kl_weight: float,
         ce_weight: float) -> tuple[Any, dict[str, Any]]:
  del teacher_out, peers, peer_model
  cohort = (student_out["logits"],) + tuple(student_out["connector"]["peer_logits"])
  ce = [jnp.mean(losses.cross_entropy_with_integer_labels(logits, batch["label"])) for logits in cohort]
  kl = [temperature**2 * jnp.mean(_mutual_kl(cohort, k, temperature)) for k in range(len(cohort))]
  total = ce_weight * sum(ce) + kl_weight * sum(kl)
  peer_accuracy = jnp.mean(jnp.stack([jnp.mean(jnp.argmax(logits, -1) == batch["label"]) for logits in cohort[1:]]))
  return total, {"ce": ce[0], "kl": kl[0], "peer_ce": sum(ce[1:]) / len(ce[1:]),
                 "peer_kl": sum(kl[1:]) / len(kl[1:]), "peer_accuracy": peer_accuracy}
