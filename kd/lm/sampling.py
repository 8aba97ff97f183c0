"""Decoding a language model inside `jit`: a prefill, then `lax.scan` over a KV cache.

Any decoder module works that has `decode(tokens, cache, cache_index) -> (logits, cache)` (logits of
the new tokens at positions cache_index.., the cache updated) and either an `init_cache(batch_size,
length, dtype)` method or `transformer_lm`'s attributes (`make_cache`); every cache leaf has the batch
on axis 0.

`generate` runs the prompt once through `decode` (filling the cache), then one token per scan step,
each step reading the cached keys and values of all earlier positions: O(L) work per token.
`generate_recompute` is the reference it is tested and timed against: each step runs the whole model
on the whole (fixed-size, causally masked) buffer, O(L^2).

The sampler: logits / temperature, then top-k (keep the k largest), then top-p (nucleus, Holtzman et
al. 2020, arXiv:1904.09751: keep the smallest set of tokens whose probability reaches p), then a
categorical draw. temperature == 0 is greedy decoding.

EOS: with `eos_token >= 0`, once a row has produced it every later token of that row is `eos_token`,
and `generated_mask` marks the generated positions up to and including each row's first EOS (the
tokens a loss should count). Shapes stay fixed, so rows that have ended still run through the model.

`beam_search` keeps the `beam_size` most likely continuations (sum of token log-probabilities),
beams flattened into the batch and the cache rows gathered by parent beam each step, and a set of
`beam_size` finished hypotheses (ended by EOS, or alive at the last step), ranked by
log P / length ** length_penalty.
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


def make_cache(module, batch_size: int, length: int, dtype=jnp.float32):
  """An empty KV cache: the module's `init_cache` if it has one, else `transformer_lm.init_cache`."""
  if hasattr(module, "init_cache"):
    return module.init_cache(batch_size, length, dtype)
  return transformer_lm.init_cache(module, batch_size, length, dtype)


def _check_length(module, total: int) -> None:
  max_len = getattr(module, "max_len", None)
  if getattr(module, "positions", None) == "learned" and max_len is not None and total > max_len:
    raise ValueError(f"{total} tokens exceed the model's max_len={max_len} (learned positions)")


def generated_mask(tokens_BxT: jax.Array, prompt_length, eos_token: int = -1) -> jax.Array:
  """[B, T] bool: the positions after the prompt up to and including each row's first `eos_token`.

  `prompt_length`: one length for every row, or each row's [B]. With `eos_token < 0` (none), every
  position after the prompt.
  """
  prompt_Bx1 = jnp.reshape(jnp.asarray(prompt_length), (-1, 1))
  generated_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1])[None] >= prompt_Bx1, tokens_BxT.shape)
  if eos_token < 0:
    return generated_BxT
  is_eos_BxT = (tokens_BxT == eos_token) & generated_BxT
  eos_before_BxT = jnp.cumsum(is_eos_BxT, axis=1) - is_eos_BxT  # EOS strictly before each position.
  return generated_BxT & (eos_before_BxT == 0)


def generate_after_prompts(module, variables, tokens_BxL: jax.Array, prompt_lengths_B: jax.Array, *,
                           rng: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                           eos_token: int = -1, cache_dtype=jnp.float32) -> jax.Array:
  """Each row's first `prompt_lengths_B[b]` tokens kept, the rest of its L positions sampled, [B, L].

  Prompts of different lengths in one batch (prompt/completion or chat data): the first token is
  prefilled, then one position per scan step; a position inside its row's prompt takes the data's
  token (filling the cache with it), one after it the sampled token. Every row thus costs L - 1
  decode steps whatever its prompt; with one prompt length for all rows `generate` is cheaper.
  """
  batch_size, length = tokens_BxL.shape
  _check_length(module, length)
  tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
  prompt_lengths_B = jnp.maximum(jnp.asarray(prompt_lengths_B, jnp.int32), 1)  # Position 0 is always given.
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  cache = make_cache(module, batch_size, length, cache_dtype)
  decode = functools.partial(module.apply, variables, method=module.decode)
  logits_Bx1xV, cache = decode(tokens_BxL[:, :1], cache, 0)

  def choose(position, logits_BxV, step_rng, ended_B):
    generated_B = position >= prompt_lengths_B
    token_B = jnp.where(generated_B, sample(logits_BxV, step_rng), tokens_BxL[:, position])
    if eos_token >= 0:
      token_B = jnp.where(generated_B & ended_B, eos_token, token_B)
      ended_B = ended_B | (generated_B & (token_B == eos_token))
    return token_B, ended_B

  rngs = jax.random.split(rng, length - 1)
  first_B, ended_B = choose(1, logits_Bx1xV[:, 0], rngs[0], jnp.zeros((batch_size,), bool))

  def step(carry, step_rng):
    cache, token_B, ended_B, position = carry  # token_B sits at position - 1.
    logits_Bx1xV, cache = decode(token_B[:, None], cache, position - 1)
    next_B, ended_B = choose(position, logits_Bx1xV[:, 0], step_rng, ended_B)
    return (cache, next_B, ended_B, position + 1), next_B

  carry = (cache, first_B, ended_B, jnp.asarray(2, jnp.int32))
  _, rest_NxB = jax.lax.scan(step, carry, rngs[1:])
  return jnp.concatenate([tokens_BxL[:, :1], first_B[:, None], rest_NxB.T], axis=1)


def generate(module, variables, prompt_BxP: jax.Array, *, num_new_tokens: int, rng: jax.Array,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_token: int = -1,
             cache_dtype=jnp.float32) -> jax.Array:
  """The prompt followed by `num_new_tokens` sampled tokens, [B, P + num_new_tokens] int32.

  Traceable: call it inside `jit` (shapes and sampler settings are static). With `eos_token >= 0`,
  the tokens after a row's first EOS are EOS (`generated_mask` gives the positions to count).
  """
  batch_size, prompt_length = prompt_BxP.shape
  total = prompt_length + num_new_tokens
  _check_length(module, total)
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  cache = make_cache(module, batch_size, total, cache_dtype)
  decode = functools.partial(module.apply, variables, method=module.decode)
  logits_BxPxV, cache = decode(prompt_BxP.astype(jnp.int32), cache, 0)
  rngs = jax.random.split(rng, num_new_tokens)
  first_B = sample(logits_BxPxV[:, -1], rngs[0])
  ended_B = first_B == eos_token  # Never true for eos_token < 0: tokens are >= 0.

  def step(carry, step_rng):
    cache, token_B, ended_B, index = carry
    logits_Bx1xV, cache = decode(token_B[:, None], cache, index)
    next_B = sample(logits_Bx1xV[:, 0], step_rng)
    if eos_token >= 0:
      next_B = jnp.where(ended_B, eos_token, next_B)
      ended_B = ended_B | (next_B == eos_token)
    return (cache, next_B, ended_B, index + 1), next_B

  carry = (cache, first_B, ended_B, jnp.asarray(prompt_length, jnp.int32))
  _, rest_NxB = jax.lax.scan(step, carry, rngs[1:])
  return jnp.concatenate([prompt_BxP.astype(jnp.int32), first_B[:, None], rest_NxB.T], axis=1)


def generate_with_mask(module, variables, prompt_BxP: jax.Array, *, num_new_tokens: int, rng: jax.Array,
                       eos_token: int = -1, **sampler) -> tuple[jax.Array, jax.Array]:
  """`generate`'s tokens [B, T] and their `generated_mask` [B, T] (bool)."""
  tokens_BxT = generate(module, variables, prompt_BxP, num_new_tokens=num_new_tokens, rng=rng,
                        eos_token=eos_token, **sampler)
  return tokens_BxT, generated_mask(tokens_BxT, prompt_BxP.shape[1], eos_token)


def generate_recompute(module, variables, prompt_BxP: jax.Array, *, num_new_tokens: int, rng: jax.Array,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       eos_token: int = -1) -> jax.Array:
  """Like `generate`, but every step recomputes the whole prefix with no cache (the reference)."""
  batch_size, prompt_length = prompt_BxP.shape
  total = prompt_length + num_new_tokens
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  buffer_BxT = jnp.zeros((batch_size, total), jnp.int32).at[:, :prompt_length].set(prompt_BxP)
  rngs = jax.random.split(rng, num_new_tokens)
  positions_T = jnp.arange(total)

  def step(index, buffer_BxT):
    # Positions after `index` hold zeros; the causal mask keeps them from the prediction.
    logits_BxTxV = module.apply(variables, buffer_BxT)
    last_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, index - 1, axis=1, keepdims=False)
    token_B = sample(last_BxV, rngs[index - prompt_length])
    if eos_token >= 0:
      earlier_T = (positions_T >= prompt_length) & (positions_T < index)
      ended_B = jnp.any((buffer_BxT == eos_token) & earlier_T, axis=1)
      token_B = jnp.where(ended_B, eos_token, token_B)
    return jax.lax.dynamic_update_index_in_dim(buffer_BxT, token_B, index, axis=1)

  return jax.lax.fori_loop(prompt_length, total, step, buffer_BxT)


def _select_beams(beams, log_probs_BxKxV, step, *, eos_token: int, length_penalty: float):
  """One beam-search step: the best 2K extensions of the K alive beams, split into ended and alive.

  Among the 2K best extensions at most K end in EOS (one per parent), so K alive ones remain.
  `beams` is (alive tokens [B, K, N], alive log-probs [B, K], finished tokens, finished scores);
  returns the new beams and each new alive beam's parent [B, K] and last token [B, K].
  """
  alive_BxKxN, alive_logp_BxK, finished_BxKxN, finished_score_BxK = beams
  batch_size, beam_size, vocab = log_probs_BxKxV.shape
  candidates_BxKV = (alive_logp_BxK[:, :, None] + log_probs_BxKxV).reshape(batch_size, beam_size * vocab)
  top_logp_BxC, top_index_BxC = jax.lax.top_k(candidates_BxKV, 2 * beam_size)
  parent_BxC, token_BxC = top_index_BxC // vocab, (top_index_BxC % vocab).astype(jnp.int32)
  extended_BxCxN = jnp.take_along_axis(alive_BxKxN, parent_BxC[:, :, None], axis=1)
  extended_BxCxN = extended_BxCxN.at[:, :, step].set(token_BxC)
  ends_BxC = token_BxC == eos_token
  length = jnp.asarray(step + 1, jnp.float32)
  ended_score_BxC = jnp.where(ends_BxC, top_logp_BxC / length**length_penalty, -jnp.inf)
  # Earlier finished hypotheses first: on a tie, top_k keeps the lower index.
  pool_score = jnp.concatenate([finished_score_BxK, ended_score_BxC], axis=1)
  pool_tokens = jnp.concatenate([finished_BxKxN, extended_BxCxN], axis=1)
  finished_score_BxK, keep_BxK = jax.lax.top_k(pool_score, beam_size)
  finished_BxKxN = jnp.take_along_axis(pool_tokens, keep_BxK[:, :, None], axis=1)
  alive_logp_BxK, pick_BxK = jax.lax.top_k(jnp.where(ends_BxC, -jnp.inf, top_logp_BxC), beam_size)
  alive_BxKxN = jnp.take_along_axis(extended_BxCxN, pick_BxK[:, :, None], axis=1)
  parent_BxK = jnp.take_along_axis(parent_BxC, pick_BxK, axis=1)
  token_BxK = jnp.take_along_axis(token_BxC, pick_BxK, axis=1)
  return (alive_BxKxN, alive_logp_BxK, finished_BxKxN, finished_score_BxK), parent_BxK, token_BxK


def beam_search(module, variables, prompt_BxP: jax.Array, *, num_new_tokens: int, beam_size: int,
                length_penalty: float = 1.0, eos_token: int = -1,
                cache_dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """The `beam_size` best continuations of each prompt, best first: tokens [B, K, P + N], scores [B, K].

  A hypothesis's score is log P(y | prompt) / |y| ** length_penalty, |y| its generated tokens up to
  and including EOS (N for one that did not end); ranking depends on length_penalty only when EOS
  can end hypotheses early. Each step extends the K alive beams by every token, keeps the 2K best
  extensions by log-probability, adds those ending in EOS to the K finished hypotheses (best K kept)
  and continues the K best others; after the last step the alive beams join the finished ones. The
  tokens after a hypothesis's EOS are EOS. Beam size 1 without EOS is greedy decoding.

  The prompt is run once; its cache is copied to the K beams of its row, and each step gathers the
  cache rows by parent beam. Traceable: call it inside `jit`.
  """
  batch_size, prompt_length = prompt_BxP.shape
  total = prompt_length + num_new_tokens
  _check_length(module, total)
  decode = functools.partial(module.apply, variables, method=module.decode)
  logits_BxPxV, cache = decode(prompt_BxP.astype(jnp.int32), make_cache(module, batch_size, total,
                                                                           cache_dtype), 0)
  rows = batch_size * beam_size

  def gather_rows(cache, rows_R):
    return jax.tree.map(lambda x: jnp.take(x, rows_R, axis=0) if x.ndim and x.shape[0] == rows else x,
                        cache)

  cache = jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0) if x.ndim and x.shape[0] == batch_size
                       else x, cache)  # Row b * K + k is beam k of prompt b.
  fill = max(eos_token, 0)
  empty_BxKxN = jnp.full((batch_size, beam_size, num_new_tokens), fill, jnp.int32)
  # Only beam 0 is alive at first, so the first step draws K different tokens from the one prompt.
  alive_logp_BxK = jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf)[None].repeat(batch_size, 0)
  beams = (empty_BxKxN, alive_logp_BxK, empty_BxKxN, jnp.full((batch_size, beam_size), -jnp.inf))
  select = functools.partial(_select_beams, eos_token=eos_token, length_penalty=length_penalty)
  first_log_probs_BxV = jax.nn.log_softmax(logits_BxPxV[:, -1].astype(jnp.float32), axis=-1)
  vocab = first_log_probs_BxV.shape[-1]
  offsets_Bx1 = (jnp.arange(batch_size) * beam_size)[:, None]

  def advance(cache, beams, log_probs_BxKxV, step):
    beams, parent_BxK, token_BxK = select(beams, log_probs_BxKxV, step)
    cache = gather_rows(cache, (offsets_Bx1 + parent_BxK).reshape(rows))
    return cache, beams, token_BxK.reshape(rows)

  cache, beams, token_R = advance(cache, beams, jnp.broadcast_to(
      first_log_probs_BxV[:, None], (batch_size, beam_size, vocab)), 0)

  def step(carry, step):
    cache, beams, token_R = carry
    logits_Rx1xV, cache = decode(token_R[:, None], cache, prompt_length + step - 1)
    log_probs_BxKxV = jax.nn.log_softmax(logits_Rx1xV[:, 0].astype(jnp.float32), axis=-1).reshape(
        batch_size, beam_size, vocab)
    return advance(cache, beams, log_probs_BxKxV, step), None

  (_, beams, _), _ = jax.lax.scan(step, (cache, beams, token_R), jnp.arange(1, num_new_tokens))
  alive_BxKxN, alive_logp_BxK, finished_BxKxN, finished_score_BxK = beams
  alive_score_BxK = alive_logp_BxK / float(num_new_tokens)**length_penalty
  scores_Bx2K = jnp.concatenate([finished_score_BxK, alive_score_BxK], axis=1)
  scores_BxK, keep_BxK = jax.lax.top_k(scores_Bx2K, beam_size)
  generated_BxKxN = jnp.take_along_axis(jnp.concatenate([finished_BxKxN, alive_BxKxN], axis=1),
                                        keep_BxK[:, :, None], axis=1)
  prompt_BxKxP = jnp.broadcast_to(prompt_BxP.astype(jnp.int32)[:, None], (batch_size, beam_size, prompt_length))
  return jnp.concatenate([prompt_BxKxP, generated_BxKxN], axis=2), scores_BxK
