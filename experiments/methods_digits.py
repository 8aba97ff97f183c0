r"""Method comparison on handwritten digits, offline: every distillation method on one teacher/student pair.

The quickstart's pair (a two-block ConvNet teacher, 87k parameters, and a one-block student, 17k) on
scikit-learn's digits: the student trained on labels only (baseline), then distilled with each method,
for three seeds. The report card compares the teacher, the baseline and Hinton KD; `report.md` and
`report.json` (key "comparison") add a table of test accuracy, mean ± std over seeds, for every
method next to the baseline.

    python -m kd.main --config=experiments/methods_digits.py --workdir=runs/methods_digits

About 10 minutes on 2 CPU cores (each stage trains 1500 steps in ~10 s). `:smoke` runs every stage
for a few steps in seconds. Method hyperparameters are each paper's (or the CRD benchmark's) defaults,
not tuned for digits; feature methods read these tap points of the `cnn` models:
  student conv0 [8x8x32], hidden [32];  teacher conv0 [8x8x32], conv1 [4x4x64], hidden [256].
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config

TEACHER = {"name": "cnn", "channels": (32, 64), "hidden": 256}
STUDENT = {"name": "cnn", "channels": (32,), "hidden": 32}

# Stage name -> method config. Feature methods name the tap points they pair up.
METHODS = {
    "kd": method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1),
    "dkd": method_config("dkd"),
    "dist": method_config("dist"),
    "logit_std": method_config("logit_std"),
    "logit_mse": method_config("logit_mse", ce_weight=1.0),
    "fitnets": method_config("fitnets", student_features=("conv0",), teacher_features=("conv1",)),
    "at": method_config("at", student_features=("conv0",), teacher_features=("conv0",)),
    "nst": method_config("nst", student_features=("conv0",), teacher_features=("conv0",)),
    "fsp": method_config("fsp", student_features=("conv0", "norm0"), teacher_features=("conv0", "norm0")),
    "vid": method_config("vid", student_features=("conv0",), teacher_features=("conv0",)),
    "ab": method_config("ab", student_features=("norm0",), teacher_features=("norm0",)),
    "sp": method_config("sp", student_features=("conv0",), teacher_features=("conv1",)),
    "cc": method_config("cc", student_features=("hidden",), teacher_features=("hidden",)),
    "rkd": method_config("rkd", student_features=("hidden",), teacher_features=("hidden",)),
    "pkt": method_config("pkt", student_features=("hidden",), teacher_features=("hidden",)),
    "crd": method_config("crd", student_features=("hidden",), teacher_features=("hidden",)),
    "reviewkd": method_config("reviewkd", student_features=("conv0",), teacher_features=("conv0",)),
    # FT: its paraphraser is trained first, in stage "paraphraser" (PARAPHRASER below).
    "ft": method_config("ft", student_features=("conv0",), teacher_features=("conv1",)),
}
PARAPHRASER = method_config("ft_paraphraser", teacher_features=("conv1",))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = base_config()
  config.seeds = (0, 1, 2)
  config.data.name = "digits"
  # Every method at its paper's default weights, untuned, scored at its last step: nothing is selected,
  # so the methods train on all of train (no validation split).
  config.data.validation_split = ""
  config.data.batch_size = 64
  optimizer = {"learning_rate": 3e-3, "weight_decay": 1e-4}
  config.stages.teacher = stage_config(TEACHER, method_config("supervised"), num_steps=1500, **optimizer)
  config.stages.baseline = stage_config(STUDENT, method_config("supervised"), num_steps=1500, **optimizer)
  config.stages.paraphraser = stage_config(STUDENT, PARAPHRASER, teacher="teacher", num_steps=500, **optimizer)
  for name, method in METHODS.items():
    config.stages[name] = stage_config(STUDENT, method, teacher="teacher", num_steps=1500, **optimizer)
  config.stage_order = ("teacher", "baseline", "paraphraser") + tuple(METHODS)
  config.report.student = "kd"
  config.report.compare = ("baseline",) + tuple(METHODS)
  config.log_every_steps = 500
  config.checkpoint.every_steps = 1500

  if arg == "smoke":
    config.seeds = (0,)
    for stage in config.stages.values():
      stage.num_steps = 5
    config.log_every_steps = 5
    config.checkpoint.every_steps = 5
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of experiments/methods_digits.py; use :smoke or nothing")
  return config


def sweep(add):
  """The comparison as a sweep (`python -m kd.sweep`): one variant per method, each with its own
  teacher and only its stage, plus Hinton KD at two more temperatures."""
  for name in METHODS:
    stages = ("teacher", "paraphraser", name) if name == "ft" else ("teacher", name)  # FT's own first stage.
    add(name=name, **{"stage_order": stages, "report.compare": ()})
  for temperature in (2.0, 8.0):
    add(name=f"kd_t{temperature:g}", **{"stage_order": ("teacher", "kd"), "report.compare": (),
                                         "stages.kd.method.temperature": temperature})
