"""Decoding for language-model distillation: any decoder's cache, EOS, beam search, seq-KD's decoders,
and DistilBERT's layer map."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import methods
from kd.errors import ConfigError
from kd.lm import sampling
from kd.methods import lm_common
from kd.methods import lm_distilbert
from kd.methods import lm_seqkd
from kd.models import transformer_lm

EOS = 7
# Tiny programs, checked for their values: compiled without LLVM's optimisations, most of their cost.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


class ScriptedLM(nn.Module):
  """A decoder without TransformerLM's attributes whose next token is `script[token]`, by a margin that
  leaves sampling no choice (a beam's other hypotheses fall ~100 nats behind). Its cache is a dict that
  records the tokens it was given (`init_cache`), so a fallback cache would not fit."""

  script: tuple[int, ...]
  num_classes: int = 16

  def _logits(self, tokens_BxT):
    return 100.0 * jax.nn.one_hot(jnp.asarray(self.script, jnp.int32)[tokens_BxT], self.num_classes)

  def __call__(self, tokens_BxT):
    return self._logits(tokens_BxT)

  def decode(self, tokens_BxT, cache, cache_index):
    seen_BxL = jax.lax.dynamic_update_slice(cache["seen"], tokens_BxT.astype(jnp.int32), (0, cache_index))
    return self._logits(tokens_BxT), {"seen": seen_BxL}

  @nn.nowrap
  def init_cache(self, batch_size, length, dtype=jnp.float32):
    del dtype
    return {"seen": jnp.zeros((batch_size, length), jnp.int32)}


# From prompt 1 2 the script reaches EOS as the 3rd new token, from 5 6 as the 1st, from 9 8 never;
# after EOS it goes on with 0, which generation must replace by EOS.
NEXT = {1: 2, 2: 3, 3: 4, 4: EOS, 5: 6, 6: EOS, 9: 8, 8: 10, 10: 11, 11: 12, 12: 13, 13: 14, 14: 15, 15: 0,
        EOS: 0, 0: 0}
SCRIPT = tuple(NEXT[token] for token in range(16))
PROMPT_LENGTH = 2
PROMPTS = [[1, 2], [5, 6], [9, 8]]
EXPECTED_TOKENS = [[1, 2, 3, 4, EOS, EOS, EOS, EOS],
                   [5, 6, EOS, EOS, EOS, EOS, EOS, EOS],
                   [9, 8, 10, 11, 12, 13, 14, 15]]
EXPECTED_MASK = [[0, 0, 1, 1, 1, 0, 0, 0],
                 [0, 0, 1, 0, 0, 0, 0, 0],
                 [0, 0, 1, 1, 1, 1, 1, 1]]


def _scripted_prompt():
  return jnp.asarray(PROMPTS, jnp.int32)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_generation_stops_at_eos_with_the_modules_own_cache(temperature):
  module = ScriptedLM(SCRIPT)
  kwargs = dict(num_new_tokens=6, rng=jax.random.key(0), temperature=temperature, eos_token=EOS)
  tokens, mask = jit(functools.partial(sampling.generate_with_mask, module, **kwargs))({}, _scripted_prompt())
  np.testing.assert_array_equal(tokens, EXPECTED_TOKENS)
  np.testing.assert_array_equal(mask, np.asarray(EXPECTED_MASK, bool))
  recomputed = jit(functools.partial(sampling.generate_recompute, module, **kwargs))({}, _scripted_prompt())
  np.testing.assert_array_equal(recomputed, EXPECTED_TOKENS)
  # Without EOS the script runs on, and every generated position counts.
  tokens, mask = sampling.generate_with_mask(module, {}, _scripted_prompt(), num_new_tokens=6,
                                             rng=jax.random.key(0), temperature=temperature)
  np.testing.assert_array_equal(tokens, [[1, 2, 3, 4, EOS, 0, 0, 0], [5, 6, EOS, 0, 0, 0, 0, 0],
                                         EXPECTED_TOKENS[2]])
  assert np.asarray(mask)[:, 2:].all() and not np.asarray(mask)[:, :2].any()


def test_generated_mask_ignores_eos_in_the_prompt():
  tokens = jnp.asarray([[EOS, 1, 2, EOS, EOS], [1, EOS, EOS, 2, 3]])
  np.testing.assert_array_equal(sampling.generated_mask(tokens, 2, EOS), [[0, 0, 1, 1, 0], [0, 0, 1, 0, 0]])
  np.testing.assert_array_equal(sampling.generated_mask(tokens, 2), [[0, 0, 1, 1, 1]] * 2)


def _lm_loss_case(method_name, **params):
  method = methods.method_config(method_name, prompt_length=PROMPT_LENGTH, eos_token=EOS, **params)
  prepare = methods.build_prepare_batch(method, ScriptedLM(SCRIPT), ScriptedLM(SCRIPT))
  tokens = np.zeros((3, 8), np.uint8)
  tokens[:, :PROMPT_LENGTH] = np.asarray(_scripted_prompt())
  batch = {"tokens": tokens, "mask": np.ones_like(tokens, bool)}
  prepared = prepare({}, {}, batch, jax.random.key(0))
  logits = jax.random.normal(jax.random.key(1), (3, 8, 16))
  _, metrics = methods.build_loss(method)({"logits": logits}, {"logits": logits}, prepared)
  return prepared, metrics


@pytest.mark.parametrize("method_name,params", [("lm_seqkd", {}), ("lm_seqkd", {"decoding": "beam", "beam_size": 2}),
                                                ("lm_gkd", {"student_data_fraction": 1.0})])
def test_distillation_losses_count_the_continuation_up_to_eos(method_name, params):
  prepared, metrics = _lm_loss_case(method_name, **params)
  np.testing.assert_array_equal(prepared["tokens"], EXPECTED_TOKENS)
  np.testing.assert_array_equal(prepared["loss_mask"], np.asarray(EXPECTED_MASK, bool))
  # The EOS filler is not a real token either; the prompt stays as the data had it.
  np.testing.assert_array_equal(prepared["mask"], np.asarray(EXPECTED_MASK, bool) | (np.arange(8) < 2))
  assert float(metrics["tokens"]) == np.sum(EXPECTED_MASK)  # 3 + 1 + 6 targets.


def _random_lm(seed=0, vocab=12):
  module = transformer_lm.TransformerLM(num_classes=vocab, num_layers=2, width=16, num_heads=2, max_len=16)
  variables = module.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))
  # Peakier next-token distributions than at initialisation, so that hypotheses are not near-ties.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: x * 8.0 if "head" in jax.tree_util.keystr(path) else x, variables)
  return module, variables


@functools.lru_cache(maxsize=None)
def _apply(module):
  return jit(module.apply)


def _reference_beam_search(module, variables, prompt_row, *, num_new_tokens, beam_size, length_penalty,
                           eos_token):
  """Beam search written out plainly: every step runs the model on each hypothesis's whole prefix."""
  prompt_length = len(prompt_row)
  total = prompt_length + num_new_tokens
  alive, finished = [((), 0.0)], []
  for step in range(num_new_tokens):
    buffer = np.zeros((beam_size, total), np.int32)  # One shape: one compiled program.
    for row, (tokens, _) in enumerate(alive):
      buffer[row, :prompt_length + step] = list(prompt_row) + list(tokens)
    logits = np.asarray(_apply(module)(variables, jnp.asarray(buffer)))[:len(alive), prompt_length + step - 1]
    log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1), np.float64)
    candidates = [(tokens + (token,), score + log_probs[row, token])
                  for row, (tokens, score) in enumerate(alive) for token in range(log_probs.shape[1])]
    best = sorted(candidates, key=lambda c: -c[1])[:2 * beam_size]
    ended = [(tokens, score / (step + 1)**length_penalty) for tokens, score in best if tokens[-1] == eos_token]
    finished = sorted(finished + ended, key=lambda c: -c[1])[:beam_size]
    alive = [c for c in best if c[0][-1] != eos_token][:beam_size]
  pool = finished + [(tokens, score / num_new_tokens**length_penalty) for tokens, score in alive]
  pool = sorted(pool, key=lambda c: -c[1])[:beam_size]
  fill = max(eos_token, 0)
  return ([list(prompt_row) + list(tokens) + [fill] * (num_new_tokens - len(tokens)) for tokens, _ in pool],
          [score for _, score in pool])


@pytest.mark.parametrize("eos_token,length_penalty", [(-1, 1.0), ("frequent", 1.0), ("frequent", 0.0)])
def test_beam_search_with_the_cache_equals_full_prefix_beam_search(eos_token, length_penalty):
  module, variables = _random_lm()
  prompt = jax.random.randint(jax.random.key(3), (2, 3), 0, 12)
  num_new_tokens, beam_size = 6, 3
  if eos_token == "frequent":  # A token greedy decoding emits early, so that some hypotheses end.
    greedy = jit(functools.partial(sampling.generate, module, num_new_tokens=num_new_tokens, temperature=0.0))(
        variables, prompt, rng=jax.random.key(0))
    eos_token = int(greedy[0, 3 + 1])
  search = jit(functools.partial(sampling.beam_search, module, num_new_tokens=num_new_tokens,
                                     beam_size=beam_size, length_penalty=length_penalty, eos_token=eos_token))
  tokens, scores = search(variables, prompt)
  assert tokens.shape == (2, beam_size, 3 + num_new_tokens) and scores.shape == (2, beam_size)
  ended_early = False
  for row in range(2):
    expected_tokens, expected_scores = _reference_beam_search(
        module, variables, np.asarray(prompt[row]).tolist(), num_new_tokens=num_new_tokens,
        beam_size=beam_size, length_penalty=length_penalty, eos_token=eos_token)
    np.testing.assert_array_equal(tokens[row], expected_tokens)
    np.testing.assert_allclose(scores[row], expected_scores, rtol=1e-5, atol=1e-5)
    ended_early |= any(eos_token in t[3:-1] for t in expected_tokens)
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)  # Best first.
  if eos_token >= 0:
    assert ended_early, "the case should exercise hypotheses that end before the last step"


def test_beam_search_of_width_one_is_greedy_decoding():
  module, variables = _random_lm(seed=1)
  prompt = jax.random.randint(jax.random.key(4), (3, 4), 0, 12)

  def beam_and_greedy(variables, prompt):
    beams = sampling.beam_search(module, variables, prompt, num_new_tokens=7, beam_size=1, length_penalty=0.0)
    return beams, sampling.generate(module, variables, prompt, num_new_tokens=7, rng=jax.random.key(0),
                                    temperature=0.0)

  (tokens, scores), greedy = jit(beam_and_greedy)(variables, prompt)
  np.testing.assert_array_equal(tokens[:, 0], greedy)
  log_probs = jax.nn.log_softmax(_apply(module)(variables, greedy)[:, 3:-1], axis=-1)
  greedy_log_prob = jnp.take_along_axis(log_probs, greedy[:, 4:, None], axis=-1).sum(axis=(1, 2))
  np.testing.assert_allclose(scores[:, 0], greedy_log_prob, rtol=1e-5)


def test_seqkd_decodes_by_sampling_by_default_and_greedy_or_beam_on_request():
  assert lm_seqkd.DEFAULTS["decoding"] == "sample" and lm_seqkd.DEFAULTS["sample_temperature"] == 0.9
  assert lm_seqkd.DEFAULTS["beam_size"] == 5
  module, variables = _random_lm(seed=2)
  batch = {"tokens": np.asarray(jax.random.randint(jax.random.key(5), (2, 10), 0, 12), np.uint8)}
  prepares = {decoding: methods.build_prepare_batch(methods.method_config(
      "lm_seqkd", prompt_length=3, decoding=decoding, beam_size=3), module, module)
              for decoding in ("sample", "greedy", "beam")}

  def decode_every_way(variables, batch, rng):
    prompt = batch["tokens"][:, :3]
    expected = {
        "sample": sampling.generate(module, variables, prompt, num_new_tokens=7, rng=rng, temperature=0.9),
        "greedy": sampling.generate(module, variables, prompt, num_new_tokens=7, rng=rng, temperature=0.0),
        "beam": sampling.beam_search(module, variables, prompt, num_new_tokens=7, beam_size=3)[0][:, 0]}
    return expected, {decoding: prepare(variables, variables, batch, rng) for decoding, prepare in prepares.items()}

  expected, prepared = jit(decode_every_way)(variables, batch, jax.random.key(6))
  for decoding, tokens in expected.items():
    np.testing.assert_array_equal(prepared[decoding]["tokens"], tokens, err_msg=decoding)
    loss_mask = np.asarray(prepared[decoding]["loss_mask"])
    assert loss_mask[:, 3:].all() and not loss_mask[:, :3].any()
  assert not np.array_equal(expected["sample"], expected["greedy"])


@pytest.mark.parametrize("name,params,match", [
    ("lm_seqkd", {"decoding": "nucleus"}, r"decoding='nucleus': choose one of \('sample', 'greedy', 'beam'\)"),
    ("lm_seqkd", {"beam_size": 0}, "beam_size=0 must be an integer >= 1"),
    ("lm_seqkd", {"eos_token": -2}, "eos_token=-2 must be a token id >= 0, or -1 for none"),
    ("lm_gkd", {"eos_token": 1.5}, "eos_token=1.5 must be a token id"),
    ("lm_distilbert", {"layer_map": (0, -1)}, "layer_map=\\(0, -1\\) must be a tuple of teacher layer indices"),
])
def test_bad_decoding_parameters_are_config_errors(name, params, match):
  with pytest.raises(ConfigError, match=match):
    methods.check_method_config(methods.method_config(name, **params), "method")


def _layer_params(num_layers):
  """Parameters shaped like a TransformerLM's top level, each layer holding its own index."""
  params = {f"layers_{i}": {"kernel": jnp.full((2, 2), float(i))} for i in range(num_layers)}
  return {**params, "embed": {"embedding": jnp.ones((3, 2))}, "head": {"kernel": jnp.full((2, 3), -1.0)}}


def test_distilbert_layer_map_keeps_the_first_and_last_teacher_layers():
  # HF's extract_distilbert.py for BERT-base (12 layers) -> DistilBERT (6).
  assert lm_distilbert.default_layer_map(12, 6) == (0, 2, 4, 7, 9, 11)
  assert lm_distilbert.default_layer_map(4, 2) == (0, 3) and lm_distilbert.default_layer_map(5, 5) == (0, 1, 2, 3, 4)
  student = lm_distilbert.init_from_teacher(lm_distilbert.DEFAULTS, _layer_params(6), _layer_params(12), "method")
  assert [float(student[f"layers_{i}"]["kernel"][0, 0]) for i in range(6)] == [0, 2, 4, 7, 9, 11]
  assert float(student["head"]["kernel"][0, 0]) == -1.0
  params = {**lm_distilbert.DEFAULTS, "layer_map": (1, 3, 5, 7, 9, 11)}
  student = lm_distilbert.init_from_teacher(params, _layer_params(6), _layer_params(12), "method")
  assert [float(student[f"layers_{i}"]["kernel"][0, 0]) for i in range(6)] == [1, 3, 5, 7, 9, 11]
  with pytest.raises(ConfigError, match=r"layer_map=\(1, 3\) has 2 entries but the student has 6 layers"):
    lm_distilbert.init_from_teacher({**params, "layer_map": (1, 3)}, _layer_params(6), _layer_params(12), "method")
  with pytest.raises(ConfigError, match=r"names a layer the teacher lacks \(it has 12: 0..11\)"):
    lm_distilbert.init_from_teacher({**params, "layer_map": (0, 2, 4, 6, 8, 12)}, _layer_params(6),
                                    _layer_params(12), "method")


def test_distilbert_initialisation_of_a_real_student_from_a_12_layer_teacher():
  teacher = transformer_lm.TransformerLM(num_classes=16, num_layers=12, width=8, num_heads=2)
  student = transformer_lm.TransformerLM(num_classes=16, num_layers=6, width=8, num_heads=2)
  example = jnp.zeros((1, 4), jnp.int32)
  teacher_params = teacher.init(jax.random.key(0), example)["params"]
  student_params = lm_distilbert.init_from_teacher(lm_distilbert.DEFAULTS, student.init(
      jax.random.key(1), example)["params"], teacher_params, "method")
  for student_layer, teacher_layer in enumerate((0, 2, 4, 7, 9, 11)):
    jax.tree.map(np.testing.assert_array_equal, student_params[f"layers_{student_layer}"],
                 teacher_params[f"layers_{teacher_layer}"])
  assert np.isfinite(np.asarray(student.apply({"params": student_params}, example))).all()


def test_the_module_level_init_cache_still_works():
  module = transformer_lm.TransformerLM(num_classes=16, num_layers=3, width=8, num_heads=2)
  cache = transformer_lm.init_cache(module, 2, 5)
  assert len(cache) == 3 and cache[0][0].shape == (2, 5, 2, 4)
  assert jax.tree.map(jnp.shape, module.init_cache(2, 5)) == jax.tree.map(jnp.shape, cache)
  assert lm_common.DECODINGS == ("sample", "greedy", "beam")


# Prompts of different lengths in one batch (prompt/completion data): each row keeps its own prompt,
# including a forced token (row 2's 3) the script would not have chosen.
OWN_PROMPTS = [[1, 2, 0, 0, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0, 0], [9, 8, 3, 0, 0, 0, 0, 0]]
OWN_PROMPT_LENGTHS = [2, 1, 3]
OWN_EXPECTED = [[1, 2, 3, 4, EOS, EOS, EOS, EOS], [5, 6, EOS, EOS, EOS, EOS, EOS, EOS],
                [9, 8, 3, 4, EOS, EOS, EOS, EOS]]
OWN_MASK = [[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_each_row_continues_its_own_prompt(temperature):
  tokens = jit(functools.partial(sampling.generate_after_prompts, ScriptedLM(SCRIPT), rng=jax.random.key(0),
                                 temperature=temperature, eos_token=EOS))(
                                     {}, jnp.asarray(OWN_PROMPTS), jnp.asarray(OWN_PROMPT_LENGTHS))
  np.testing.assert_array_equal(tokens, OWN_EXPECTED)
  np.testing.assert_array_equal(sampling.generated_mask(tokens, jnp.asarray(OWN_PROMPT_LENGTHS), EOS),
                                np.asarray(OWN_MASK, bool))


def test_own_prompts_equal_generating_each_row_alone_on_a_transformer():
  module = transformer_lm.TransformerLM(num_classes=16, num_layers=1, width=16, num_heads=2, max_len=8)
  tokens = jax.random.randint(jax.random.key(3), (3, 8), 0, 16)
  variables = module.init(jax.random.key(4), tokens)
  together = sampling.generate_after_prompts(module, variables, tokens, jnp.asarray([2, 5, 1]), rng=jax.random.key(0),
                                             temperature=0.0)
  for row, length in enumerate([2, 5, 1]):
    alone = sampling.generate(module, variables, tokens[row:row + 1, :length], num_new_tokens=8 - length,
                              rng=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(together[row], alone[0])


@pytest.mark.parametrize("method_name,params", [("lm_seqkd", {}), ("lm_gkd", {"student_data_fraction": 1.0})])
def test_seqkd_and_gkd_read_each_examples_prompt_length_from_the_batch(method_name, params):
  method = methods.method_config(method_name, prompt_length=PROMPT_LENGTH, eos_token=EOS, **params)
  prepare = methods.build_prepare_batch(method, ScriptedLM(SCRIPT), ScriptedLM(SCRIPT))
  tokens = np.asarray(OWN_PROMPTS, np.int32)
  batch = {"tokens": tokens, "mask": np.ones_like(tokens, bool), "prompt_length": np.asarray(OWN_PROMPT_LENGTHS)}
  prepared = prepare({}, {}, batch, jax.random.key(0))
  np.testing.assert_array_equal(prepared["tokens"], OWN_EXPECTED)
  np.testing.assert_array_equal(prepared["loss_mask"], np.asarray(OWN_MASK, bool))
  in_prompt = np.arange(8)[None] < np.asarray(OWN_PROMPT_LENGTHS)[:, None]
  np.testing.assert_array_equal(prepared["mask"], np.asarray(OWN_MASK, bool) | in_prompt)


def test_gkd_data_batches_count_the_tokens_after_each_examples_prompt():
  method = methods.method_config("lm_gkd", prompt_length=PROMPT_LENGTH, student_data_fraction=0.0)
  prepare = methods.build_prepare_batch(method, ScriptedLM(SCRIPT), ScriptedLM(SCRIPT))
  tokens = np.asarray(OWN_PROMPTS, np.int32)
  completion = np.arange(8)[None] >= np.asarray(OWN_PROMPT_LENGTHS)[:, None]
  batch = {"tokens": tokens, "mask": completion, "prompt_length": np.asarray(OWN_PROMPT_LENGTHS)}
  prepared = prepare({}, {}, batch, jax.random.key(0))
  np.testing.assert_array_equal(prepared["tokens"], tokens)
  np.testing.assert_array_equal(prepared["loss_mask"], completion)
