r"""Distilling an ensemble of teachers against each single teacher, on MNIST-1D, offline.

Hinton et al., "Distilling the Knowledge in a Neural Network" (2015), Sec. 1 and 3: the knowledge of
an ensemble, whose predictions are the mean of its members' distributions, distilled into one small
model recovers most of the ensemble's gain over a single model (speech: 10 models 61.1% frame accuracy, one
58.9%, the distilled one 60.8%). Here three 1-D ConvNet teachers of different shapes are trained, combined by
`kd.config.ensemble_stage` into the ensemble stage (the arithmetic mean of their distributions, no
training: it is evaluated and exported like any stage), and the same small student is distilled with
Hinton KD from the ensemble and from each teacher alone, and with each member's softened distribution
as its own target (`multi_teacher_kd`), against the student trained on labels.

    python -m kd.main --config=experiments/ensemble_mnist1d.py --workdir=runs/ensemble_mnist1d

`report.md` / `report.json` ("comparison") list every stage's test accuracy, mean ± std over seeds;
`:smoke` runs every stage for a few steps; `:combine=mean_logits` takes the geometric mean instead.
"""

import ml_collections

from kd.config import base_config
from kd.config import ensemble_stage
from kd.config import stage_config
from kd.methods import method_config

# Hinton et al. (2015) report the ensemble's and the distilled model's frame accuracy (Table 1).
REPORTED = {"hinton2015_speech_table1": {"baseline": 58.9, "10x_ensemble": 61.1, "distilled": 60.8}}

TEACHERS = {
    "teacher_a": {"name": "cnn1d", "channels": (32, 32, 32), "hidden": 64},
    "teacher_b": {"name": "cnn1d", "channels": (48, 48), "kernel_size": 7, "hidden": 64},
    "teacher_c": {"name": "cnn1d", "channels": (24, 24, 24, 24), "kernel_size": 3, "hidden": 64},
}
STUDENT = {"name": "cnn1d", "channels": (16, 16), "hidden": 32}
NUM_STEPS = 1500


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = dict(item.split("=", 1) for item in arg.split(",") if "=" in item) if arg else {}
  variants = {item for item in arg.split(",") if "=" not in item} if arg else set()
  unknown = (set(options) - {"combine"}) | (variants - {"smoke"})
  if unknown:
    raise ValueError(f"unknown variant {sorted(unknown)} of experiments/ensemble_mnist1d.py; use :smoke, "
                     ":combine=mean_probs|mean_logits, or both (comma-separated)")
  config = base_config()
  config.seeds = (0, 1, 2)
  config.data.name = "mnist1d"
  config.data.validation_split = ""  # Nothing is selected: every stage scored at its last step.
  config.data.batch_size = 64
  config.data.augment.crop_padding = 4
  optimizer = {"learning_rate": 3e-3, "weight_decay": 1e-4}
  kd = method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1)
  for name, model in TEACHERS.items():
    config.stages[name] = stage_config(model, method_config("supervised"), num_steps=NUM_STEPS, **optimizer)
  config.stages.ensemble = ensemble_stage(config.stages, tuple(TEACHERS), combine=options.get("combine", "mean_probs"))
  config.stages.baseline = stage_config(STUDENT, method_config("supervised"), num_steps=NUM_STEPS, **optimizer)
  config.stages.kd_ensemble = stage_config(STUDENT, kd, teacher="ensemble", num_steps=NUM_STEPS, **optimizer)
  # Each member's softened distribution as its own target (kd.methods.multi_teacher_kd), equal weights.
  each = method_config("multi_teacher_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1)
  config.stages.kd_each_teacher = stage_config(STUDENT, each, teacher="ensemble", num_steps=NUM_STEPS, **optimizer)
  singles = tuple(f"kd_{name}" for name in TEACHERS)
  for name in TEACHERS:
    config.stages[f"kd_{name}"] = stage_config(STUDENT, kd, teacher=name, num_steps=NUM_STEPS, **optimizer)
  config.stage_order = tuple(TEACHERS) + ("ensemble", "baseline", "kd_ensemble", "kd_each_teacher") + singles
  config.report.teacher = "ensemble"
  config.report.student = "kd_ensemble"
  config.report.compare = tuple(TEACHERS) + ("baseline", "kd_each_teacher") + singles
  config.log_every_steps = 500
  config.checkpoint.every_steps = NUM_STEPS
  if "smoke" in variants:
    config.seeds = (0,)
    config.data.batch_size = 16
    for stage in config.stages.values():
      stage.num_steps = min(stage.num_steps, 3)
    config.log_every_steps = 3
    config.checkpoint.every_steps = 3
  return config
