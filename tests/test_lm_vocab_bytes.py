"""Bits per token and bits per byte (kd.lm.evaluation, the LM report card), and the bytes each token
id stands for (kd.lm.tokenizer.token_byte_lengths)."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from kd.data import text_files
from kd.lm import evaluation
from kd.lm import report
from kd.lm import tokenizer as tokenizer_lib

WORDS = os.path.join(REPO, "tests", "fixtures", "text", "wordlevel")
STORY = os.path.join(REPO, "tests", "fixtures", "text", "story.txt")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  folder = tmp_path_factory.mktemp("bpe")
  corpus = folder / "corpus.txt"
  corpus.write_text("def add(a, b):\n    return a + b  # naïve café 日本\n" * 20, encoding="utf-8")
  return tokenizer_lib.train_bpe([str(corpus)], str(folder / "tok"), vocab_size=300)


@pytest.mark.parametrize("text", ["def add(a, b):", "  return a + b", "naïve café 日本 🙂 ünseen"])
def test_a_byte_level_bpe_s_ids_add_up_to_the_text_s_bytes(bpe, text):
  lengths = tokenizer_lib.token_byte_lengths(bpe)
  ids = bpe.encode(text)
  assert int(lengths[ids].sum()) == len(text.encode("utf-8"))  # Multi-byte characters split across ids too.
  assert [int(lengths[bpe.token_id(role)]) for role in ("bos", "eos", "pad")] == [0, 0, 0]  # No text.


def test_word_level_ids_count_their_word_s_bytes_and_specials_none():
  lengths = tokenizer_lib.token_byte_lengths(tokenizer_lib.load(WORDS))
  # <pad> <s> </s> <unk> user assistant system : hi (see tests/test_text_data.py's id table).
  assert lengths[:9].tolist() == [0, 0, 0, 0, 4, 9, 6, 1, 2]


def _evaluate(vocab, tokens, mask, bytes_per_id):
  """make_evaluate of a model whose logits are all 0: every next token costs log(vocab) nats."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  apply = lambda variables, batch, train: {"logits": jnp.zeros(batch["tokens"].shape + (vocab,))}
  arrays = {"tokens": np.asarray(tokens, np.int32), "mask": np.asarray(mask, bool)}
  return evaluation.make_evaluate(apply, mesh, bytes_per_id=bytes_per_id)({}, arrays, 2)


def test_bits_per_byte_divides_the_nll_by_the_target_tokens_bytes():
  bytes_per_id = np.array([0, 1, 3, 5])  # id 0 is a special; ids 1-3 stand for 1, 3 and 5 bytes.
  # Targets are tokens 1..: [2, 3, 1] and [3] (the second window's padding is masked): 4 tokens, 14 bytes.
  metrics = _evaluate(4, [[0, 2, 3, 1], [0, 3, 0, 0]], [[1, 1, 1, 1], [1, 1, 0, 0]], bytes_per_id)
  assert metrics["eval/loss"] == pytest.approx(math.log(4), rel=1e-6)
  assert metrics["eval/bits_per_token"] == pytest.approx(2.0, rel=1e-6)
  assert metrics["eval/bits_per_byte"] == pytest.approx(4 * 2.0 / 14, rel=1e-6)
  assert "eval/bits_per_byte" not in _evaluate(4, [[0, 2, 3, 1]], [[1, 1, 1, 1]], None)


def test_on_bytes_bits_per_byte_is_bits_per_token():
  bytes_per_id = evaluation.bytes_per_id("stdlib_text", 256)
  np.testing.assert_array_equal(bytes_per_id, np.ones(256))
  tokens = np.random.default_rng(0).integers(0, 256, (3, 8))
  metrics = _evaluate(256, tokens, np.ones_like(tokens), bytes_per_id)
  assert metrics["eval/bits_per_byte"] == pytest.approx(metrics["eval/bits_per_token"], rel=1e-6) == 8.0
  assert evaluation.bytes_per_id("mnist", 10) is None


def test_a_text_files_dataset_s_bytes_come_from_its_tokenizer_padded_ids_none():
  name = text_files.dataset_name(train=STORY, tokenizer=WORDS, max_length=8, vocab_size=32)
  bytes_per_id = evaluation.bytes_per_id(name, 32)
  np.testing.assert_array_equal(bytes_per_id[:27], tokenizer_lib.token_byte_lengths(tokenizer_lib.load(WORDS)))
  assert bytes_per_id.shape == (32,) and not bytes_per_id[27:].any()


def test_the_report_card_labels_bits_per_token_and_bits_per_byte_apart():
  row = {"perplexity": 4.0, "bits_per_token": 2.0, "bits_per_byte": 0.5, "token_accuracy": 0.5, "params": 10,
         "decode_tokens_per_s_b1": 1.0, "decode_tokens_per_s_b32": 2.0}
  card = {"dataset": "text_files/x", "split": "test", "examples": 2, "tokens": 10, "seeds": [0], "device": "cpu",
          "retention": 1.0, "compression": 1.0, "decode_speedup_b1": 1.0, "decode_speedup_b32": 1.0,
          "agreement": 1.0, "kl": 0.0, "perplexity_gain_over_baseline": 0.0, "bytes_known": True,
          **{role: {"stage": role, **row} for role in report.ROLES},
          "comparison": [{"stage": "student", "method": "lm_kd", "divergence": "forward_kl", "retention": 1.0,
                          "agreement": 1.0, **row}]}
  markdown = report.to_markdown(card)
  assert "| perplexity (per token) | bits/token | bits/byte | next-token acc." in markdown
  assert "| teacher | teacher | 4.000 | 2.000 | 0.500 | 50.00% |" in markdown and "next-byte" not in markdown
  unknown = {**card, "bytes_known": False, "teacher": {**card["teacher"], "bits_per_byte": None}}
  assert "| teacher | teacher | 4.000 | 2.000 | - |" in report.to_markdown(unknown)
