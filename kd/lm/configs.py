"""Shared pieces of the language-model experiment files: models, the data block, variant arguments."""

from typing import Any

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config

TEACHER = {"name": "transformer_lm", "num_layers": 4, "width": 128, "num_heads": 4, "max_len": 128}
STUDENT = {"name": "transformer_lm", "num_layers": 2, "width": 64, "num_heads": 4, "max_len": 128}
SMOKE_TEACHER = {**TEACHER, "num_layers": 2, "width": 32}
SMOKE_STUDENT = {**STUDENT, "num_layers": 1, "width": 16}


def parse_arg(arg: str | None, defaults: dict[str, Any], where: str) -> dict[str, Any]:
  """`"smoke,lambda=0.5,divergence=jsd"` -> {"smoke": True, "lambda": 0.5, ...} over `defaults`."""
  values = {"smoke": False, **defaults}
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key == "smoke" and not value:
      values["smoke"] = True
      continue
    if key not in values or not value:
      raise ValueError(f"unknown variant {item!r} of {where}; use smoke and key=value with keys "
                       f"{sorted(k for k in values if k != 'smoke')}")
    default = values[key]
    values[key] = value if isinstance(default, str) else type(default)(value)
  return values


def lm_config(students: dict[str, dict[str, Any]], *, smoke: bool, teacher: dict[str, Any] | None = None,
              student: dict[str, Any] | None = None, teacher_steps: int = 600, student_steps: int = 300,
              teacher_warmup: int = 50, report_student: str = "") -> ml_collections.ConfigDict:
  """teacher, baseline (the student architecture, labels only) and `students` on stdlib_text.

  Args:
    students: stage name -> method config; each distils from "teacher" (a dict may carry a "model"
      entry to override the student architecture for that stage).
    smoke: tiny models and a few steps (seconds on a CPU).
  """
  teacher = teacher or (SMOKE_TEACHER if smoke else TEACHER)
  student = student or (SMOKE_STUDENT if smoke else STUDENT)
  config = base_config()
  config.seeds = (0,)
  config.data.name = "stdlib_text"
  # The corpus has its own validation split (other files than train's); the report card is on test.
  config.data.validation_split = "validation"
  config.data.test_split = "test"
  config.data.batch_size = 16
  config.data.eval_batch_size = 256
  if smoke:  # A slice of validation keeps evaluation and the report to seconds.
    config.data.validation_split, config.data.test_split = "validation[:256]", "test[:256]"
  teacher_steps, student_steps = (4, 4) if smoke else (teacher_steps, student_steps)
  warmup = 1 if smoke else 30
  config.stages.teacher = stage_config(teacher, method_config("lm_supervised"), num_steps=teacher_steps,
                                       learning_rate=3e-3, warmup_steps=1 if smoke else teacher_warmup, grad_clip_norm=1.0)
  config.stages.baseline = stage_config(student, method_config("lm_supervised"), num_steps=student_steps,
                                        learning_rate=3e-3, warmup_steps=warmup, grad_clip_norm=1.0)
  for name, method in students.items():
    method = dict(method)
    model = method.pop("model", student)
    config.stages[name] = stage_config(model, method, teacher="teacher", num_steps=student_steps,
                                       learning_rate=3e-3, warmup_steps=warmup, grad_clip_norm=1.0)
  config.stage_order = ("teacher", "baseline", *students)
  config.report.student = report_student or next(iter(students))
  config.report.compare = ("baseline", *students)
  config.log_every_steps = 2 if smoke else 50
  config.eval_every_steps = 0
  config.checkpoint.every_steps = 4 if smoke else 300
  return config
