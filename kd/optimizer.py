"""The optimizer a stage's `optimizer` block describes: its transform, schedule, weight-decay semantics and
momentum restarts."""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from kd import distributed
from kd.errors import ConfigError

# Keys read with these defaults where an optimizer block predates them.
DEFAULTS = {"reset_momentum_at_decays": False}


def make_optimizer(optimizer_config: ml_collections.ConfigDict, num_steps: int,
                   batch_size: int | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transform a stage's `optimizer` block describes, and its learning-rate schedule.

  With `batch_size` (global), the peak rate is scaled by the block's `lr_scaling` rule. With
  `reset_momentum_at_decays` (multistep only), the momentum (Adam's moments) restarts from zero at each
  decay boundary, as a training loop that builds a new torch optimizer at each decay does.
  """
  peak, warmup = optimizer_config.learning_rate, optimizer_config.warmup_steps
  if batch_size is not None and "lr_scaling" in optimizer_config:
    peak = distributed.scaled_learning_rate(peak, optimizer_config.lr_scaling, batch_size,
                                            optimizer_config.base_batch_size)
  if optimizer_config.schedule == "cosine":
    learning_rate = optax.cosine_decay_schedule(peak, num_steps - warmup)
  elif optimizer_config.schedule == "multistep":
    # Boundaries count from the start of training; after warmup the schedule sees step - warmup.
    learning_rate = optax.piecewise_constant_schedule(
        peak, {boundary - warmup: optimizer_config.decay_factor
               for boundary in optimizer_config.decay_boundaries})
  else:
    learning_rate = optax.constant_schedule(peak)
  if warmup:
    learning_rate = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), learning_rate], [warmup])
  reset_steps = ()
  if optimizer_config.get("reset_momentum_at_decays", DEFAULTS["reset_momentum_at_decays"]):
    if optimizer_config.schedule != "multistep":
      raise ConfigError(f"optimizer.reset_momentum_at_decays=True restarts the momentum at the decays of "
                        f"schedule='multistep', but the schedule is {optimizer_config.schedule!r}: set "
                        "schedule='multistep' with decay_boundaries, or reset_momentum_at_decays=False")
    reset_steps = tuple(optimizer_config.decay_boundaries)
  transform = _optimizer_transform(optimizer_config, learning_rate, peak, reset_steps)
  if optimizer_config.grad_clip_norm:
    transform = optax.chain(optax.clip_by_global_norm(optimizer_config.grad_clip_norm), transform)
  return transform, learning_rate


def _decay_mask(pattern: str):
  """A callable optax mask: which parameters weight decay applies to (see optimizer.weight_decay_mask)."""
  if pattern == "all":
    return None
  regex = re.compile(r"(^|/)kernel$" if pattern == "kernels" else pattern)

  def mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(regex.search("/".join(str(getattr(k, "key", k)) for k in path))), params)

  return mask


class ResetAtState(NamedTuple):
  """`reset_at`'s state: the updates done so far, and the wrapped transform's state."""
  count: jax.Array
  inner: Any


def reset_at(inner: optax.GradientTransformation, steps: tuple[int, ...]) -> optax.GradientTransformation:
  """`inner` whose state is zeroed before the update numbered by each of `steps` (0 for the first).

  Built for the SGD momentum of a training loop that creates a new torch.optim.SGD at each learning
  rate decay (Zagoruyko and Komodakis's attention-transfer `cifar.py`, `on_start_epoch`): the first
  update after the decay starts from an empty buffer, buf = d. The schedule decays at the update
  whose count equals a boundary (optax.piecewise_constant_schedule), so the reset is at the same
  count. The counter lives in the state, so the transform stays pure, is checkpointed with the rest
  of the optimizer state and resumes where it stopped. Every leaf is zeroed, as a fresh optimizer
  starts (Adam's step count too).
  """
  boundaries = jnp.asarray(steps or (-1,), jnp.int32)

  def init(params):
    return ResetAtState(count=jnp.zeros([], jnp.int32), inner=inner.init(params))

  def update(updates, state, params=None):
    restart = jnp.any(state.count == boundaries)
    inner_state = jax.tree.map(lambda leaf: jnp.where(restart, jnp.zeros_like(leaf), leaf), state.inner)
    updates, inner_state = inner.update(updates, inner_state, params)
    return updates, ResetAtState(count=state.count + 1, inner=inner_state)

  return optax.GradientTransformation(init, update)


def _optimizer_transform(optimizer_config, learning_rate: optax.Schedule, peak: float,
                         reset_steps: tuple[int, ...] = ()):
  """The optimizer with its weight decay as `optimizer.weight_decay_mode` says (updates w += u):

    coupled             u = -lr(t) * opt(g + wd * w)           torch SGD / Adam `weight_decay`
    decoupled           u = -lr(t) * (opt(g) + wd * w)         torch AdamW, optax.adamw
    decoupled_schedule  u = -(lr(t) / peak) * (peak * opt(g) + wd * w)   big_vision (optax.py `make`:
                        lr scales the optimizer's step, wd * w is added after it, and both are
                        multiplied by the schedule, whose base is 1)

  opt is SGD with momentum (PyTorch's form, dampening 0) or Adam's scaled step; wd * w only on the
  parameters `optimizer.weight_decay_mask` selects. opt's state (the momentum buffer) is zeroed at
  each of `reset_steps` (see `reset_at`).
  """
  weight_decay, mask = optimizer_config.weight_decay, _decay_mask(optimizer_config.get("weight_decay_mask", "all"))
  mode = optimizer_config.get("weight_decay_mode", "") or ("decoupled" if optimizer_config.name == "adamw"
                                                            else "coupled")
  if optimizer_config.name == "adamw":
    step = optax.scale_by_adam()
  else:
    step = optax.trace(decay=optimizer_config.momentum, nesterov=optimizer_config.get("nesterov", True))
  if reset_steps:
    step = reset_at(step, reset_steps)
  decay = optax.add_decayed_weights(weight_decay, mask) if weight_decay else optax.identity()
  if mode == "coupled":
    return optax.chain(decay, step, optax.scale_by_learning_rate(learning_rate))
  if mode == "decoupled":
    return optax.chain(step, decay, optax.scale_by_learning_rate(learning_rate))
  multiplier = lambda count: learning_rate(count) / peak  # The schedule with base 1.
  return optax.chain(step, optax.scale(peak), decay, optax.scale_by_schedule(multiplier), optax.scale(-1.0))
