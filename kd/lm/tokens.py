"""Next-token prediction on batches of fixed-length windows: targets and the weights of real tokens."""

import jax
import jax.numpy as jnp


def is_language_model(spec) -> bool:
  """Whether a dataset (a `kd.data.DatasetSpec`) is a token dataset for language modelling."""
  return spec.input_key == "tokens"


def next_token_targets(batch) -> tuple[jax.Array, jax.Array]:
  """The targets [B, L-1] of logits[:, :-1] and their weights (1 for a real next token, 0 for padding).

  Position i predicts token i+1; `batch["mask"]` marks real tokens, and `batch["loss_mask"]` (when a
  batch-preparation step sets it, e.g. to leave out a prompt) further restricts which targets count.
  """
  tokens_BxL = batch["tokens"]
  weights_BxL = batch["mask"] if "mask" in batch else jnp.ones(tokens_BxL.shape, bool)
  if "loss_mask" in batch:
    weights_BxL = weights_BxL & batch["loss_mask"]
  return tokens_BxL[:, 1:].astype(jnp.int32), weights_BxL[:, 1:].astype(jnp.float32)


def masked_mean(values_BxT: jax.Array, weights_BxT: jax.Array) -> jax.Array:
  """Mean over real tokens: sum(values * weights) / number of real tokens (not batch x length)."""
  return jnp.sum(values_BxT * weights_BxT) / jnp.maximum(jnp.sum(weights_BxT), 1.0)
