"""lm_alm (Minixhofer et al. 2025, arXiv:2503.20083, Sec. 3): chunk likelihoods and the binarised divergence by
hand, its invariances, masks, gradients and guards, and the loss on a real text_files dataset."""

import functools
import os

import jax
import numpy as np
import pytest

from kd import data
from kd import methods
from kd.data import text_files
from kd.errors import ConfigError
from kd.methods import lm_alm
from kd.methods import lm_uld

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "text")
WORDS = os.path.join(FIXTURES, "wordlevel")
PARAMS = {**lm_alm.DEFAULTS}
# One compile per shape and setting (eager ops compile one by one, which dominates these tests' time); the
# weights and the temperature are traced, so each test compiles once.
_loss = jax.jit(lm_alm.loss, static_argnames=("alm_weight", "divergence"))
_alm_only = functools.partial(_loss, **{**PARAMS, "ce_weight": 0.0})


def _logits(probabilities):
  return np.log(np.asarray(probabilities, np.float32))


def _binary_kl(teacher_p, student_p, temperature):
  """KL(Bern(t) || Bern(s)) with t = p_T^(1/tau), s = p_S^(1/tau), written out."""
  t, s = teacher_p ** (1 / temperature), student_p ** (1 / temperature)
  return t * np.log(t / s) + (1 - t) * np.log((1 - t) / (1 - s))


# Student: 5 tokens (vocabulary 3) of which tokens 1-2 are chunk 0 and token 3 chunk 1; teacher: 6 tokens
# (vocabulary 2), token 1 chunk 0 and tokens 2-4 chunk 1. Tokens 0 (never predicted) and the last are in none.
STUDENT_PROBS = [[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]]
STUDENT_TOKENS = [[0, 1, 2, 1, 0]]  # Targets 1, 2, 1, 0: probabilities .3, .3, .25, .2.
TEACHER_PROBS = [[[0.4, 0.6], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.5, 0.5]]]
TEACHER_TOKENS = [[0, 1, 0, 0, 1, 1]]  # Targets 1, 0, 0, 1, 1: probabilities .6, .7, .9, .2, .5.
STUDENT_CHUNKS = [[-1, 0, 0, 1, -1]]
TEACHER_CHUNKS = [[-1, 0, 1, 1, 1, -1]]


def _batch(**overrides):
  # Every key in every case (all-true masks by default): one pytree structure, one compile.
  batch = {"tokens": STUDENT_TOKENS, "mask": [[1] * 5], "loss_mask": [[1] * 5], "teacher_tokens": TEACHER_TOKENS,
           "teacher_mask": [[1] * 6], "teacher_loss_mask": [[1] * 6], "chunk_ids": STUDENT_CHUNKS,
           "teacher_chunk_ids": TEACHER_CHUNKS, **overrides}
  return {key: np.asarray(value, bool if "mask" in key else np.int32) for key, value in batch.items()}


def test_chunk_likelihoods_and_the_binarised_divergence_by_hand():
  student, teacher = {"logits": _logits(STUDENT_PROBS)}, {"logits": _logits(TEACHER_PROBS)}
  # Chunk 0: student .3 * .3, teacher .6; chunk 1: student .25, teacher .7 * .9 * .2 (token 4's .5 is in no chunk).
  chunks = [(0.6, 0.09), (0.7 * 0.9 * 0.2, 0.25)]
  for temperature in (1.0, 4.0, 100.0):
    total, metrics = _alm_only(student, teacher, _batch(), **{"temperature": temperature})
    expected = np.mean([_binary_kl(t, s, temperature) for t, s in chunks])
    np.testing.assert_allclose(total, expected, rtol=1e-4)
    assert float(metrics["aligned_chunks"]) == 2
  # The reverse direction swaps the two outcomes' roles.
  total, _ = _alm_only(student, teacher, _batch(), temperature=4.0, divergence="reverse_binary_kl")
  np.testing.assert_allclose(total, np.mean([_binary_kl(s, t, 4.0) for t, s in chunks]), rtol=1e-4)
  # The whole loss: cross-entropy over the student's own 4 targets, plus the weighted ALM term.
  ce = -np.log([0.3, 0.3, 0.25, 0.2]).mean()
  total, metrics = _alm_only(student, teacher, _batch(), ce_weight=2.0, temperature=1.0)
  np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(total, 2 * ce + np.mean([_binary_kl(t, s, 1.0) for t, s in chunks]), rtol=1e-4)
  assert float(metrics["tokens"]) == 4 and float(metrics["token_accuracy"]) == 0.0
  # The chunk sums themselves.
  sums, complete = jax.jit(lm_alm.chunk_log_likelihoods, static_argnums=3)(
      np.log(np.asarray([[0.3, 0.3, 0.25, 0.2]], np.float32)), np.asarray([[0, 0, 1, -1]]), np.ones((1, 4)), 4)
  np.testing.assert_allclose(sums, [np.log([0.09, 0.25, 1.0, 1.0])], rtol=1e-6)
  assert complete.tolist() == [[True, True, False, False]]


def test_a_chunk_counts_only_when_every_token_of_it_counts_on_both_sides():
  student, teacher = {"logits": _logits(STUDENT_PROBS)}, {"logits": _logits(TEACHER_PROBS)}
  only_first = _binary_kl(0.6, 0.09, 100.0)
  only_second = _binary_kl(0.7 * 0.9 * 0.2, 0.25, 100.0)
  cases = (
      ({"loss_mask": [[1, 1, 0, 1, 1]]}, only_second),  # The student's token 2 (chunk 0) is a prompt token.
      ({"teacher_loss_mask": [[1, 1, 1, 0, 1, 1]]}, only_first),  # The teacher's token 3 (chunk 1).
      ({"teacher_mask": [[1, 1, 1, 1, 0, 0]]}, only_first),  # Chunk 1's last teacher token is padding.
  )
  for overrides, expected in cases:
    total, metrics = _alm_only(student, teacher, _batch(**overrides))
    np.testing.assert_allclose(total, expected, rtol=1e-4)
    assert float(metrics["aligned_chunks"]) == 1
  total, metrics = _alm_only(student, teacher, _batch(chunk_ids=[[-1] * 5]))
  assert float(total) == 0.0 and float(metrics["aligned_chunks"]) == 0  # Nothing aligned: no term, no NaN.


def _random_case(seed, batch_size=2, student_length=6, student_vocab=7):
  rng = np.random.default_rng(seed)
  student = (rng.normal(size=(batch_size, student_length, student_vocab)) * 2).astype(np.float32)
  tokens = rng.integers(0, student_vocab, (batch_size, student_length))
  # Chunks of one or two student tokens after the first; the teacher's tokens are made below.
  chunk_ids = np.full((batch_size, student_length), -1)
  for b in range(batch_size):
    chunk, position = 0, 1
    while position < student_length - 1:
      width = rng.integers(1, 3)
      chunk_ids[b, position:position + width] = chunk
      chunk, position = chunk + 1, position + width
  return student, tokens, chunk_ids


def _teacher_with_the_students_chunk_likelihoods(student, tokens, chunk_ids, pieces=2):
  """A teacher of vocabulary 2 and its own tokens: `pieces` tokens per chunk, each of probability
  p_student(chunk)^(1/pieces), so its chunk likelihoods are the student's."""
  log_p = student - np.log(np.exp(student).sum(-1, keepdims=True))
  token_log_p = np.take_along_axis(log_p[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  batch_size, student_length = tokens.shape
  length = pieces * student_length + 2  # One shape whatever the number of chunks: one compile for all cases.
  teacher_logits = np.zeros((batch_size, length, 2), np.float32)
  teacher_chunks = np.full((batch_size, length), -1)
  for b in range(batch_size):
    for chunk in range(chunk_ids[b].max() + 1):
      chunk_log_p = token_log_p[b][chunk_ids[b, 1:] == chunk].sum()
      for piece in range(pieces):
        position = chunk * pieces + piece  # Predicts teacher token position + 1 (its target id 0).
        share = chunk_log_p / pieces
        teacher_logits[b, position] = [share, np.log(-np.expm1(share))]
        teacher_chunks[b, position + 1] = chunk
  teacher_tokens = np.zeros((batch_size, length), np.int64)
  return teacher_logits, teacher_tokens, teacher_chunks


def _random_batch(tokens, chunk_ids, teacher_tokens, teacher_chunks):
  return {"tokens": np.asarray(tokens, np.int32), "mask": np.ones(tokens.shape, bool),
          "teacher_tokens": np.asarray(teacher_tokens, np.int32), "teacher_mask": np.ones(teacher_tokens.shape, bool),
          "chunk_ids": np.asarray(chunk_ids, np.int32), "teacher_chunk_ids": np.asarray(teacher_chunks, np.int32)}


def test_zero_when_both_models_give_the_same_chunk_likelihoods():
  student, tokens, chunk_ids = _random_case(0)
  teacher, teacher_tokens, teacher_chunks = _teacher_with_the_students_chunk_likelihoods(student, tokens, chunk_ids)
  batch = _random_batch(tokens, chunk_ids, teacher_tokens, teacher_chunks)
  value, metrics = _alm_only({"logits": student}, {"logits": teacher}, batch)
  assert float(metrics["aligned_chunks"]) == chunk_ids.max(axis=1).sum() + 2
  np.testing.assert_allclose(value, 0.0, atol=1e-7)
  # Not zero once the teacher disagrees on one chunk.
  teacher[0, 0, 0] -= 1.0
  value, _ = _alm_only({"logits": student}, {"logits": teacher}, batch)
  assert float(value) > 1e-5


def test_a_permutation_of_either_vocabulary_changes_nothing():
  # Renaming a model's ids (its logits' columns and its tokens together) leaves every likelihood as it is.
  student, tokens, chunk_ids = _random_case(1)
  teacher, teacher_tokens, teacher_chunks = _teacher_with_the_students_chunk_likelihoods(student, tokens, chunk_ids)
  teacher[0, :, 0] += 0.7  # A teacher that disagrees: a loss to preserve.
  batch = _random_batch(tokens, chunk_ids, teacher_tokens, teacher_chunks)
  reference, _ = _alm_only({"logits": student}, {"logits": teacher}, batch)
  assert float(reference) > 1e-4
  rng = np.random.default_rng(2)
  student_order, teacher_order = rng.permutation(7), np.array([1, 0])
  student_permuted, teacher_permuted = np.zeros_like(student), np.zeros_like(teacher)
  student_permuted[..., student_order], teacher_permuted[..., teacher_order] = student, teacher
  for s, t, tok, teacher_tok in ((student_permuted, teacher, student_order[tokens], teacher_tokens),
                                 (student, teacher_permuted, tokens, teacher_order[teacher_tokens])):
    value, _ = _alm_only({"logits": s}, {"logits": t}, _random_batch(tok, chunk_ids, teacher_tok, teacher_chunks))
    np.testing.assert_allclose(value, reference, rtol=1e-5)


def test_no_gradient_reaches_the_teacher_and_the_students_is_finite():
  student, tokens, chunk_ids = _random_case(3)
  teacher, teacher_tokens, teacher_chunks = _teacher_with_the_students_chunk_likelihoods(student, tokens, chunk_ids)
  teacher = (teacher + 0.5 * np.random.default_rng(4).normal(size=teacher.shape)).astype(np.float32)
  batch = _random_batch(tokens, chunk_ids, teacher_tokens, teacher_chunks)
  params = {**PARAMS, "temperature": 4.0}

  def objective(student_logits, teacher_logits):
    return lm_alm.loss({"logits": student_logits}, {"logits": teacher_logits}, batch, **params)[0]

  value_and_grad = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
  gradient = lambda s, t: value_and_grad(s, t)[1]
  student_grad, teacher_grad = gradient(student, teacher)
  student_grad, teacher_grad = np.asarray(student_grad), np.asarray(teacher_grad)
  assert np.abs(teacher_grad).max() == 0.0
  assert np.abs(student_grad).max() > 0.0 and np.isfinite(student_grad).all()
  direction = np.random.default_rng(5).normal(size=student.shape).astype(np.float32)
  epsilon = 1e-2
  numeric = (value_and_grad(student + epsilon * direction, teacher)[0]
             - value_and_grad(student - epsilon * direction, teacher)[0]) / (2 * epsilon)
  np.testing.assert_allclose(np.sum(student_grad * direction), numeric, rtol=2e-2)
  # Certain models (a chunk of probability 1 on either side, masked logits of -1e9): still finite.
  certain = np.where(np.roll(tokens, -1, axis=1)[..., None] == np.arange(7), 30.0, -1e9).astype(np.float32)
  for s, t in ((certain, teacher), (student, np.where(teacher > 0, 1e9, -1e9).astype(np.float32))):
    value, (grads, _) = value_and_grad(s, t)
    assert np.isfinite(np.asarray(grads)).all() and np.isfinite(float(value))


def test_parameters_that_cannot_work_are_config_errors():
  methods.check_method_config(methods.method_config("lm_alm"), "method")
  for params, message in (({"temperature": 0.0}, r"method.temperature=0.0 must be > 0"),
                          ({"alm_weight": -1.0}, r"method.alm_weight=-1.0 must be >= 0"),
                          ({"alm_weight": 0.0, "ce_weight": 0.0}, "both 0, so nothing is learned"),
                          ({"divergence": "kl"}, r"method.divergence='kl' is not a binarised divergence; choose")):
    with pytest.raises(ConfigError, match=message) as raised:
      methods.check_method_config(methods.method_config("lm_alm", **params), "method")
    assert "\n" not in str(raised.value)
  # A batch without the alignment is refused while tracing, before anything compiles.
  student, teacher = _logits(STUDENT_PROBS), _logits(TEACHER_PROBS)
  without = {key: value for key, value in _batch().items() if key != "teacher_chunk_ids"}
  with pytest.raises(ConfigError, match=r"lm_alm needs the aligned chunks .*teacher_chunk_ids missing"):
    jax.eval_shape(lambda s, t: lm_alm.loss({"logits": s}, {"logits": t}, without, **PARAMS), student, teacher)


def test_the_loss_on_a_text_files_dataset_with_a_byte_teacher():
  # story.txt read by words (the student, 27 ids) and by bytes (the teacher): models that are uniform over
  # their vocabularies give each aligned word a likelihood of 1/27 (one token) and 256^-length (its bytes).
  name = text_files.dataset_name(test=os.path.join(FIXTURES, "story.txt"), train=os.path.join(FIXTURES, "text.jsonl"),
                                 tokenizer=WORDS, max_length=6, teacher_tokenizer="bytes", teacher_max_length=20)
  lm_uld.check_tokenizers("lm_alm", lm_alm, name, 27, 256, "stages.student.method")  # A cross-tokenizer method.
  same = text_files.dataset_name(train=os.path.join(FIXTURES, "text.jsonl"), tokenizer=WORDS)
  with pytest.raises(ConfigError, match=r"'lm_alm' distils across tokenizers, but data.name=.* carries no teacher"):
    lm_uld.check_tokenizers("lm_alm", lm_alm, same, 27, 27, "stages.student.method")
  batch = data.load_arrays(name, "test")
  student = {"logits": np.zeros(batch["tokens"].shape + (27,), np.float32)}
  teacher = {"logits": np.zeros(batch["teacher_tokens"].shape + (256,), np.float32)}
  total, metrics = _loss(student, teacher, batch, **{**PARAMS, "temperature": 10.0})
  # Aligned: cat sat on the | the dog ran (each window's first word is never predicted on either side).
  lengths = [3, 3, 2, 3, 3, 3, 3]
  expected = np.mean([_binary_kl(256.0 ** -n, 1 / 27, 10.0) for n in lengths])
  assert float(metrics["aligned_chunks"]) == len(lengths)
  np.testing.assert_allclose(metrics["alm"], expected, rtol=1e-4)
  np.testing.assert_allclose(metrics["ce"], np.log(27), rtol=1e-5)
  np.testing.assert_allclose(total, np.log(27) + expected, rtol=1e-4)
