"""Sampling from a `TransformerLM` inside `jit`: a prefill, then `lax.scan` over a KV cache.

`generate` runs the prompt once through `TransformerLM.decode` (filling the cache), then one token
per scan step, each step reading the cached keys and values of all earlier positions: O(L) work per
token. `generate_recompute` is the reference it is tested and timed against: each step runs the
whole model on the whole (fixed-size, causally masked) buffer, O(L^2).

The sampler: logits / temperature, then top-k (keep the k largest), then top-p (nucleus, Holtzman et
al. 2020, arXiv:1904.09751: keep the smallest set of tokens whose probability reaches p), then a
categorical draw. temperature == 0 is greedy decoding.
"""

import functools

import jax
import jax.numpy as jnp

from kd.models import transformer_lm


def sample_logits(logits_BxV: jax.Array, rng: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Draws one token per row [B] from logits with temperature, top-k and top-p filtering."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth_largest = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_largest, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # A token is kept when the mass of the tokens strictly more likely is below p, so the most
    # likely token is always kept.
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept = mass_before_BxV < top_p
    threshold_Bx1 = jnp.min(jnp.where(kept, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def generate(module: transformer_lm.TransformerLM, variables, prompt_BxP: jax.Array, *,
             num_new_tokens: int, rng: jax.Array, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0) -> jax.Array:
  """The prompt followed by `num_new_tokens` sampled tokens, [B, P + num_new_tokens] int32.

  Traceable: call it inside `jit` (shapes and sampler settings are static).
  """
  batch_size, prompt_length = prompt_BxP.shape
  total = prompt_length + num_new_tokens
  if module.positions == "learned" and total > module.max_len:
    raise ValueError(f"{total} tokens exceed the model's max_len={module.max_len} (learned positions)")
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  cache = transformer_lm.init_cache(module, batch_size, total)
  decode = functools.partial(module.apply, variables, method=module.decode)
  logits_BxPxV, cache = decode(prompt_BxP.astype(jnp.int32), cache, 0)
  rngs = jax.random.split(rng, num_new_tokens)
  first_B = sample(logits_BxPxV[:, -1], rngs[0])

  def step(carry, step_rng):
    cache, token_B, index = carry
    logits_Bx1xV, cache = decode(token_B[:, None], cache, index)
    next_B = sample(logits_Bx1xV[:, 0], step_rng)
    return (cache, next_B, index + 1), next_B

  _, rest_NxB = jax.lax.scan(step, (cache, first_B, jnp.asarray(prompt_length, jnp.int32)), rngs[1:])
  return jnp.concatenate([prompt_BxP.astype(jnp.int32), first_B[:, None], rest_NxB.T], axis=1)


def generate_recompute(module: transformer_lm.TransformerLM, variables, prompt_BxP: jax.Array, *,
                       num_new_tokens: int, rng: jax.Array, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0) -> jax.Array:
  """Like `generate`, but every step recomputes the whole prefix with no cache (the reference)."""
  batch_size, prompt_length = prompt_BxP.shape
  total = prompt_length + num_new_tokens
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  buffer_BxT = jnp.zeros((batch_size, total), jnp.int32).at[:, :prompt_length].set(prompt_BxP)
  rngs = jax.random.split(rng, num_new_tokens)

  def step(index, buffer_BxT):
    # Positions after `index` hold zeros; the causal mask keeps them from the prediction.
    logits_BxTxV = module.apply(variables, buffer_BxT)
    last_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, index - 1, axis=1, keepdims=False)
    token_B = sample(last_BxV, rngs[index - prompt_length])
    return jax.lax.dynamic_update_index_in_dim(buffer_BxT, token_B, index, axis=1)

  return jax.lax.fori_loop(prompt_length, total, step, buffer_BxT)
