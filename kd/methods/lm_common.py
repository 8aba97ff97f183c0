"""What the language-model methods share: next-token divergence + cross-entropy, over real tokens.

    loss = kd_weight * T^2 * mean_real_tokens D(p_teacher, q_student) + ce_weight * mean_real_tokens CE

D is one of `kd.losses.TOKEN_DIVERGENCES` (`divergence`), with its `beta` (JSD) or `alpha` (skew KL).
Every mean is over the real target tokens of the batch (mask and, when set, loss_mask), never over
batch x length, so padding neither dilutes nor weights the loss. The T^2 factor keeps the soft
term's gradient size independent of T (Hinton et al. 2015, Section 2).
"""

from typing import Any

import jax
import jax.numpy as jnp

from kd import losses
from kd.errors import ConfigError
from kd.lm import tokens as lm_tokens

DECODINGS = ("sample", "greedy", "beam")

DIVERGENCE_DEFAULTS: dict[str, Any] = {"divergence": "forward_kl", "beta": 0.5, "alpha": 0.1,
                                       "temperature": 1.0, "kd_weight": 1.0, "ce_weight": 0.0}


def check_divergence(params: dict[str, Any], where: str) -> None:
  if params["divergence"] not in losses.TOKEN_DIVERGENCES:
    raise ConfigError(f"{where}.divergence={params['divergence']!r}: choose one of "
                      f"{sorted(losses.TOKEN_DIVERGENCES)}")
  if params["divergence"] == "jsd" and not 0 < params["beta"] < 1:
    raise ConfigError(f"{where}.beta={params['beta']} must be in (0, 1) for the generalized JSD (it "
                      "vanishes at 0 and 1): use divergence=forward_kl or reverse_kl for the ends")
  if not 0 <= params["alpha"] < 1:
    raise ConfigError(f"{where}.alpha={params['alpha']} must be in [0, 1) (DistiLLM uses 0.1)")
  if not params["temperature"] > 0:
    raise ConfigError(f"{where}.temperature={params['temperature']} must be > 0")
  for key in ("kd_weight", "ce_weight"):
    if not params[key] >= 0:
      raise ConfigError(f"{where}.{key}={params[key]} must be >= 0")
  if params["kd_weight"] == 0 and params["ce_weight"] == 0:
    raise ConfigError(f"{where}: kd_weight and ce_weight are both 0, so nothing is learned; set one > 0")


def check_prompt(params: dict[str, Any], where: str) -> None:
  if params["prompt_length"] < 1:
    raise ConfigError(f"{where}.prompt_length={params['prompt_length']} must be >= 1")
  if params["sample_temperature"] < 0:
    raise ConfigError(f"{where}.sample_temperature={params['sample_temperature']} must be >= 0 (0: greedy)")
  if params["top_k"] < 0:
    raise ConfigError(f"{where}.top_k={params['top_k']} must be >= 0 (0: no top-k filter)")
  if not 0 < params["top_p"] <= 1:
    raise ConfigError(f"{where}.top_p={params['top_p']} must be in (0, 1] (1: no nucleus filter)")
  eos_token = params["eos_token"]
  if not isinstance(eos_token, int) or isinstance(eos_token, bool) or eos_token < -1:
    raise ConfigError(f"{where}.eos_token={eos_token!r} must be a token id >= 0, or -1 for none")


def check_decoding(params: dict[str, Any], where: str) -> None:
  if params["decoding"] not in DECODINGS:
    raise ConfigError(f"{where}.decoding={params['decoding']!r}: choose one of {DECODINGS}")
  beam_size = params["beam_size"]
  if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
    raise ConfigError(f"{where}.beam_size={beam_size!r} must be an integer >= 1 (Kim & Rush use 5)")


def distillation_loss(student_out, teacher_out, batch, *, divergence: str, beta: float, alpha: float,
                      temperature: float, kd_weight: float, ce_weight: float) -> tuple[Any, dict[str, Any]]:
  """The combined loss of the module docstring, and its terms."""
  targets_BxT, weights_BxT = lm_tokens.next_token_targets(batch)
  real_BxT = weights_BxT > 0
  student_logits = student_out["logits"][:, :-1]
  ce = lm_tokens.masked_mean(losses.token_cross_entropy(student_logits, targets_BxT, where=real_BxT),
                             weights_BxT)
  predictions = jnp.argmax(student_logits, -1)
  metrics = {"ce": ce, "tokens": jnp.sum(weights_BxT),
             "token_accuracy": lm_tokens.masked_mean(predictions == targets_BxT, weights_BxT)}
  total = ce_weight * ce
  if teacher_out is not None and kd_weight:
    teacher_logits = jax.lax.stop_gradient(teacher_out["logits"][:, :-1])
    divergence_fn, extra = losses.TOKEN_DIVERGENCES[divergence]
    extra_kwargs = {extra: {"beta": beta, "alpha": alpha}[extra]} if extra else {}
    per_token = divergence_fn(student_logits, teacher_logits, temperature=temperature, where=real_BxT,
                              **extra_kwargs)
    kd = temperature**2 * lm_tokens.masked_mean(per_token, weights_BxT)
    total = total + kd_weight * kd
    metrics["kd"] = kd
    metrics["teacher_agreement"] = lm_tokens.masked_mean(
        predictions == jnp.argmax(teacher_logits, -1), weights_BxT)
  return total, metrics
