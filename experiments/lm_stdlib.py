r"""Language-model distillation, offline: byte-level LMs on the Python standard library's sources.

Trains on `stdlib_text` (128-byte windows of the standard library's top-level modules, split by file):
  teacher         a 4-layer, 128-wide transformer LM, next-token cross-entropy;
  baseline        a 2-layer, 64-wide student, cross-entropy only (labels only);
  student         the same student, token-level forward KL to the teacher (word-level KD);
  student_jsd     ... generalized JSD(0.5) (Agarwal et al. 2024, supervised);
  student_seqkd   ... trained on the teacher's greedy continuations (Kim & Rush 2016);
  student_gkd     ... on-policy GKD, lambda = 0.5, JSD(0.5) (Agarwal et al. 2024);
then the report card: validation perplexity of each, retention (teacher perplexity / student
perplexity), parameter counts, decode tokens/s with the KV cache at batch 1 and 32, and
teacher-student next-token agreement.

    python -m kd.main --config=experiments/lm_stdlib.py --workdir=runs/lm_stdlib

About 20 minutes on 2 CPU cores. `:smoke` runs a few steps of each stage in under a minute.
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config

TEACHER = {"name": "transformer_lm", "num_layers": 4, "width": 128, "num_heads": 4, "max_len": 128}
STUDENT = {"name": "transformer_lm", "num_layers": 2, "width": 64, "num_heads": 4, "max_len": 128}
SMOKE_TEACHER = {**TEACHER, "num_layers": 2, "width": 32}
SMOKE_STUDENT = {**STUDENT, "num_layers": 1, "width": 16}

STUDENTS = {
    "student": method_config("lm_kd", divergence="forward_kl"),
    "student_jsd": method_config("lm_kd", divergence="jsd", beta=0.5),
    "student_seqkd": method_config("lm_seqkd"),
    "student_gkd": method_config("lm_gkd", divergence="jsd", beta=0.5, student_data_fraction=0.5),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  smoke = arg == "smoke"
  if arg and not smoke:
    raise ValueError(f"unknown variant {arg!r} of experiments/lm_stdlib.py; use :smoke or nothing")
  teacher, student = (SMOKE_TEACHER, SMOKE_STUDENT) if smoke else (TEACHER, STUDENT)
  config = base_config()
  config.seeds = (0,)
  config.data.name = "stdlib_text"
  config.data.eval_split = "validation"
  config.data.test_split = "validation"  # Model selection and the report on validation; test stays unseen.
  config.data.batch_size = 32
  config.data.eval_batch_size = 256
  steps = 8 if smoke else 1200
  student_steps = 8 if smoke else 600
  config.stages.teacher = stage_config(teacher, method_config("lm_supervised"), num_steps=steps,
                                       learning_rate=3e-3, warmup_steps=2 if smoke else 100,
                                       grad_clip_norm=1.0)
  config.stages.baseline = stage_config(student, method_config("lm_supervised"), num_steps=student_steps,
                                        learning_rate=3e-3, warmup_steps=2 if smoke else 50,
                                        grad_clip_norm=1.0)
  for name, method in STUDENTS.items():
    config.stages[name] = stage_config(student, method, teacher="teacher", num_steps=student_steps,
                                       learning_rate=3e-3, warmup_steps=2 if smoke else 50,
                                       grad_clip_norm=1.0)
  config.stage_order = ("teacher", "baseline", *STUDENTS)
  config.report.compare = ("baseline", *STUDENTS)
  config.log_every_steps = 4 if smoke else 100
  config.eval_every_steps = 0
  config.checkpoint.every_steps = 8 if smoke else 600
  if smoke:
    config.data.eval_batch_size = 512
  return config
