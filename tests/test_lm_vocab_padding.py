"""Checkpoints whose embedding is padded beyond their tokenizer (Qwen3: 151,936 rows, 151,669 ids).

A tiny padded checkpoint is written here with kd.convert.hf's writer: the 2-layer Qwen3 fixture with
its first 32 embedding (and head) rows, carrying the 27-id word-level fixture tokenizer. Text tokenized
with it distils from it, into a student with its 32-row vocabulary, once the dataset states that size
(`text_files/...,vocab_size=32`); `experiments/hf_distill.py` adds it from the teacher itself.
"""

import os
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from kd import checkpoint
from kd import data
from kd import experiment
from kd import lm
from kd import train
from kd.config import base_config
from kd.config import stage_config
from kd.convert import hf
from kd.data import text_files
from kd.errors import ConfigError
from kd.errors import DataError
from kd.methods import method_config

TEXT = os.path.join(REPO, "tests", "fixtures", "text")
STORY = os.path.join(TEXT, "story.txt")
TOKENIZER_IDS = 27  # tests/fixtures/text/wordlevel: <pad> <s> </s> <unk> and 23 words.
PADDED = 32


def _checkpoint(folder: str, vocab_size: int) -> str:
  """The Qwen3 fixture's weights with `vocab_size` embedding and head rows, and the 27-id tokenizer."""
  model_config, variables = hf.load(os.path.join(REPO, "tests", "fixtures", "hf", "qwen3"))  # 120 rows.
  model_config = {**model_config, "tokenizer": os.path.join(TEXT, "wordlevel", "tokenizer.json")}
  params = dict(variables["params"])
  params["embed_tokens"] = {"embedding": params["embed_tokens"]["embedding"][:vocab_size]}
  params["lm_head"] = {"kernel": params["lm_head"]["kernel"][:, :vocab_size]}
  return hf.to_hf(model_config, {"params": params}, folder)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
  return _checkpoint(str(tmp_path_factory.mktemp("padded") / "qwen3"), PADDED)


def _name(tokenizer: str, **keys) -> str:
  return text_files.dataset_name(train=STORY, tokenizer=tokenizer, max_length=8, **keys)


def test_vocab_size_sets_the_models_vocabulary_not_the_ids(padded):
  assert hf.read_config(padded)[1] == PADDED and os.path.isfile(os.path.join(padded, "tokenizer.json"))
  plain, wide = _name(padded), _name(padded, vocab_size=PADDED)
  assert wide == plain + f",vocab_size={PADDED}"
  assert data.load_spec(plain).num_classes == TOKENIZER_IDS
  assert data.load_spec(wide).num_classes == PADDED
  # The same ids either way: only the models' number of logits differs, and so does the prepared dataset.
  np.testing.assert_array_equal(data.load_arrays(plain, "train")["tokens"], data.load_arrays(wide, "train")["tokens"])
  assert data.load_arrays(wide, "train")["tokens"].max() < TOKENIZER_IDS
  assert text_files.prepared_name(plain) != text_files.prepared_name(wide)


@pytest.mark.parametrize("vocab_size, message", [
    ("20", "vocab_size=20 is smaller than the tokenizer .*'s 27 ids: a model must have a logit for every id"),
    ("0", "vocab_size=0 must be a positive integer"),
    ("many", "vocab_size=many must be a positive integer"),
])
def test_a_vocabulary_smaller_than_the_tokenizer_is_one_line(padded, vocab_size, message):
  with pytest.raises(DataError, match=message) as error:
    data.load_spec(_name(padded) + f",vocab_size={vocab_size}")
  assert "\n" not in str(error.value)


def _stage_run_config(teacher: str, data_name: str):
  config = base_config()
  config.seeds = (0,)
  config.data.name = data_name
  config.data.validation_split, config.data.test_split = "", "train"
  config.data.batch_size, config.data.eval_batch_size = 2, 8
  student = {k: v for k, v in hf.read_config(teacher)[0].items() if k != "tokenizer"}
  config.stages.student = stage_config({**student, "num_hidden_layers": 1}, method_config("lm_kd"),
                                       teacher_checkpoint=teacher, num_steps=1, learning_rate=1e-3, warmup_steps=1)
  config.stage_order = ("student",)
  return config


def test_a_padded_teacher_needs_the_padded_vocabulary_in_the_data(padded, tmp_path):
  config = _stage_run_config(padded, _name(padded))
  spec = data.load_spec(config.data.name)
  with pytest.raises(ConfigError, match=f"has a vocabulary of {PADDED} tokens .* have {TOKENIZER_IDS}: .* add "
                                        f"vocab_size={PADDED} to the text_files dataset name") as error:
    lm.check_stages(config, spec, ("student",))
  assert "\n" not in str(error.value)
  wide = _stage_run_config(padded, _name(padded, vocab_size=PADDED))
  lm.check_stages(wide, data.load_spec(wide.data.name), ("student",))
  # A checkpoint with fewer rows than the tokenizer has ids cannot predict them all.
  small = _checkpoint(str(tmp_path / "small"), 20)
  config = _stage_run_config(small, _name(small))
  with pytest.raises(ConfigError, match="has a vocabulary of 20 tokens, but .* has token ids up to 26"):
    lm.check_stages(config, data.load_spec(config.data.name), ("student",))


def test_hf_distill_distils_a_padded_teacher_into_a_padded_student(padded, tmp_path):
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  try:
    import hf_distill  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(os.path.join(REPO, "experiments"))
  validation, test = os.path.join(TEXT, "prompt_completion.jsonl"), os.path.join(TEXT, "text.jsonl")
  data_name = f"text_files/train={STORY},validation={validation},test={test},tokenizer={padded},max_length=8"
  config = hf_distill.get_config(f"smoke,teacher={padded},data={data_name}")
  assert config.data.name == f"{data_name},vocab_size={PADDED}"
  workdir = str(tmp_path / "run")
  experiment.check(config, workdir, ("student",))  # The checks before any compile pass,
  result = train.train_stage(config, "student", train.seed_dir(workdir, 0), seed=0)  # and the KD steps run.
  assert 1 < result["test/perplexity"] < float("inf")
  student = checkpoint.load_model(os.path.join(train.seed_dir(workdir, 0), "student"))
  assert hf.vocab_size_of(student.variables) == PADDED and student.spec.num_classes == PADDED
  small = _checkpoint(str(tmp_path / "small"), 20)
  with pytest.raises(ConfigError, match="predicts 20 tokens but the data's tokenizer .* has 27 ids"):
    hf_distill.get_config(f"teacher={small},data=text_files/train={STORY},tokenizer={small}")
