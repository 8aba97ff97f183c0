r"""Born-again networks (Furlanello, Lipton, Tschannen, Itti & Anandkumar, ICML 2018) on MNIST-1D, offline.

A network is trained on labels (generation 0); generation k + 1, of the same architecture, is trained
from scratch to match generation k's predictions only (the paper's BAN objective, Sec. 3: the
cross-entropy between the teacher's and the student's outputs, here KL at T = 1 with no label term);
the BAN ensemble averages the predictions of generations 1..K (Sec. 3.2, "Sequence of Teaching Selves
Born-Again Networks Ensemble"), made here by kd.config.ensemble_stage without training. The paper finds
each born-again generation better than its teacher and the ensemble better still: DenseNet BANs reach
15.5% (one model) and 14.9% (ensemble) validation error on CIFAR-100 (abstract; Table 1).

    python -m kd.main --config=experiments/furlanello2018_ban.py --workdir=runs/furlanello2018_ban

Stages gen0..gen3 and ban_ensemble (gen1..gen3); the report card compares generation 1 with generation
0 and the ensemble. `:smoke` runs a few steps; `:generations=N` sets K.
"""

import ml_collections

from kd.config import base_config
from kd.config import ensemble_stage
from kd.config import stage_config
from kd.methods import method_config

# CIFAR-100 validation error (%), DenseNet BANs: the abstract and Sec. 1 of the paper.
REPORTED = {"cifar100_densenet_ban_error": 15.5, "cifar100_densenet_ban_ensemble_error": 14.9}
MODEL = {"name": "cnn1d", "channels": (16, 16), "hidden": 32}
NUM_STEPS = 1500


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  items = [item for item in (arg or "").split(",") if item]
  options = dict(item.split("=", 1) for item in items if "=" in item)
  flags = {item for item in items if "=" not in item}
  if (set(options) - {"generations"}) or (flags - {"smoke"}):
    raise ValueError(f"unknown variant {arg!r} of experiments/furlanello2018_ban.py; use :smoke, :generations=N "
                     "or both (comma-separated)")
  generations = int(options.get("generations", 3))
  config = base_config()
  config.seeds = (0, 1, 2)
  config.data.name = "mnist1d"
  config.data.validation_split = ""  # Nothing is selected: every stage scored at its last step.
  config.data.batch_size = 64
  config.data.augment.crop_padding = 4
  optimizer = {"learning_rate": 3e-3, "weight_decay": 1e-4}
  config.stages.gen0 = stage_config(MODEL, method_config("supervised"), num_steps=NUM_STEPS, **optimizer)
  born_again = method_config("hinton_kd", temperature=1.0, kd_weight=1.0, ce_weight=0.0)
  names = [f"gen{k}" for k in range(1, generations + 1)]
  for k, name in enumerate(names):
    config.stages[name] = stage_config(MODEL, born_again, teacher=f"gen{k}", num_steps=NUM_STEPS, **optimizer)
  config.stages.ban_ensemble = ensemble_stage(config.stages, tuple(names))
  config.stage_order = ("gen0",) + tuple(names) + ("ban_ensemble",)
  config.report.teacher, config.report.baseline, config.report.student = "ban_ensemble", "gen0", "gen1"
  config.report.compare = ("gen0",) + tuple(names) + ("ban_ensemble",)
  config.log_every_steps = 500
  config.checkpoint.every_steps = NUM_STEPS
  if "smoke" in flags:
    config.seeds = (0,)
    config.data.batch_size = 16
    for stage in config.stages.values():
      stage.num_steps = min(stage.num_steps, 3)
    config.log_every_steps = 3
    config.checkpoint.every_steps = 3
  return config
