r"""Deep mutual learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018) on MNIST-1D, offline.

A cohort of small students trained together from scratch, each on the labels and on the others'
current predictions (kd.methods.dml, Eq. 10 of the paper: CE + 1/(K-1) sum KL(p_l || p_k), T = 1), against
the same student trained alone and distilled from a static, larger teacher (Hinton KD). The paper's
finding: mutual learning beats independent training for every architecture tried, and a cohort of small
networks can beat distillation from a larger pre-trained teacher (its Table 1 and Sec. 4.2, CIFAR-100
and Market-1501); the cohort's extra peers help further (its Fig. 3, K = 2..5).

    python -m kd.main --config=experiments/zhang2018_dml.py --workdir=runs/zhang2018_dml

Stages: teacher (a larger 1-D ConvNet), baseline (the student alone), kd (the student distilled from the
teacher), dml (student + 1 peer of its architecture), dml_cohort3 (student + 2 peers). The exported
model of a DML stage is network 0; its peers are under `<stage>/connector/`. `:smoke` runs a few steps.
The paper's own numbers are CIFAR-100 and Market-1501 results of other architectures; this file does
not restate them.
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config

TEACHER = {"name": "cnn1d", "channels": (32, 32, 32), "hidden": 64}
STUDENT = {"name": "cnn1d", "channels": (16, 16), "hidden": 32}
NUM_STEPS = 1500


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = base_config()
  config.seeds = (0, 1, 2)
  config.data.name = "mnist1d"
  config.data.validation_split = ""  # Nothing is selected: every stage scored at its last step.
  config.data.batch_size = 64
  config.data.augment.crop_padding = 4
  optimizer = {"learning_rate": 3e-3, "weight_decay": 1e-4}
  config.stages.teacher = stage_config(TEACHER, method_config("supervised"), num_steps=NUM_STEPS, **optimizer)
  config.stages.baseline = stage_config(STUDENT, method_config("supervised"), num_steps=NUM_STEPS, **optimizer)
  config.stages.kd = stage_config(STUDENT, method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1),
                                  teacher="teacher", num_steps=NUM_STEPS, **optimizer)
  # The paper's loss: T = 1, both terms weighted 1.
  config.stages.dml = stage_config(STUDENT, method_config("dml", peers=1), num_steps=NUM_STEPS, **optimizer)
  config.stages.dml_cohort3 = stage_config(STUDENT, method_config("dml", peers=2), num_steps=NUM_STEPS, **optimizer)
  config.stage_order = ("teacher", "baseline", "kd", "dml", "dml_cohort3")
  config.report.student = "dml"
  config.report.compare = ("baseline", "kd", "dml", "dml_cohort3")
  config.log_every_steps = 500
  config.checkpoint.every_steps = NUM_STEPS
  if arg == "smoke":
    config.seeds = (0,)
    config.data.batch_size = 16
    for stage in config.stages.values():
      stage.num_steps = 3
    config.log_every_steps = 3
    config.checkpoint.every_steps = 3
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of experiments/zhang2018_dml.py; use :smoke or nothing")
  return config
