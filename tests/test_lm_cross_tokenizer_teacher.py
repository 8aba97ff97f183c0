"""A teacher with another tokenizer from its kd export: distilled from, and scored on its own tokens.

A byte-level teacher is trained on the bytes of a text; a word-level student distils from its export
(`teacher="export:<dir>"`) on the same text tokenized both ways (text_files' teacher_tokenizer=bytes).
The report card scores the teacher on its own byte windows: its bits per byte are checked against a
sum computed here, and the figures that compare id by id (agreement, KL) are left out.
"""

import math
import os

import jax
import numpy as np
import pytest

from kd import checkpoint
from kd import data
from kd import experiment
from kd import models
from kd.config import base_config
from kd.config import stage_config
from kd.data import text_files
from kd.errors import UserError
from kd.lm import report as lm_report
from kd.methods import method_config

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "text")
WORDS = os.path.join(FIXTURES, "wordlevel")
WORDS_OF_STORY = ("the", "cat", "sat", "on", "a", "mat", "dog", "ran")
BYTE_LENGTH = 48
TINY = {"name": "transformer_lm", "num_layers": 1, "width": 16, "num_heads": 2, "max_len": BYTE_LENGTH}


def _config(data_name: str, stages: dict) -> "ml_collections.ConfigDict":  # noqa: F821
  config = base_config()
  config.seeds = (0,)
  config.data.name = data_name
  config.data.validation_split, config.data.test_split = "", "test"
  config.data.batch_size, config.data.eval_batch_size = 4, 16
  for name, stage in stages.items():
    config.stages[name] = stage
  config.stage_order = tuple(stages)
  return config


def _byte_teacher_export(folder: str) -> str:
  """A byte-level LM's kd export (random weights: the test is about reading it, not about its quality)."""
  module = models.build_model(TINY, 256)
  tokens = jax.numpy.zeros((1, BYTE_LENGTH), jax.numpy.int32)
  variables = module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, tokens, train=False)
  spec = data.DatasetSpec(name="bytes", input_key="tokens", input_shape=(BYTE_LENGTH,), input_dtype="int32",
                          num_classes=256, split_sizes={})
  os.makedirs(folder)
  checkpoint.export_model(folder, TINY, spec, variables)
  return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("cross_tokenizer_teacher")
  export = _byte_teacher_export(str(root / "byte_teacher"))
  # Sentences of the word-level tokenizer's words: one file to train on, one for the report card.
  rng = np.random.default_rng(0)
  halves = [str(root / "train.txt"), str(root / "test.txt")]
  for path, count in zip(halves, (60, 20)):
    with open(path, "w") as f:
      f.write("".join(" ".join(rng.choice(WORDS_OF_STORY, size=6)) + "\n" for _ in range(count)))
  word_data = text_files.dataset_name(train=halves[0], test=halves[1], tokenizer=WORDS, max_length=16,
                                      teacher_tokenizer=text_files.BYTES, teacher_max_length=BYTE_LENGTH)
  student = {**TINY, "max_len": 16}
  baseline = stage_config(student, method_config("lm_supervised"), num_steps=2, learning_rate=3e-3, warmup_steps=1)
  uld = stage_config(student, method_config("lm_uld"), num_steps=2, learning_rate=3e-3, warmup_steps=1,
                     teacher=f"export:{export}")
  words_config = _config(word_data, {"baseline": baseline, "uld": uld})
  # The report's teacher is no stage: the student's teacher, read from its export.
  words_config.report.update(teacher="byte_teacher", baseline="baseline", student="uld", compare=("baseline", "uld"))
  report = experiment.run(words_config, str(root / "words"))
  return {"export": export, "config": words_config, "report": report, "root": root}


def test_the_teacher_is_scored_on_its_own_tokens_in_bits_per_byte(runs):
  config, card = runs["config"], runs["report"]
  arrays = data.load_arrays(config.data.name, "test", config.data.data_dir)
  teacher = checkpoint.load_model(runs["export"])
  apply = jax.jit(lambda variables, tokens, mask: teacher.apply(variables, {"tokens": tokens, "mask": mask},
                                                               train=False)["logits"])
  logits = np.asarray(apply(teacher.variables, arrays["teacher_tokens"], arrays["teacher_mask"]), np.float64)
  # The NLL of every real next byte, in bits, over the number of those bytes (one byte per id).
  log_probs = logits[:, :-1] - np.log(np.sum(np.exp(logits[:, :-1]), -1, keepdims=True))
  targets = arrays["teacher_tokens"][:, 1:]
  real = arrays["teacher_mask"][:, 1:]
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  expected_bits_per_byte = np.sum(nll * real) / math.log(2) / np.sum(real)
  assert card["teacher_tokenization"] and card["retention_basis"] == "bits_per_byte"
  np.testing.assert_allclose(card["teacher"]["bits_per_byte"], expected_bits_per_byte, rtol=1e-5)
  # Its perplexity is per byte, the students' per word: only bits per byte compare.
  assert card["teacher"]["bits_per_byte"] == pytest.approx(card["teacher"]["bits_per_token"], rel=1e-6)
  assert card["retention"] == pytest.approx(card["teacher"]["bits_per_byte"] / card["student"]["bits_per_byte"])
  assert card["kl"] is None and card["agreement"] is None
  markdown = lm_report.to_markdown(card)
  assert "teacher bits/byte / student bits/byte" in markdown and "KL(teacher||student)" not in markdown
  assert "scored on its own tokens" in markdown


def test_an_export_of_another_vocabulary_than_the_teacher_tokenizer_is_one_line(runs, tmp_path):
  from kd import external  # pylint: disable=import-outside-toplevel

  config = runs["config"]
  spec = data.load_spec(config.data.name, config.data.data_dir)
  # The word-level student's own export has the student's vocabulary, not the teacher tokenizer's 256 bytes.
  config.stages.uld.teacher = "export:" + str(runs["root"] / "words" / "seed_0" / "baseline")
  with pytest.raises(UserError, match=r"gives it the teacher's tokenization of .* \(256 classes, inputs \(48,\)\)"
                     ) as raised:
    external.load_teacher(config, "uld", str(tmp_path), spec)
  assert "\n" not in str(raised.value)
  config.stages.uld.teacher = "export:" + runs["export"]
  assert external.load_teacher(config, "uld", str(tmp_path), spec).spec.num_classes == 256
