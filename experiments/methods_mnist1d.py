r"""Method comparison on MNIST-1D with augmentation, offline: every distillation method on one pair.

MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024,
arXiv:2011.14439): 4000 training and 1000 test signals of length 40, generated offline, where
architectures differ more than on MNIST (the paper: MLP 68%, CNN 94%). A 1-D ConvNet teacher
(three conv blocks of 32 channels, 21.5k parameters) and a smaller student (two blocks of 16, 6.9k);
the student is trained on labels only (baseline), then distilled with each method, for three seeds.
Every stage trains on random shifts of the signal (`data.augment.crop_padding=4`: zero-pad by 4 and
crop back to 40, a shift of up to 4 steps; no flip, which would reverse time); the teacher sees the
student's view. The report card compares teacher, baseline and Hinton KD; `report.md` and
`report.json` (key "comparison") add test accuracy, mean ± std over seeds, for every method.

    python -m kd.main --config=experiments/methods_mnist1d.py --workdir=runs/methods_mnist1d

Measured: about an hour of wall time on 2 CPU cores shared with other jobs (45 stages of 1500 steps,
24 epochs; CRD's stage is the slowest). `:smoke` runs every stage for a few steps. Method hyperparameters are each paper's (or the CRD benchmark's)
defaults, not tuned here. Feature methods read these tap points of the `cnn1d` models:
  student norm1 [20x16], hidden [32];  teacher norm1 [20x32], norm2 [10x32], hidden [64].
AT, NST, FSP and ReviewKD need 2-D feature maps [B,H,W,C] and are left out; FitNets and VID
regress the teacher's embedding (their regressors need 2-D maps too); AB reads the pre-ReLU norm1.
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config

TEACHER = {"name": "cnn1d", "channels": (32, 32, 32), "hidden": 64}
STUDENT = {"name": "cnn1d", "channels": (16, 16), "hidden": 32}
NUM_STEPS = 1500

# Stage name -> method config. Feature methods name the tap points they pair up.
METHODS = {
    "kd": method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1),
    "dkd": method_config("dkd"),
    "dist": method_config("dist"),
    "logit_std": method_config("logit_std"),
    "logit_mse": method_config("logit_mse", ce_weight=1.0),
    "fitnets": method_config("fitnets", student_features=("hidden",), teacher_features=("hidden",)),
    "vid": method_config("vid", student_features=("hidden",), teacher_features=("hidden",)),
    "ab": method_config("ab", student_features=("norm1",), teacher_features=("norm1",)),
    "sp": method_config("sp", student_features=("norm1",), teacher_features=("norm2",)),
    "cc": method_config("cc", student_features=("hidden",), teacher_features=("hidden",)),
    "rkd": method_config("rkd", student_features=("hidden",), teacher_features=("hidden",)),
    "pkt": method_config("pkt", student_features=("hidden",), teacher_features=("hidden",)),
    # 1024 negatives (the benchmark's 16384 exceeds the 4000 signals; 4096 would make this stage the
    # slowest by far on a CPU).
    "crd": method_config("crd", student_features=("hidden",), teacher_features=("hidden",), nce_k=1024),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = base_config()
  config.seeds = (0, 1, 2)
  config.data.name = "mnist1d"
  # Every method at its paper's default weights, untuned, scored at its last step: nothing is selected,
  # so the methods train on all of train (no validation split).
  config.data.validation_split = ""
  config.data.batch_size = 64
  config.data.augment.crop_padding = 4
  optimizer = {"learning_rate": 3e-3, "weight_decay": 1e-4}
  config.stages.teacher = stage_config(TEACHER, method_config("supervised"), num_steps=NUM_STEPS, **optimizer)
  config.stages.baseline = stage_config(STUDENT, method_config("supervised"), num_steps=NUM_STEPS, **optimizer)
  for name, method in METHODS.items():
    config.stages[name] = stage_config(STUDENT, method, teacher="teacher", num_steps=NUM_STEPS, **optimizer)
  config.stage_order = ("teacher", "baseline") + tuple(METHODS)
  config.report.student = "kd"
  config.report.compare = ("baseline",) + tuple(METHODS)
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
    raise ValueError(f"unknown variant {arg!r} of experiments/methods_mnist1d.py; use :smoke or nothing")
  return config
