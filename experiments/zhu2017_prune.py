r"""A student made by pruning the teacher, distilled, against a small student distilled, on digits, offline.

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression"
(arXiv:1710.01878, 2017): gradual magnitude pruning (the cubic schedule of Eq. 1, kd.pruning) of a
large model beats a small dense model of the same number of non-zero parameters (its Tables 1-3). Here
the quickstart's teacher (87,274 parameters) starts from its own trained weights (`init_from=
"stage:teacher"`) and is pruned to 80% zeros in every kernel (about 17.5k non-zero parameters, the
quickstart student's 17,098) over the first 1000 of 1500 steps while it is distilled from the unpruned
teacher (Hinton KD), against the quickstart's small student trained on labels (baseline) and distilled
(student). The pruned stage's export keeps the teacher's shapes, with the zeros; `result.json` and
`report.json` record its `nonzero_params`.

    python -m kd.main --config=experiments/zhu2017_prune.py --workdir=runs/zhu2017_prune

`:smoke` runs a few steps.
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config

TEACHER = {"name": "cnn", "channels": (32, 64), "hidden": 256}
STUDENT = {"name": "cnn", "channels": (32,), "hidden": 32}
SPARSITY = 0.8  # Of every Dense/Conv kernel: ~17.5k of the teacher's 87k parameters stay non-zero.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = base_config()
  config.seeds = (0, 1, 2)
  config.data.name = "digits"
  config.data.batch_size = 64
  optimizer = {"learning_rate": 3e-3, "weight_decay": 1e-4}
  kd = method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1)
  config.stages.teacher = stage_config(TEACHER, method_config("supervised"), num_steps=1500, **optimizer)
  config.stages.baseline = stage_config(STUDENT, method_config("supervised"), num_steps=1500, **optimizer)
  config.stages.student = stage_config(STUDENT, kd, teacher="teacher", num_steps=1500, **optimizer)
  config.stages.pruned = stage_config(TEACHER, kd, teacher="teacher", init_from="stage:teacher", num_steps=1500,
                                      prune={"sparsity": SPARSITY, "every_steps": 50, "end_step": 1000},
                                      **optimizer)
  config.stage_order = ("teacher", "baseline", "student", "pruned")
  config.report.student = "pruned"
  config.report.compare = ("baseline", "student", "pruned")
  config.log_every_steps = 250
  config.eval_every_steps = 500
  config.checkpoint.every_steps = 500
  if arg == "smoke":
    config.seeds = (0,)
    config.data.batch_size = 16
    for stage in config.stages.values():
      stage.num_steps = 4
    config.stages.pruned.prune.update({"every_steps": 1, "end_step": 3})
    config.log_every_steps = 2
    config.eval_every_steps = 2
    config.checkpoint.every_steps = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of experiments/zhu2017_prune.py; use :smoke or nothing")
  return config
