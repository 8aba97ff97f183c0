r"""Self-distillation from a moving average of the student (mean teacher) on MNIST-1D, offline.

Tarvainen & Valpola, "Mean teachers are better role models" (NeurIPS 2017): the teacher's weights are the
exponential moving average of the student's, theta'_t = a theta'_{t-1} + (1 - a) theta_t (Eq. 1), and the
student is trained on the labels plus a consistency cost to the teacher's predictions. Here the teacher
is `teacher="ema:<a>"` (kd.train keeps the average in the train state; no gradient reaches it) and the
consistency cost is Hinton KD's KL at T = 1 with weight 1 (the paper uses the squared difference of the
probabilities; both vanish when the predictions agree). Fully supervised: every training signal is
labelled, so this measures self-distillation, not the paper's semi-supervised setting; the paper's own
numbers (SVHN, CIFAR-10 with few labels) are not restated.

    python -m kd.main --config=experiments/tarvainen2017_mean_teacher.py --workdir=runs/mean_teacher

Stages: baseline (labels only) and mean_teacher (a = 0.99, the paper's ramp-up value), same model and
steps. `:smoke` runs a few steps; `--config.stages.mean_teacher.teacher=ema:0.999` sets another decay.
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config

MODEL = {"name": "cnn1d", "channels": (16, 16), "hidden": 32}
NUM_STEPS = 1500


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = base_config()
  config.seeds = (0, 1, 2)
  config.data.name = "mnist1d"
  config.data.validation_split = ""  # Nothing is selected: every stage scored at its last step.
  config.data.batch_size = 64
  config.data.augment.crop_padding = 4
  optimizer = {"learning_rate": 3e-3, "weight_decay": 1e-4}
  config.stages.baseline = stage_config(MODEL, method_config("supervised"), num_steps=NUM_STEPS, **optimizer)
  consistency = method_config("hinton_kd", temperature=1.0, kd_weight=1.0, ce_weight=1.0)
  config.stages.mean_teacher = stage_config(MODEL, consistency, teacher="ema:0.99", num_steps=NUM_STEPS, **optimizer)
  config.stage_order = ("baseline", "mean_teacher")
  config.report.teacher, config.report.student = "baseline", "mean_teacher"
  config.report.compare = ("baseline", "mean_teacher")
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
    raise ValueError(f"unknown variant {arg!r} of experiments/tarvainen2017_mean_teacher.py; use :smoke or nothing")
  return config
