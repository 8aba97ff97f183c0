"""lm_uld (Boizard et al. 2024, arXiv:2402.12030, Sec. 3): hand-computed values, its invariances, its guards."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import methods
from kd.data import text_files
from kd.errors import ConfigError
from kd.methods import lm_kd
from kd.methods import lm_uld

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "text")
WORDS = os.path.join(FIXTURES, "wordlevel")
PARAMS = {**lm_uld.DEFAULTS}
# One compile per shape and setting (eager ops compile one by one, which dominates these tests' time).
_loss = jax.jit(lm_uld.loss, static_argnames=tuple(lm_uld.DEFAULTS))
_uld_only = functools.partial(_loss, **{**PARAMS, "ce_weight": 0.0})


@jax.jit
def _sorted_distance(student_logits, teacher_logits):
  return lm_uld.uld_distance(lm_uld.sorted_probabilities(student_logits, 1.0),
                             lm_uld.sorted_probabilities(teacher_logits, 1.0))


def _logits(probabilities):
  return jnp.log(jnp.asarray(probabilities, jnp.float32))


def _batch(student_tokens, student_mask, teacher_tokens, teacher_mask):
  return {"tokens": jnp.asarray(student_tokens, jnp.int32), "mask": jnp.asarray(student_mask, bool),
          "teacher_tokens": jnp.asarray(teacher_tokens, jnp.int32), "teacher_mask": jnp.asarray(teacher_mask, bool)}


def test_the_sorted_l1_distance_by_hand():
  # Student [.2, .5, .3] sorts to [.5, .3, .2]; teacher [.4, .6] to [.6, .4], padded with a 0:
  # |.5-.6| + |.3-.4| + |.2-0| = 0.4.
  student, teacher = _logits([[[0.2, 0.5, 0.3]]]), _logits([[[0.4, 0.6]]])
  np.testing.assert_allclose(_sorted_distance(student, teacher), [[0.4]], atol=1e-6)
  np.testing.assert_allclose(_sorted_distance(teacher, student), [[0.4]], atol=1e-6)  # Symmetric.
  # Temperature 2: softmax(log p / 2) is sqrt(p) normalised, sorted.
  root = np.sqrt([0.2, 0.5, 0.3]) / np.sqrt([0.2, 0.5, 0.3]).sum()
  np.testing.assert_allclose(jax.jit(lm_uld.sorted_probabilities, static_argnums=1)(student, 2.0)[0, 0],
                             np.sort(root)[::-1], atol=1e-6)


def test_positions_are_matched_in_order_and_truncated_to_the_shorter_side():
  # Student targets (mask shifted by one) count at positions 0, 2, 3; the teacher's at 1, 2 (of 0-2).
  # Pairs: student 0 with teacher 1, student 2 with teacher 2; student 3 has no partner.
  student_probs = [[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.2, 0.6]]]
  teacher_probs = [[[0.5, 0.5], [0.9, 0.1], [0.4, 0.6], [0.5, 0.5]]]
  batch = _batch([[1, 1, 1, 1, 1]], [[1, 1, 0, 1, 1]], [[2, 2, 2, 2]], [[0, 0, 1, 1]])
  total, metrics = _uld_only({"logits": _logits(student_probs)}, {"logits": _logits(teacher_probs)}, batch)
  first = abs(0.7 - 0.9) + abs(0.2 - 0.1) + 0.1  # Student position 0, teacher position 1.
  second = abs(0.5 - 0.6) + abs(0.3 - 0.4) + 0.2  # Student position 2, teacher position 2.
  np.testing.assert_allclose(total, (first + second) / 2, atol=1e-5)
  assert float(metrics["matched_positions"]) == 2
  # Cross-entropy over the student's own response targets: tokens 1 at positions 0, 2, 3.
  ce = -(np.log(0.2) + np.log(0.3) + np.log(1 / 3)) / 3
  total, metrics = _loss({"logits": _logits(student_probs)}, {"logits": _logits(teacher_probs)}, batch,
                         uld_weight=0.5, ce_weight=2.0, temperature=1.0)
  np.testing.assert_allclose(metrics["ce"], ce, atol=1e-5)
  np.testing.assert_allclose(total, 2.0 * ce + 0.5 * (first + second) / 2, atol=1e-5)
  # The teacher's loss mask narrows its response positions as the student's loss_mask does its own.
  narrowed = {**batch, "teacher_loss_mask": jnp.asarray([[1, 1, 0, 1]], bool)}
  _, metrics = _uld_only({"logits": _logits(student_probs)}, {"logits": _logits(teacher_probs)}, narrowed)
  assert float(metrics["matched_positions"]) == 1
  np.testing.assert_allclose(metrics["uld"], abs(0.7 - 0.9) + abs(0.2 - 0.1) + 0.1, atol=1e-5)


def _random_case(seed, batch_size=2, student_length=6, teacher_length=9, student_vocab=7, teacher_vocab=11):
  rng = np.random.default_rng(seed)
  student = jnp.asarray(rng.normal(size=(batch_size, student_length, student_vocab)) * 2, jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(batch_size, teacher_length, teacher_vocab)) * 2, jnp.float32)
  batch = _batch(rng.integers(0, student_vocab, (batch_size, student_length)),
                 rng.random((batch_size, student_length)) < 0.8,
                 rng.integers(0, teacher_vocab, (batch_size, teacher_length)),
                 rng.random((batch_size, teacher_length)) < 0.7)
  return student, teacher, batch


def test_a_permutation_of_either_vocabulary_changes_nothing():
  student, teacher, batch = _random_case(0)
  reference, _ = _uld_only({"logits": student}, {"logits": teacher}, batch)
  assert float(reference) > 0.1
  rng = np.random.default_rng(1)
  student_permuted = student[..., rng.permutation(student.shape[-1])]
  teacher_permuted = teacher[..., rng.permutation(teacher.shape[-1])]
  for s, t in ((student_permuted, teacher), (student, teacher_permuted), (student_permuted, teacher_permuted)):
    value, _ = _uld_only({"logits": s}, {"logits": t}, batch)
    np.testing.assert_allclose(value, reference, rtol=1e-6)


def test_zero_when_the_distributions_are_equal_up_to_a_permutation():
  student, teacher, batch = _random_case(2)  # The shapes of the other cases: no new compile.
  rng = np.random.default_rng(2)
  # The teacher's first 6 positions: the student's distributions over permuted ids, and 4 more ids (a
  # larger vocabulary) without mass, which the zero padding of the smaller one matches.
  permuted = jnp.concatenate([student[..., rng.permutation(7)], jnp.full((2, 6, 4), -1e9)], axis=-1)
  teacher = teacher.at[:, :6].set(permuted)
  # Both sides' response targets: their first 5 positions (the masks shifted by one), matched in order.
  batch = {**batch, "mask": jnp.ones((2, 6), bool), "teacher_mask": jnp.arange(9)[None].repeat(2, 0) < 6}
  value, metrics = _uld_only({"logits": student}, {"logits": teacher}, batch)
  np.testing.assert_allclose(value, 0.0, atol=1e-6)
  assert float(metrics["matched_positions"]) == 2 * 5


def test_no_gradient_reaches_the_teacher_and_the_student_gets_one():
  student, teacher, batch = _random_case(3)

  @jax.jit
  def objective(student_logits, teacher_logits):
    return lm_uld.loss({"logits": student_logits}, {"logits": teacher_logits}, batch, **PARAMS)[0]

  student_grad, teacher_grad = jax.jit(jax.grad(objective, argnums=(0, 1)))(student, teacher)
  assert float(jnp.abs(teacher_grad).max()) == 0.0
  assert float(jnp.abs(student_grad).max()) > 0.0
  # Finite differences agree with the gradient through the sort (away from ties).
  direction = jnp.asarray(np.random.default_rng(4).normal(size=student.shape), jnp.float32)
  epsilon = 1e-3
  numeric = (objective(student + epsilon * direction, teacher) - objective(student - epsilon * direction, teacher)) / (
      2 * epsilon)
  np.testing.assert_allclose(jnp.sum(student_grad * direction), numeric, rtol=2e-2)


def test_parameters_that_cannot_work_are_config_errors():
  methods.check_method_config(methods.method_config("lm_uld"), "method")
  for params, message in (({"temperature": 0.0}, r"method.temperature=0.0 must be > 0"),
                          ({"uld_weight": -1.0}, r"method.uld_weight=-1.0 must be >= 0"),
                          ({"uld_weight": 0.0, "ce_weight": 0.0}, "both 0, so nothing is learned")):
    with pytest.raises(ConfigError, match=message):
      methods.check_method_config(methods.method_config("lm_uld", **params), "method")


def test_a_method_and_tokenizers_that_disagree_get_one_line():
  same = text_files.dataset_name(train=os.path.join(FIXTURES, "text.jsonl"), tokenizer=WORDS)
  crossed = text_files.dataset_name(train=os.path.join(FIXTURES, "text.jsonl"), tokenizer=WORDS,
                                    teacher_tokenizer="bytes")
  where = "stages.student.method"
  lm_uld.check_tokenizers("lm_uld", lm_uld, crossed, 27, 256, where)  # Both fit.
  lm_uld.check_tokenizers("lm_kd", lm_kd, same, 27, 27, where)
  cases = (
      (("lm_uld", lm_uld, same, 27, 27), r"'lm_uld' distils across tokenizers, but data.name=.* carries no teacher "
                                         r"tokenization: add teacher_tokenizer="),
      (("lm_uld", lm_uld, "stdlib_text", 256, 27), r"carries no teacher tokenization"),
      (("lm_uld", lm_uld, crossed, 27, 200), r"the teacher has 200 logits but the dataset's teacher_tokenizer has 256"),
      (("lm_kd", lm_kd, same, 27, 256), r"'lm_kd' needs one vocabulary, but the student has 27 logits and the "
                                        r"teacher 256: .* use lm_uld"),
      (("lm_kd", lm_kd, crossed, 27, 256), r"'lm_kd' compares the two models' probabilities id by id, but data.name "
                                           r"carries a second \(teacher\) tokenization of 256 ids"),
  )
  for arguments, message in cases:
    with pytest.raises(ConfigError, match=message) as raised:
      lm_uld.check_tokenizers(*arguments, where)
    assert "\n" not in str(raised.value)
  # A batch without the teacher's tokenization is refused while tracing, before anything compiles.
  student, teacher, batch = _random_case(5)
  with pytest.raises(ConfigError, match="needs the teacher's own tokenization"):
    jax.eval_shape(lambda s, t: lm_uld.loss({"logits": s}, {"logits": t}, {"tokens": batch["tokens"]}, **PARAMS),
                   student, teacher)
