r"""Distil any Hugging Face decoder checkpoint folder (GPT-2, Llama, Qwen2, Qwen3) into a shallower student.

    python -m kd.main --config=experiments/hf_distill.py:teacher=checkpoints/Qwen3-0.6B,student_layers=8,data=text_files/train=data/train.jsonl+validation=...,tokenizer=checkpoints/Qwen3-0.6B \
        --workdir=runs/hf_distill

`data=` is the whole `text_files/...` dataset name (README, "Your own text"): its `,` and `=` stay as
they are, so give `data` last. The teacher is read as `teacher_checkpoint` (config.json says its
model). The student, by `student_layers` (default: half the teacher's layers):

  - without `init`: the teacher's architecture at that depth, initialised from the teacher's layers
    spread from the first to the last (`kd.methods.lm_distilbert`: 12 -> 6 keeps 0, 2, 4, 7, 9, 11), and
    trained with DistilBERT's loss (Sanh et al. 2019, arXiv:1910.01108: 5 KL(T=2) + 2 CE + 1 cosine of
    the last hidden states);
  - with `init=<folder>`: the student in that HF folder (e.g. one `python -m kd.lm.students` pruned in
    width too, Minitron-style), trained with token-level KD (`lm_kd`, `divergence`, default forward KL).

Keys: teacher, student_layers, init, divergence (forward_kl, reverse_kl, jsd, ...), steps (1000),
learning_rate (1e-4: the student starts from trained weights), batch_size (8), validation / test
(the data's splits for selection and the report card; "" for none), data. The data must be tokenized
with the teacher's tokenizer. A checkpoint whose embedding is padded beyond its tokenizer (Qwen3:
151,936 rows for 151,669 ids) gives the data its vocabulary: `,vocab_size=<the teacher's>` is added to
the dataset's name (kd.data.text_files), so the student has the teacher's padded vocabulary and the
two models' logits line up. A tokenizer with more ids than the teacher has rows is refused, with the
two sizes.

Without arguments, and with `:smoke`, it distils the 2-layer Qwen3 test fixture (tests/fixtures/hf/qwen3,
vocabulary 120) on a one-line text with the 120-id word-level fixture tokenizer: a check that the path
works, in seconds; `:smoke` takes 3 steps.
"""

import os

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.errors import ConfigError
from kd.lm import configs
from kd.methods import method_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_TEACHER = os.path.join(_REPO, "tests", "fixtures", "hf", "qwen3")
FIXTURE_DATA = (f"text_files/train={os.path.join(_REPO, 'tests', 'fixtures', 'text', 'story.txt')},"
                f"test={os.path.join(_REPO, 'tests', 'fixtures', 'text', 'text.jsonl')},"
                f"tokenizer={os.path.join(_REPO, 'tests', 'fixtures', 'text', 'wordlevel120')},max_length=8")
DEFAULTS = {"teacher": "", "student_layers": 0, "init": "", "divergence": "forward_kl", "steps": 1000,
            "learning_rate": 1e-4, "batch_size": 8, "validation": "validation", "test": "test", "data": ""}


def _split_arg(arg: str | None) -> tuple[str, str]:
  """(the other keys, the data name): everything after `data=` is the dataset's name."""
  arg = arg or ""
  head, sep, data = arg.partition("data=")
  if sep and head and not head.endswith(","):  # "...,somedata=..." is no data key.
    return arg, ""
  return head.rstrip(","), data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  from kd.convert import hf  # pylint: disable=g-import-not-at-top

  rest, data_name = _split_arg(arg)
  values = configs.parse_arg(rest, {k: v for k, v in DEFAULTS.items() if k != "data"}, "experiments/hf_distill.py")
  smoke = values["smoke"]
  teacher = values["teacher"] or FIXTURE_TEACHER
  if not data_name:
    if values["teacher"]:
      raise ConfigError("experiments/hf_distill.py: give the data as the last key, data=text_files/...,tokenizer="
                        f"{values['teacher']} (text tokenized with the teacher's tokenizer)")
    data_name = FIXTURE_DATA
    values.update(validation="", test="test")
  if not data_name.startswith("text_files/"):
    raise ConfigError(f"experiments/hf_distill.py: data={data_name!r} must be a text_files/... dataset name")
  teacher_config, teacher_vocab = hf.read_config(teacher, f"experiments/hf_distill.py: teacher={teacher}")
  data_name = _with_vocabulary(data_name, teacher, teacher_vocab)
  depth_key = "n_layer" if teacher_config["name"] == "gpt2" else "num_hidden_layers"
  layers = values["student_layers"] or max(1, teacher_config[depth_key] // 2)
  if not 1 <= layers <= teacher_config[depth_key]:
    raise ConfigError(f"experiments/hf_distill.py: student_layers={layers}: the teacher has "
                      f"{teacher_config[depth_key]} layers; choose 1..{teacher_config[depth_key]}")
  own = {k: v for k, v in teacher_config.items() if k != "tokenizer"}
  if values["init"]:
    student = {k: v for k, v in hf.read_config(values["init"], f"experiments/hf_distill.py: init={values['init']}")[0]
               .items() if k != "tokenizer"}
    method = method_config("lm_kd", divergence=values["divergence"])
  else:
    student = {**own, depth_key: layers}
    method = method_config("lm_distilbert")

  config = base_config()
  config.seeds = (0,)
  config.data.name = data_name
  config.data.validation_split, config.data.test_split = values["validation"], values["test"]
  config.data.batch_size = min(values["batch_size"], 2) if smoke or not values["teacher"] else values["batch_size"]
  config.data.eval_batch_size = 8 if smoke or not values["teacher"] else 64
  steps = 3 if smoke else values["steps"]
  config.stages.student = stage_config(student, method, teacher_checkpoint=teacher, init_from=values["init"],
                                       num_steps=steps, learning_rate=values["learning_rate"],
                                       warmup_steps=1 if smoke else min(100, steps // 10), grad_clip_norm=1.0)
  config.stage_order = ("student",)
  # The teacher is the student's teacher_checkpoint; no labels-only baseline is trained.
  config.report.update(teacher="teacher", baseline="student", student="student", compare=())
  config.log_every_steps = 1 if smoke else 50
  config.eval_every_steps = 0
  config.checkpoint.every_steps = steps
  return config


def _with_vocabulary(data_name: str, teacher: str, teacher_vocab: int) -> str:
  """The data's name with the teacher's vocabulary when the teacher's embedding is padded beyond the
  tokenizer; ConfigError when the tokenizer has more ids than the teacher has rows."""
  from kd.data import text_files  # pylint: disable=g-import-not-at-top
  from kd.lm import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  source = text_files.parse(data_name[len("text_files/"):])
  size = tokenizer_lib.load(source.tokenizer).vocab_size
  if size > teacher_vocab:
    raise ConfigError(f"experiments/hf_distill.py: the teacher {teacher} predicts {teacher_vocab} tokens but the "
                      f"data's tokenizer {source.tokenizer} has {size} ids: tokenize with the teacher's own tokenizer")
  if source.vocab_size and source.vocab_size != teacher_vocab:
    raise ConfigError(f"experiments/hf_distill.py: the data says vocab_size={source.vocab_size} but the teacher "
                      f"{teacher} has {teacher_vocab} embedding rows: leave vocab_size out (it is the teacher's)")
  if size < teacher_vocab and not source.vocab_size:
    return f"{data_name},vocab_size={teacher_vocab}"
  return data_name
