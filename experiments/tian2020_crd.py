r"""The CIFAR-100 benchmark of Contrastive Representation Distillation: every method on its pairs.

Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation", ICLR 2020,
arXiv:1910.10699 (https://arxiv.org/abs/1910.10699); reference code RepDistiller
(https://github.com/HobbitLong/RepDistiller).

Reproduces Table 1 (teacher and student of the same family) and Table 2 (different families): a
student distilled from a teacher with each method of the table, test accuracy on CIFAR-100.

    python -m kd.main --config=experiments/tian2020_crd.py:pair=resnet32x4_resnet8x4,method=crd \
        --workdir=runs/tian2020_crd/resnet32x4_resnet8x4

`get_config("pair=<teacher>_<student>,method=<name>")` (comma-separated key=value) picks one run;
`method=all` runs every method of the table on the pair. Use one workdir per pair: each config has
the stages `teacher` (the teacher trained on labels), `baseline` (the student architecture on labels)
and the method's stage (FT adds `paraphraser` before it), and a finished stage is skipped, so the
teacher and baseline are trained once per pair and every method distils the same teacher.
The paper distils pretrained teachers; here the teacher is the first stage, trained with the same
recipe as RepDistiller's `train_teacher.py`, or RepDistiller's released teacher itself with
`teacher_checkpoint=<file>` (its `.pth`, read without torch and converted; the stage then imports it,
with CIFAR-100 normalisation, see kd.cifar100_benchmark):

    python -m kd.main --config=experiments/tian2020_crd.py:pair=resnet32x4_resnet8x4,method=crd,teacher_checkpoint=/ckpt/resnet32x4_vanilla/ckpt_epoch_240.pth \
        --workdir=runs/tian2020_crd/resnet32x4_resnet8x4_released
 `sweep(add)` lists the table's runs; `smoke` (e.g.
`:smoke` or `:pair=vgg13_vgg8,method=at,smoke=1`) runs each stage for 2 steps of 8 examples, on the
cheapest pair unless `pair=` is given.

Recipe (RepDistiller, both tables): 240 epochs of SGD (momentum 0.9, no Nesterov), batch 64, learning
rate 0.05 (0.01 for MobileNetV2 and ShuffleNet students), multiplied by 0.1 at epochs 150, 180, 210,
weight decay 5e-4, random crop with 4 pixels of padding and horizontal flip; epochs are converted to
steps as epochs * 50000 / 64. Loss weights are RepDistiller's (`-r`, `-a`, `-b` of its scripts):
CE + KD: 0.1 CE + 0.9 KD at T = 4; every other method CE + beta * its loss (FitNet 100, AT 1000,
SP 3000, CC 0.02 (ours: the method's default), VID 1, RKD 25/50, PKT 30000, AB, FSP 50,
NST 50, CRD 0.8, CRD+KD 0.8 + 1.0 KD); the feature taps mirror RepDistiller's `feat` lists (see
`_features`). FT first trains its paraphraser for 30 epochs at a constant rate (stage
`paraphraser`, RepDistiller's init_epochs), then the FT stage with kd's `ft` (the paper's loss, not
RepDistiller's variant, so its beta differs from the benchmark's 200). Departures: inputs are
scaled to [0, 1] without CIFAR mean/std normalisation; AB and FSP run in their one-stage form (no
initialisation stage); AT and AB pair maps of equal resolution (in the cross-family pairs, a student
stage with the teacher's map of its resolution). The two ResNet50 pairs of Table 2 are listed in
REPORTED but not run: kd.models has no CIFAR ResNet50.

Runtime (an estimate, not measured here): hours per method and pair on one GPU (187,500 steps each),
so the full table is a GPU job. The smoke variant compiles each stage: about half a minute of CPU
per stage here, or seconds op by op (`jax.disable_jit`, as the tests run it).
"""

import ml_collections

# The CRD benchmark's recipe: 240 epochs of batch 64, SGD 0.05 (0.01 for the light students), decays.
from kd.cifar100_benchmark import BATCH_SIZE
from kd.cifar100_benchmark import EPOCHS
from kd.cifar100_benchmark import optimizer
from kd.cifar100_benchmark import parse_arg
from kd.cifar100_benchmark import steps
from kd.cifar100_benchmark import use_pretrained_teacher
from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config
from kd.models import zoo_model_config

FT_PARAPHRASER_EPOCHS = 30  # RepDistiller's init_epochs, at a constant learning rate.

# Test accuracy (%) reported in Tables 1 and 2, by pair "<teacher>_<student>" and stage name:
# "teacher" and "baseline" are the networks trained alone. FSP is "N/A" for wrn_40_2 -> wrn_40_1
# (channel counts differ) and not reported for the cross-family pairs.
REPORTED = {
    "wrn_40_2_wrn_16_2": {"teacher": 75.61, "baseline": 73.26, "kd": 74.92, "fitnet": 73.58, "at": 74.08,
                          "sp": 73.83, "cc": 73.56, "vid": 74.11, "rkd": 73.35, "pkt": 74.54, "ab": 72.50,
                          "ft": 73.25, "fsp": 72.91, "nst": 73.68, "crd": 75.48, "crd_kd": 75.64},
    "wrn_40_2_wrn_40_1": {"teacher": 75.61, "baseline": 71.98, "kd": 73.54, "fitnet": 72.24, "at": 72.77,
                          "sp": 72.43, "cc": 72.21, "vid": 73.30, "rkd": 72.22, "pkt": 73.45, "ab": 72.38,
                          "ft": 71.59, "nst": 72.24, "crd": 74.14, "crd_kd": 74.38},
    "resnet56_resnet20": {"teacher": 72.34, "baseline": 69.06, "kd": 70.66, "fitnet": 69.21, "at": 70.55,
                          "sp": 69.67, "cc": 69.63, "vid": 70.38, "rkd": 69.61, "pkt": 70.34, "ab": 69.47,
                          "ft": 69.84, "fsp": 69.95, "nst": 69.60, "crd": 71.16, "crd_kd": 71.63},
    "resnet110_resnet20": {"teacher": 74.31, "baseline": 69.06, "kd": 70.67, "fitnet": 68.99, "at": 70.22,
                           "sp": 70.04, "cc": 69.48, "vid": 70.16, "rkd": 69.25, "pkt": 70.25, "ab": 69.53,
                           "ft": 70.22, "fsp": 70.11, "nst": 69.53, "crd": 71.46, "crd_kd": 71.56},
    "resnet110_resnet32": {"teacher": 74.31, "baseline": 71.14, "kd": 73.08, "fitnet": 71.06, "at": 72.31,
                           "sp": 72.69, "cc": 71.48, "vid": 72.61, "rkd": 71.82, "pkt": 72.61, "ab": 70.98,
                           "ft": 72.37, "fsp": 71.89, "nst": 71.96, "crd": 73.48, "crd_kd": 73.75},
    "resnet32x4_resnet8x4": {"teacher": 79.42, "baseline": 72.50, "kd": 73.33, "fitnet": 73.50, "at": 73.44,
                             "sp": 72.94, "cc": 72.97, "vid": 73.09, "rkd": 71.90, "pkt": 73.64, "ab": 73.17,
                             "ft": 72.86, "fsp": 72.62, "nst": 73.30, "crd": 75.51, "crd_kd": 75.46},
    "vgg13_vgg8": {"teacher": 74.64, "baseline": 70.36, "kd": 72.98, "fitnet": 71.02, "at": 71.43,
                   "sp": 72.68, "cc": 70.71, "vid": 71.23, "rkd": 71.48, "pkt": 72.88, "ab": 70.94,
                   "ft": 70.58, "fsp": 70.23, "nst": 71.53, "crd": 73.94, "crd_kd": 74.29},
    # Table 2.
    "vgg13_mobile_half": {"teacher": 74.64, "baseline": 64.60, "kd": 67.37, "fitnet": 64.14, "at": 59.40,
                          "sp": 66.30, "cc": 64.86, "vid": 65.56, "rkd": 64.52, "pkt": 67.13, "ab": 66.06,
                          "ft": 61.78, "nst": 58.16, "crd": 69.73},
    "ResNet50_mobile_half": {"teacher": 79.34, "baseline": 64.60, "kd": 67.35, "fitnet": 63.16, "at": 58.58,
                             "sp": 68.08, "cc": 65.43, "vid": 67.57, "rkd": 64.43, "pkt": 66.52, "ab": 67.20,
                             "ft": 60.99, "nst": 64.96, "crd": 69.11},
    "ResNet50_vgg8": {"teacher": 79.34, "baseline": 70.36, "kd": 73.81, "fitnet": 70.69, "at": 71.84,
                      "sp": 73.34, "cc": 70.25, "vid": 70.30, "rkd": 71.50, "pkt": 73.01, "ab": 70.65,
                      "ft": 70.29, "nst": 71.28, "crd": 74.30},
    "resnet32x4_ShuffleV1": {"teacher": 79.42, "baseline": 70.50, "kd": 74.07, "fitnet": 73.59, "at": 71.73,
                             "sp": 73.48, "cc": 71.14, "vid": 73.38, "rkd": 72.28, "pkt": 74.10, "ab": 73.55,
                             "ft": 71.75, "nst": 74.12, "crd": 75.11},
    "resnet32x4_ShuffleV2": {"teacher": 79.42, "baseline": 71.82, "kd": 74.45, "fitnet": 73.54, "at": 72.73,
                             "sp": 74.56, "cc": 71.29, "vid": 73.40, "rkd": 73.21, "pkt": 74.69, "ab": 74.31,
                             "ft": 72.50, "nst": 74.68, "crd": 75.65},
    "wrn_40_2_ShuffleV1": {"teacher": 75.61, "baseline": 70.50, "kd": 74.83, "fitnet": 73.73, "at": 73.32,
                           "sp": 74.52, "cc": 71.38, "vid": 73.61, "rkd": 72.21, "pkt": 73.89, "ab": 73.34,
                           "ft": 72.03, "nst": 74.89, "crd": 76.05},
}

# Pairs kd can run: (teacher, student) zoo names.
PAIRS = {
    "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2"),
    "wrn_40_2_wrn_40_1": ("wrn_40_2", "wrn_40_1"),
    "resnet56_resnet20": ("resnet56", "resnet20"),
    "resnet110_resnet20": ("resnet110", "resnet20"),
    "resnet110_resnet32": ("resnet110", "resnet32"),
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4"),
    "vgg13_vgg8": ("vgg13", "vgg8"),
    "vgg13_mobile_half": ("vgg13", "mobile_half"),
    "resnet32x4_ShuffleV1": ("resnet32x4", "ShuffleV1"),
    "resnet32x4_ShuffleV2": ("resnet32x4", "ShuffleV2"),
    "wrn_40_2_ShuffleV1": ("wrn_40_2", "ShuffleV1"),
}
NOT_RUNNABLE = {"ResNet50_mobile_half": "no CIFAR ResNet50 in kd.models",
                "ResNet50_vgg8": "no CIFAR ResNet50 in kd.models"}
DEFAULT_PAIR = "resnet32x4_resnet8x4"
SMOKE_PAIR = "vgg13_vgg8"  # The fastest pair to compile on a CPU.

# RepDistiller's `feat` list of each model (before the pooled embedding), as (tap point, resolution):
# the stem, then the end of each stage; "pre" are the pre-ReLU maps AB reads where the model has them.
_RESNET_BLOCKS = {"resnet20": 3, "resnet32": 5, "resnet56": 9, "resnet110": 18, "resnet8x4": 1,
                  "resnet32x4": 5}
_WRN_BLOCKS = {"wrn_16_1": 2, "wrn_16_2": 2, "wrn_40_1": 6, "wrn_40_2": 6}


def _features(model: str) -> dict[str, list[tuple[str, int]]]:
  if model in _RESNET_BLOCKS:
    last = _RESNET_BLOCKS[model] - 1
    stages = [(f"layer{s}_{last}", 32 // 2 ** (s - 1)) for s in (1, 2, 3)]
    return {"feat": [("stem", 32)] + stages, "pre": [(f"{p}/preact", r) for p, r in stages]}
  if model in _WRN_BLOCKS:
    last = _WRN_BLOCKS[model] - 1
    stages = [(f"block1_{last}", 32), (f"block2_{last}", 16), ("bn_final", 8)]
    return {"feat": [("stem", 32)] + stages, "pre": stages}
  if model.startswith("vgg"):
    stages = [("block0", 32), ("block1", 16), ("block2", 8), ("block3", 4), ("block4", 4)]
    return {"feat": stages, "pre": stages[1:]}
  if model == "mobile_half":
    stages = [("stem", 16), ("blocks1_1", 16), ("blocks2_2", 8), ("blocks4_2", 4), ("blocks6_0", 2)]
    return {"feat": stages, "pre": stages[1:]}
  if model == "ShuffleV1":
    stages = [("layer1_3", 16), ("layer2_7", 8), ("layer3_3", 4)]
    return {"feat": [("stem", 32)] + stages, "pre": [(f"{p}/preact", r) for p, r in stages]}
  if model == "ShuffleV2":
    stages = [("layer1_3", 16), ("layer2_7", 8), ("layer3_3", 4)]
    return {"feat": [("stem", 32)] + stages, "pre": [(f"{p}/preact", r) for p, r in stages]}
  raise ValueError(f"no feature table for {model!r}")


def _paths(taps):
  return tuple(path for path, _ in taps)


def _same_resolution(student_taps, teacher_taps, teacher_all):
  """(student paths, teacher paths) of maps of equal resolution, for AT and AB.

  Stage by stage where the resolutions agree (every same-family pair); otherwise each student map
  is paired with an unused teacher map of its resolution from `teacher_all`, if there is one
  (RepDistiller pools the larger map instead, which these methods do not).
  """
  pairs = {s: t for (s, rs), (t, rt) in zip(student_taps, teacher_taps) if rs == rt}
  for s, rs in student_taps:
    candidates = [t for t, rt in teacher_all if rt == rs and t not in pairs.values()]
    if s not in pairs and candidates:
      pairs[s] = candidates[-1]
  ordered = [s for s, _ in student_taps if s in pairs]
  return tuple(ordered), tuple(pairs[s] for s in ordered)


def table_methods(teacher: str, student: str) -> dict[str, dict]:
  """Stage name -> method config, for every method of the table on this pair (RepDistiller's choices)."""
  s, t = _features(student), _features(teacher)
  groups_s, groups_t = s["feat"][-3:], t["feat"][-3:]  # feat[1:-1] of the resnets, wrn and shufflenets.
  if len(s["feat"]) == 5 and len(t["feat"]) == 5:  # vgg and MobileNetV2 have four stages after the first.
    groups_s, groups_t = s["feat"][1:], t["feat"][1:]
  at_s, at_t = _same_resolution(groups_s, groups_t, t["feat"])
  ab_s, ab_t = _same_resolution(s["pre"][-len(groups_s):], t["pre"][-len(groups_t):], t["pre"])
  last_s, last_t = (s["feat"][-1][0],), (t["feat"][-1][0],)
  pool = ("pool",)
  methods = {
      "kd": method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1),
      "fitnet": method_config("fitnets", student_features=(s["feat"][2][0],),
                              teacher_features=(t["feat"][2][0],), hint_weight=100.0),
      "at": method_config("at", student_features=at_s, teacher_features=at_t, at_weight=1000.0),
      "sp": method_config("sp", student_features=last_s, teacher_features=last_t, sp_weight=3000.0),
      "cc": method_config("cc", student_features=pool, teacher_features=pool),
      "vid": method_config("vid", student_features=_paths(groups_s), teacher_features=_paths(groups_t)),
      "rkd": method_config("rkd", student_features=pool, teacher_features=pool),
      "pkt": method_config("pkt", student_features=pool, teacher_features=pool, pkt_weight=30000.0),
      "ab": method_config("ab", student_features=ab_s, teacher_features=ab_t),
      "nst": method_config("nst", student_features=_paths(groups_s), teacher_features=_paths(groups_t),
                           nst_weight=50.0),
      "crd": method_config("crd", student_features=pool, teacher_features=pool, nce_k=16384,
                           crd_weight=0.8),
      "crd_kd": method_config("crd", student_features=pool, teacher_features=pool, nce_k=16384,
                              crd_weight=0.8, kd_weight=1.0, temperature=4.0),
  }
  # FT: the last map of each, through the paraphraser trained in stage "paraphraser" (FT_PARAPHRASER).
  methods["ft"] = method_config("ft", student_features=last_s, teacher_features=last_t, rate=0.5)
  # FSP needs equal channel counts position by position: same family and width only.
  if _same_family_and_width(teacher, student):
    methods["fsp"] = method_config("fsp", student_features=_paths(s["feat"]),
                                   teacher_features=_paths(t["feat"]), fsp_weight=50.0)
  return methods


def _same_family_and_width(teacher: str, student: str) -> bool:
  if teacher in _RESNET_BLOCKS and student in _RESNET_BLOCKS:
    return teacher.endswith("x4") == student.endswith("x4")
  if teacher in _WRN_BLOCKS and student in _WRN_BLOCKS:
    return teacher[-1] == student[-1]
  return teacher.startswith("vgg") and student.startswith("vgg")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg)
  unknown = set(args) - {"pair", "method", "smoke", "teacher_checkpoint"}
  if unknown:
    raise ValueError(f"unknown keys {sorted(unknown)} in {arg!r}: use pair=, method=, smoke=1, "
                     "teacher_checkpoint=<file>")
  smoke = args.get("smoke", "0") not in ("0", "false", "False", "")
  pair = args.get("pair", SMOKE_PAIR if smoke else DEFAULT_PAIR)
  if pair in NOT_RUNNABLE:
    raise ValueError(f"pair {pair!r} of the paper cannot run here: {NOT_RUNNABLE[pair]}")
  if pair not in PAIRS:
    raise ValueError(f"unknown pair {pair!r}; pairs: {sorted(PAIRS)}")
  teacher, student = PAIRS[pair]
  methods = table_methods(teacher, student)
  method = args.get("method", "crd")
  chosen = list(methods) if method == "all" else [method]
  for name in chosen:
    if name not in methods:
      raise ValueError(f"method {name!r} is not in the table for {pair}; methods: {sorted(methods)} or all")

  config = base_config()
  config.seeds = (0,)
  config.data.name = "cifar100"
  # As the paper's code: train on all of train and report the last epoch; no validation split, so
  # nothing is selected on the test split (its code's "best" epoch was picked there).
  config.data.validation_split = ""
  config.data.batch_size = BATCH_SIZE
  config.data.augment.crop_padding = 4
  config.data.augment.flip = True
  num_steps = steps(EPOCHS)
  config.stages.teacher = stage_config(zoo_model_config(teacher), method_config("supervised"),
                                       num_steps=num_steps, **optimizer(teacher))
  config.stages.baseline = stage_config(zoo_model_config(student), method_config("supervised"),
                                        num_steps=num_steps, **optimizer(student))
  order = ["teacher", "baseline"]
  for name in chosen:
    if name == "ft":  # FT's paraphraser is trained first, in a stage of its own.
      paraphraser = method_config("ft_paraphraser", teacher_features=methods["ft"]["teacher_features"],
                                  rate=methods["ft"]["rate"])
      config.stages.paraphraser = stage_config(
          zoo_model_config(student), paraphraser, teacher="teacher", num_steps=steps(FT_PARAPHRASER_EPOCHS),
          **{**optimizer(student), "schedule": "constant"})
      order.append("paraphraser")
    config.stages[name] = stage_config(zoo_model_config(student), methods[name], teacher="teacher",
                                       num_steps=num_steps, **optimizer(student))
    order.append(name)
  config.stage_order = tuple(order)
  config.report.student = chosen[0]
  config.report.compare = ("baseline",) + tuple(chosen)
  config.log_every_steps = 500
  config.eval_every_steps = steps(10)
  config.checkpoint.every_steps = steps(10)
  if smoke:
    shrink_to_smoke(config)
  if args.get("teacher_checkpoint"):  # RepDistiller's released teacher instead of training one.
    use_pretrained_teacher(config, args["teacher_checkpoint"])
  return config


def shrink_to_smoke(config: ml_collections.ConfigDict) -> None:
  """Two steps of 8 examples per stage, one seed: seconds on a CPU (tests, notebooks)."""
  config.seeds = (0,)
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  for stage in config.stages.values():
    stage.num_steps = 2
  config.log_every_steps = 1
  config.eval_every_steps = 0
  config.checkpoint.every_steps = 2


def sweep(add) -> None:
  """Every run of Tables 1 and 2 that kd can run: one call per (pair, method)."""
  for pair, (teacher, student) in PAIRS.items():
    for method in table_methods(teacher, student):
      if method in REPORTED[pair]:
        add(f"pair={pair},method={method}")
