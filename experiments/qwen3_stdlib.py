r"""A Qwen3 teacher, a student cut out of it (layers by a map, widths pruned), distilled from its HF folder.

The path a user with a Hugging Face checkpoint takes, end to end and offline, on the Python standard
library's sources tokenized with a byte-level BPE of 2,048 ids trained on their train files:

  1. teacher        a Qwen3-architecture decoder (4 layers, hidden 128, 4 query / 2 key-value heads of
                    64, MLP 384, tied embeddings; arXiv:2505.09388), next-token cross-entropy;
  2. teacher_hf     the teacher exported as a Hugging Face folder (`python -m kd.convert --to=hf`);
  3. student_hf     a Qwen3 about 4x smaller derived from that folder (`python -m kd.lm.students`):
                    2 layers by the default map (teacher layers 0 and 3), hidden 128 -> 64, MLP 384 -> 256,
                    key/value groups 2 -> 1 (heads 4 -> 2), ranked by Minitron's activation importance
                    on 64 calibration windows (Muralidharan et al. 2024, arXiv:2407.14679);
  4. students       distilled from teacher_hf as `teacher_checkpoint`: `derived_kl` / `derived_jsd` /
                    `derived_gkd` start from student_hf (`init_from`) with forward KL, JSD(0.5) and on-policy
                    GKD (lambda 0.5, JSD(0.5); Agarwal et al. 2024, arXiv:2306.13649); `random_kl` is the
                    same architecture from a random start with forward KL; `baseline` the random start on
                    labels only. The report card (test split): perplexity per token, retention (teacher
                    perplexity / student perplexity), next-token agreement, decode tokens/s.

A config cannot convert between stages, so the experiment is two configs (`:stage=teacher`, the default,
and `:stage=students`) and three commands between them. All of it, in order:

    python experiments/qwen3_stdlib.py --root=runs/qwen3_stdlib          # add --smoke for the tiny one

which runs, step by step:

    python -c "from kd.lm import tokenizer; tokenizer.train_stdlib_bpe('runs/qwen3_stdlib/bpe2048', vocab_size=2048)"
    python -m kd.main --config=experiments/qwen3_stdlib.py:stage=teacher,root=runs/qwen3_stdlib \
        --workdir=runs/qwen3_stdlib/teacher
    python -m kd.convert runs/qwen3_stdlib/teacher/seed_0/teacher runs/qwen3_stdlib/teacher_hf --to=hf
    python -m kd.lm.students runs/qwen3_stdlib/teacher_hf runs/qwen3_stdlib/student_hf --num_layers=2 \
        --hidden_size=64 --intermediate_size=256 --num_heads=2 \
        --calibration="$(python experiments/qwen3_stdlib.py --root=runs/qwen3_stdlib --data_name)"
    python -m kd.main --config=experiments/qwen3_stdlib.py:stage=students,root=runs/qwen3_stdlib \
        --workdir=runs/qwen3_stdlib/students

(`root` holds the tokenizer, both workdirs and both HF folders; the students' config names
root/teacher_hf and root/student_hf.) About 13 minutes on 2 shared CPU cores (measured: teacher 6 min, each
student under 70 s; retention 72% for derived_kl, see README); `--smoke` (and the configs'
`smoke`) uses a 2-layer hidden-32 teacher, a 1-layer hidden-16 student, a BPE of 512 over six files and
a few steps, in well under a minute.
"""

import os
import sys
import sysconfig

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.data import text_files
from kd.lm import configs
from kd.methods import method_config

DEFAULT_ROOT = "runs/qwen3_stdlib"
VOCAB_SIZE, SMOKE_VOCAB_SIZE = 2048, 512
MAX_LENGTH = 128
TEACHER = {"name": "qwen3", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": MAX_LENGTH,
           "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}
SMOKE_TEACHER = {**TEACHER, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}
# kd.lm.students' arguments: the student's sizes (layers by the default map).
STUDENT = {"num_layers": 2, "hidden_size": 64, "intermediate_size": 256, "num_heads": 2}
SMOKE_STUDENT = {"num_layers": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2}
CALIBRATION_EXAMPLES = 64
# The smoke run's corpus: six stdlib modules, split by file.
SMOKE_FILES = {"train": ("bisect.py", "colorsys.py", "fnmatch.py", "keyword.py"), "validation": ("glob.py",),
               "test": ("copyreg.py",)}

STUDENTS = {
    "derived_kl": ("init", method_config("lm_kd", divergence="forward_kl")),
    "derived_jsd": ("init", method_config("lm_kd", divergence="jsd", beta=0.5)),
    "derived_gkd": ("init", method_config("lm_gkd", divergence="jsd", beta=0.5, student_data_fraction=0.5)),
    "random_kl": ("random", method_config("lm_kd", divergence="forward_kl")),
}
SMOKE_STUDENTS = ("derived_kl", "random_kl")
TEACHER_STEPS, STUDENT_STEPS = 500, 150


def paths(root: str, smoke: bool = False) -> dict[str, str]:
  """Where each step writes, under `root`."""
  return {"tokenizer": os.path.join(root, f"bpe{SMOKE_VOCAB_SIZE if smoke else VOCAB_SIZE}"),
          "teacher": os.path.join(root, "teacher"), "teacher_export": os.path.join(root, "teacher", "seed_0", "teacher"),
          "teacher_hf": os.path.join(root, "teacher_hf"), "student_hf": os.path.join(root, "student_hf"),
          "students": os.path.join(root, "students")}


def _stdlib() -> str:
  return sysconfig.get_paths()["stdlib"]


def data_name(root: str, smoke: bool = False) -> str:
  """The text_files dataset: the stdlib sources split 80/10/10 by file name (as stdlib_text), BPE tokens."""
  tokenizer = paths(root, smoke)["tokenizer"]
  if smoke:
    files = {split: "+".join(os.path.join(_stdlib(), name) for name in names) for split, names in SMOKE_FILES.items()}
    return text_files.dataset_name(tokenizer=tokenizer, max_length=MAX_LENGTH, **files)
  return text_files.dataset_name(files=os.path.join(_stdlib(), "*.py"), split="80/10/10", tokenizer=tokenizer,
                                 max_length=MAX_LENGTH)


def train_tokenizer(root: str, smoke: bool = False) -> str:
  """The BPE, trained once on the corpus's train files (kd.lm.tokenizer)."""
  from kd.lm import tokenizer  # pylint: disable=g-import-not-at-top

  folder = paths(root, smoke)["tokenizer"]
  if not os.path.isfile(os.path.join(folder, tokenizer.TOKENIZER_FILE)):
    if smoke:
      tokenizer.train_bpe([os.path.join(_stdlib(), name) for name in SMOKE_FILES["train"]], folder,
                          vocab_size=SMOKE_VOCAB_SIZE)
    else:
      tokenizer.train_stdlib_bpe(folder, vocab_size=VOCAB_SIZE)
  return folder


def student_model(smoke: bool) -> dict:
  """The model config kd.lm.students writes for STUDENT (what `init_from` its folder needs)."""
  teacher, student = (SMOKE_TEACHER, SMOKE_STUDENT) if smoke else (TEACHER, STUDENT)
  group = teacher["num_attention_heads"] // teacher["num_key_value_heads"]
  return {**teacher, "num_hidden_layers": student["num_layers"], "hidden_size": student["hidden_size"],
          "intermediate_size": student["intermediate_size"], "num_attention_heads": student["num_heads"],
          "num_key_value_heads": student["num_heads"] // group}


def _base(root: str, smoke: bool) -> ml_collections.ConfigDict:
  config = base_config()
  config.seeds = (0,)
  config.data.name = data_name(root, smoke)
  config.data.validation_split, config.data.test_split = "validation", "test"
  config.data.batch_size = 16
  config.data.eval_batch_size = 128
  config.log_every_steps = 2 if smoke else 50
  config.eval_every_steps = 0
  config.checkpoint.every_steps = 4 if smoke else 250
  return config


def _stage(model, method, smoke, steps, **kwargs):
  return stage_config(model, method, num_steps=3 if smoke else steps, learning_rate=3e-3,
                      warmup_steps=1 if smoke else 30, grad_clip_norm=1.0, **kwargs)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  values = configs.parse_arg(arg, {"stage": "teacher", "root": DEFAULT_ROOT}, "experiments/qwen3_stdlib.py")
  smoke, root = values["smoke"], values["root"]
  config = _base(root, smoke)
  where = paths(root, smoke)
  if values["stage"] == "teacher":
    config.stages.teacher = _stage(SMOKE_TEACHER if smoke else TEACHER, method_config("lm_supervised"), smoke,
                                   TEACHER_STEPS)
    config.stage_order = ("teacher",)
    config.report.update(teacher="teacher", baseline="teacher", student="teacher", compare=())
    return config
  if values["stage"] != "students":
    raise ValueError(f"stage={values['stage']!r} of experiments/qwen3_stdlib.py: choose teacher or students")
  student = student_model(smoke)
  names = [name for name in STUDENTS if not smoke or name in SMOKE_STUDENTS]
  baseline = "random_kl" if smoke else "baseline"  # The smoke run's baseline is the random start.
  if not smoke:
    config.stages.baseline = _stage(student, method_config("lm_supervised"), smoke, STUDENT_STEPS)
  for name in names:
    start, method = STUDENTS[name]
    config.stages[name] = _stage(student, method, smoke, STUDENT_STEPS, teacher_checkpoint=where["teacher_hf"],
                                 init_from=where["student_hf"] if start == "init" else "")
  stages = names if smoke else ["baseline", *names]
  config.stage_order = tuple(stages)
  # The teacher is no stage of this run: the report card measures the students' teacher_checkpoint.
  config.report.update(teacher="teacher", baseline=baseline, student="derived_kl", compare=tuple(stages))
  return config


def run_all(root: str = DEFAULT_ROOT, smoke: bool = False) -> dict:
  """Every step of the module docstring, in order; a step whose output exists is not run again."""
  from kd import experiment  # pylint: disable=g-import-not-at-top
  from kd import train  # pylint: disable=g-import-not-at-top
  from kd.convert import hf  # pylint: disable=g-import-not-at-top
  from kd.lm import students  # pylint: disable=g-import-not-at-top

  where = paths(root, smoke)
  variant = f"root={root}" + (",smoke" if smoke else "")
  train_tokenizer(root, smoke)
  teacher_config = get_config(f"stage=teacher,{variant}")
  # Its stage only: the students' report card measures the teacher (a teacher-only run's card compares
  # the teacher with itself).
  experiment.check(teacher_config, where["teacher"], ["teacher"], ())
  train.train_stage(teacher_config, "teacher", train.seed_dir(where["teacher"], 0), seed=0)
  if not os.path.exists(os.path.join(where["teacher_hf"], hf.CONFIG_JSON)):
    hf.main([where["teacher_export"], where["teacher_hf"], "--to=hf"])
  if not os.path.exists(os.path.join(where["student_hf"], hf.CONFIG_JSON)):
    arguments = [f"--{key}={value}" for key, value in (SMOKE_STUDENT if smoke else STUDENT).items()]
    students.main([where["teacher_hf"], where["student_hf"], *arguments, f"--calibration={data_name(root, smoke)}",
                   f"--calibration_examples={CALIBRATION_EXAMPLES}"])
  return experiment.run(get_config(f"stage=students,{variant}"), where["students"])


if __name__ == "__main__":
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description="The experiment of experiments/qwen3_stdlib.py, end to end.")
  parser.add_argument("--root", default=DEFAULT_ROOT, help="the folder of every step's output")
  parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps")
  parser.add_argument("--data_name", action="store_true", help="print the dataset name and exit")
  args = parser.parse_args()
  if args.data_name:
    print(data_name(args.root, args.smoke))
    sys.exit(0)
  run_all(args.root, args.smoke)
