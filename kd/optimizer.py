"""The optimizer a stage's `optimizer` block describes: its transform, schedule and weight-decay semantics."""

import re

import jax
import ml_collections
import optax

from kd import distributed


def make_optimizer(optimizer_config: ml_collections.ConfigDict, num_steps: int,
                   batch_size: int | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transform a stage's `optimizer` block describes, and its learning-rate schedule.

  With `batch_size` (global), the peak rate is scaled by the block's `lr_scaling` rule.
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
  transform = _optimizer_transform(optimizer_config, learning_rate, peak)
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


def _optimizer_transform(optimizer_config, learning_rate: optax.Schedule, peak: float):
  """The optimizer with its weight decay as `optimizer.weight_decay_mode` says (updates w += u):

    coupled             u = -lr(t) * opt(g + wd * w)           torch SGD / Adam `weight_decay`
    decoupled           u = -lr(t) * (opt(g) + wd * w)         torch AdamW, optax.adamw
    decoupled_schedule  u = -(lr(t) / peak) * (peak * opt(g) + wd * w)   big_vision (optax.py `make`:
                        lr scales the optimizer's step, wd * w is added after it, and both are
                        multiplied by the schedule, whose base is 1)

  opt is SGD with momentum (PyTorch's form, dampening 0) or Adam's scaled step; wd * w only on the
  parameters `optimizer.weight_decay_mask` selects.
  """
  weight_decay, mask = optimizer_config.weight_decay, _decay_mask(optimizer_config.get("weight_decay_mask", "all"))
  mode = optimizer_config.get("weight_decay_mode", "") or ("decoupled" if optimizer_config.name == "adamw"
                                                            else "coupled")
  if optimizer_config.name == "adamw":
    step = optax.scale_by_adam()
  else:
    step = optax.trace(decay=optimizer_config.momentum, nesterov=optimizer_config.get("nesterov", True))
  decay = optax.add_decayed_weights(weight_decay, mask) if weight_decay else optax.identity()
  if mode == "coupled":
    return optax.chain(decay, step, optax.scale_by_learning_rate(learning_rate))
  if mode == "decoupled":
    return optax.chain(step, decay, optax.scale_by_learning_rate(learning_rate))
  multiplier = lambda count: learning_rate(count) / peak  # The schedule with base 1.
  return optax.chain(step, optax.scale(peak), decay, optax.scale_by_schedule(multiplier), optax.scale(-1.0))
