"""Magnitude pruning during training, kept as masks in the optimizer's state.

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression"
(ICLR 2018 workshop, arXiv:1710.01878), Eq. 1: the sparsity rises from s_i to s_f over n pruning
steps of Δt updates each, starting at t_0,

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n Δt))^3,    t in {t_0, t_0 + Δt, ..., t_0 + n Δt},

and at each pruning step the weights of smallest magnitude in each selected tensor are set to zero,
until that tensor's fraction s_t is zero; a weight once pruned stays pruned. The masks are part of
the optimizer's state (so they are checkpointed and a resumed run prunes exactly as an uninterrupted
one), and after every update the pruned weights are zero again, whatever the gradient or momentum would
have moved them by: `wrap` returns an optax transform, so the train step is unchanged.

A stage's `prune` block (kd.config.prune_config):

    sparsity        s_f, the final fraction of zeros in each selected tensor (0: no pruning)
    initial_sparsity  s_i
    start_step      t_0
    end_step        t_0 + n Δt (0: 3/4 of num_steps, leaving the last quarter to recover)
    every_steps     Δt
    mask            which parameters are pruned: "kernels" (Dense and Conv kernels of the student) or a
                    regular expression searched in each parameter's "/"-joined path ("student/...")

Unstructured pruning zeroes weights but keeps every tensor's shape, so the export has the teacher's
shape with zeros; its count of non-zero parameters is in the stage's result (`nonzero_params`).
"""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from kd.errors import ConfigError


def prune_config(**overrides) -> dict[str, Any]:
  return {"sparsity": 0.0, "initial_sparsity": 0.0, "start_step": 0, "end_step": 0, "every_steps": 10,
          "mask": "kernels", **overrides}


def check(prune: ml_collections.ConfigDict, num_steps: int, where: str) -> None:
  """One ConfigError line naming the key and the fix for a pruning block that cannot work."""
  if not 0.0 <= prune.sparsity < 1.0:
    raise ConfigError(f"{where}.sparsity={prune.sparsity} must be in [0, 1) (the fraction of weights set to zero)")
  if not prune.sparsity:
    return
  if not 0.0 <= prune.initial_sparsity <= prune.sparsity:
    raise ConfigError(f"{where}.initial_sparsity={prune.initial_sparsity} must be in [0, sparsity={prune.sparsity}]")
  end = end_step(prune, num_steps)
  if not 0 <= prune.start_step <= end <= num_steps:
    raise ConfigError(f"{where}: start_step={prune.start_step} <= end_step={end} <= num_steps={num_steps} "
                      "must hold")
  if prune.every_steps < 1:
    raise ConfigError(f"{where}.every_steps={prune.every_steps} must be >= 1")
  if prune.mask != "kernels":
    try:
      re.compile(prune.mask)
    except re.error as e:
      raise ConfigError(f"{where}.mask={prune.mask!r} is neither 'kernels' nor a regular expression ({e})") from None


def end_step(prune, num_steps: int) -> int:
  return prune.end_step or (3 * num_steps) // 4


def sparsity_at(step: jax.Array, prune, num_steps: int) -> jax.Array:
  """s_t of Eq. 1 at the last pruning step <= `step` (constant between pruning steps)."""
  start, end = prune.start_step, end_step(prune, num_steps)
  span = max(end - start, 1)
  pruning_step = start + ((jnp.clip(step, start, end) - start) // prune.every_steps) * prune.every_steps
  progress = jnp.clip((pruning_step - start) / span, 0.0, 1.0)
  if end <= start:  # Pruned at once.
    progress = 1.0
  return prune.sparsity + (prune.initial_sparsity - prune.sparsity) * (1.0 - progress) ** 3


def _selector(pattern: str):
  regex = re.compile(r"^student/(.*/)?kernel$" if pattern == "kernels" else pattern)
  return lambda path: bool(regex.search("/".join(str(getattr(k, "key", k)) for k in path)))


def magnitude_mask(weights: jax.Array, sparsity: jax.Array) -> jax.Array:
  """True for the weights kept: all but the floor(sparsity * size) of smallest magnitude (ties by index)."""
  flat = jnp.abs(weights).reshape(-1)
  num_pruned = jnp.floor(sparsity * flat.size).astype(jnp.int32)
  rank = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)  # 0 for the smallest magnitude.
  return (rank >= num_pruned).reshape(weights.shape)


class PruningState(NamedTuple):
  inner: Any
  masks: Any  # Per parameter: a bool mask for pruned tensors, None for the others.
  count: jax.Array  # Updates applied so far.


def wrap(optimizer: optax.GradientTransformation, prune, num_steps: int) -> optax.GradientTransformation:
  """`optimizer` followed by pruning to `prune`'s schedule (the identity if prune.sparsity is 0)."""
  if not prune or not prune.sparsity:
    return optimizer
  selected = _selector(prune.mask)

  def init(params):
    masks = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.ones(p.shape, bool) if selected(path) else None, params)
    return PruningState(optimizer.init(params), masks, jnp.zeros((), jnp.int32))

  def update(updates, state, params):
    updates, inner = optimizer.update(updates, state.inner, params)
    step = state.count + 1  # The step this update completes, counted from 1 as in the logs.
    new_params = optax.apply_updates(params, updates)
    at_pruning_step = ((step >= prune.start_step) & (step <= end_step(prune, num_steps))
                       & ((step - prune.start_step) % prune.every_steps == 0))
    sparsity = sparsity_at(step, prune, num_steps)

    def next_mask(mask, weights):
      if mask is None:
        return None
      # The ranking (two argsorts per kernel) runs at pruning steps only, not at every update.
      return jax.lax.cond(at_pruning_step, lambda: mask & magnitude_mask(weights, sparsity), lambda: mask)

    masks = jax.tree.map(next_mask, state.masks, new_params, is_leaf=lambda x: x is None)
    pruned = jax.tree.map(lambda w, m: w if m is None else jnp.where(m, w, jnp.zeros_like(w)),
                          new_params, masks, is_leaf=lambda x: x is None)
    # w + (pruned - w): exactly 0 where pruned (x + -x == 0 in floating point), the update elsewhere.
    updates = jax.tree.map(lambda p, w: p - w, pruned, params)
    return updates, PruningState(inner, masks, step)

  return optax.GradientTransformation(init, update)


def count_nonzero(params) -> int:
  return int(sum(jnp.count_nonzero(leaf) for leaf in jax.tree.leaves(params)))
