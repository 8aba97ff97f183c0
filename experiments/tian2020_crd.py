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
and the method's stage (FT adds `paraphraser` before it, AB and FSP `ab_init` / `fsp_init`), and a
finished stage is skipped, so the
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
weight decay 5e-4, random crop with 4 pixels of padding and horizontal flip, inputs normalised with
CIFAR-100's mean and std; epochs are converted to steps as epochs * 50000 / 64. Loss weights are
RepDistiller's (`-r`, `-a`, `-b` of its scripts): CE + KD: 0.1 CE + 0.9 KD at T = 4; every other
method CE + beta * its loss (FitNet 100, AT 1000, SP 3000, CC 0.02 on RepDistiller's Correlation,
VID 1, RKD 25/50, PKT 30000, AB, FSP 50, NST 50, CRD 0.8, CRD+KD 0.8 + 1.0 KD); the feature taps are
RepDistiller's `feat` lists (REFERENCE_FEATURES: post-ReLU maps, WRN's raw block3 output; `preact`
maps for AB). FT first trains its paraphraser for 30 epochs at a constant rate (stage
`paraphraser`, RepDistiller's init_epochs, at 0.01 for resnet and wrn students as its
helper/pretrain.py), then the FT stage with kd's `ft` (the paper's loss, not RepDistiller's variant,
so its beta differs from the benchmark's 200). AB and FSP train in RepDistiller's two stages: 30
init_epochs of the feature loss alone at the student's constant rate (stage `ab_init` / `fsp_init`:
the AB loss through its connector, or the unweighted FSP loss, no cross-entropy, no decay on the
modules the init optimizer leaves out), then the method's stage trains that student
(`init_from="stage:ab_init"`) on labels only for the 240 epochs (its `-b` multiplies nothing). RECIPE
lists every setting with its source. Departures (the RECIPE rows that say so): AT and AB pair maps of
equal resolution (in the cross-family pairs, a student stage with the teacher's map of its
resolution; RepDistiller pools the larger); AB's init stage trains a WRN student's final BatchNorm,
which RepDistiller leaves at its initial identity. The two ResNet50 pairs of Table 2 are listed in
REPORTED but not run: kd.models has no CIFAR ResNet50.

Runtime (an estimate, not measured here): hours per method and pair on one GPU (187,500 steps each),
so the full table is a GPU job. The smoke variant compiles each stage: about half a minute of CPU
per stage here, or seconds op by op (`jax.disable_jit`, as the tests run it).
"""

import ml_collections

# The CRD benchmark's recipe: 240 epochs of batch 64, SGD 0.05 (0.01 for the light students), decays.
from kd.cifar100_benchmark import BATCH_SIZE
from kd.cifar100_benchmark import benchmark_recipe
from kd.cifar100_benchmark import EPOCHS
from kd.cifar100_benchmark import model_config
from kd.cifar100_benchmark import optimizer
from kd.cifar100_benchmark import parse_arg
from kd.cifar100_benchmark import recipe_row
from kd.cifar100_benchmark import steps
from kd.cifar100_benchmark import use_pretrained_teacher
from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config
from kd.models import vgg

FT_PARAPHRASER_EPOCHS = 30  # RepDistiller's init_epochs, at a constant learning rate.
# AB and FSP train in two stages, as RepDistiller's train_student.py does: an init stage of init_epochs
# on the feature loss alone (helper/pretrain.py), whose student the method's stage then trains on
# labels only (helper/loops.py: loss_kd = 0 for abound and fsp; -a 0, so no KD either).
INIT_EPOCHS = 30
TWO_STAGE = ("ab", "fsp")
# helper/pretrain.py's optimizer holds only the connector and `model_s.get_feat_modules()`: the
# classifier (and MobileNetV2's and ShuffleNetV2's last 1x1 convolution, WRN's final BatchNorm) are
# not in it, so they get no weight decay there. Those modules get no gradient from these losses
# either (but WRN's final BatchNorm, see RECIPE), so without decay they stay as initialised.
INIT_DECAY_MASK = r"^(?!student/(head|last_conv|bn_final)/)"


def init_stage_method(name: str, method: dict) -> dict:
  """The init stage's loss: helper/pretrain.py's `loss = sum(loss_group)`, with no cross-entropy.

  ABLoss already scales each map's loss by / 1000 * 3 (ab_weight 3e-3); FSP's init sums its losses
  unweighted (the -b 50 of the script multiplies nothing in either stage).
  """
  if name == "ab":
    return {**method, "ce_weight": 0.0}
  return {**method, "fsp_weight": 1.0, "ce_weight": 0.0}
# RepDistiller's helper/pretrain.py: the FT ("factor") init stage runs at 0.01 for its resnet and wrn
# students, at the student's own rate (0.05 vgg, 0.01 MobileNetV2 / ShuffleNet) otherwise.
FT_PARAPHRASER_LR_001 = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                         "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")


def paraphraser_learning_rate(student: str) -> float:
  return 0.01 if student in FT_PARAPHRASER_LR_001 else optimizer(student)["learning_rate"]

# Test accuracy (%) reported in Tables 1 and 2, by pair "<teacher>_<student>" and stage name:
# "teacher" and "baseline" are the networks trained alone. FSP is "N/A" for wrn_40_2 -> wrn_40_1
# (channel counts differ) and not reported for the cross-family pairs. Sources: every row but CRD+KD
# is RepDistiller's README.md (the paper's Tables 1 and 2); "crd_kd" (RepDistiller's `-a 1 -b 0.8`,
# the README has no such row) is the paper's "CRD+KD" row of Tables 1 and 2 (arXiv:1910.10699v3; both
# rows are also copied in giakoumoglou/distillers/README.md, beside RepDistiller's other numbers).
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
                          "ft": 61.78, "nst": 58.16, "crd": 69.73, "crd_kd": 69.94},
    "ResNet50_mobile_half": {"teacher": 79.34, "baseline": 64.60, "kd": 67.35, "fitnet": 63.16, "at": 58.58,
                             "sp": 68.08, "cc": 65.43, "vid": 67.57, "rkd": 64.43, "pkt": 66.52, "ab": 67.20,
                             "ft": 60.99, "nst": 64.96, "crd": 69.11, "crd_kd": 69.54},
    "ResNet50_vgg8": {"teacher": 79.34, "baseline": 70.36, "kd": 73.81, "fitnet": 70.69, "at": 71.84,
                      "sp": 73.34, "cc": 70.25, "vid": 70.30, "rkd": 71.50, "pkt": 73.01, "ab": 70.65,
                      "ft": 70.29, "nst": 71.28, "crd": 74.30, "crd_kd": 74.58},
    "resnet32x4_ShuffleV1": {"teacher": 79.42, "baseline": 70.50, "kd": 74.07, "fitnet": 73.59, "at": 71.73,
                             "sp": 73.48, "cc": 71.14, "vid": 73.38, "rkd": 72.28, "pkt": 74.10, "ab": 73.55,
                             "ft": 71.75, "nst": 74.12, "crd": 75.11, "crd_kd": 75.12},
    "resnet32x4_ShuffleV2": {"teacher": 79.42, "baseline": 71.82, "kd": 74.45, "fitnet": 73.54, "at": 72.73,
                             "sp": 74.56, "cc": 71.29, "vid": 73.40, "rkd": 73.21, "pkt": 74.69, "ab": 74.31,
                             "ft": 72.50, "nst": 74.68, "crd": 75.65, "crd_kd": 76.05},
    "wrn_40_2_ShuffleV1": {"teacher": 75.61, "baseline": 70.50, "kd": 74.83, "fitnet": 73.73, "at": 73.32,
                           "sp": 74.52, "cc": 71.38, "vid": 73.61, "rkd": 72.21, "pkt": 73.89, "ab": 73.34,
                           "ft": 72.03, "nst": 74.89, "crd": 76.05, "crd_kd": 76.27},
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
# the stem, then the end of each stage; "pre" are its `preact=True` maps (AB reads them): the
# pre-ReLU stage outputs where the model has them, the BatchNorm of the stage output for the
# pre-activation WRN (models/wrn.py: block2.layer[0].bn1, block3.layer[0].bn1, bn1).
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
    # f3 is block3's raw output (a residual sum); the final BatchNorm and ReLU come after it.
    stages = [(f"block1_{last}", 32), (f"block2_{last}", 16), (f"block3_{last}", 8)]
    return {"feat": [("stem", 32)] + stages,
            "pre": [("block2_0/bn1", 32), ("block3_0/bn1", 16), ("bn_final", 8)]}
  if model.startswith("vgg"):
    # Block b's output is after its ReLU (f0 to f4); its last BatchNorm is the pre-ReLU map.
    last_bn = [len(widths) - 1 for widths in vgg.CONFIGS[int(model[3:])]]
    resolutions = (32, 16, 8, 4, 4)
    stages = [(f"block{b}", r) for b, r in enumerate(resolutions)]
    return {"feat": stages, "pre": [(f"block{b}/bn{last_bn[b]}", resolutions[b]) for b in range(1, 5)]}
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
      # RepDistiller's Correlation (LinearEmbed to 128, then -b 0.02), the loss behind the CC rows.
      "cc": method_config("cc", student_features=pool, teacher_features=pool, variant="repdistiller",
                          cc_weight=0.02),
      "vid": method_config("vid", student_features=_paths(groups_s), teacher_features=_paths(groups_t)),
      "rkd": method_config("rkd", student_features=pool, teacher_features=pool),
      "pkt": method_config("pkt", student_features=pool, teacher_features=pool, pkt_weight=30000.0),
      # RepDistiller's Connector is the identity where a map pair has equal channels and size (the
      # same-width pairs), else ConvReg, at equal resolution a 1x1 convolution and BatchNorm.
      "ab": method_config("ab", student_features=ab_s, teacher_features=ab_t,
                          connector=not _same_family_and_width(teacher, student)),
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
  config.stages.teacher = stage_config(model_config(teacher), method_config("supervised"),
                                       num_steps=num_steps, **optimizer(teacher))
  config.stages.baseline = stage_config(model_config(student), method_config("supervised"),
                                        num_steps=num_steps, **optimizer(student))
  order = ["teacher", "baseline"]
  for name in chosen:
    if name == "ft":  # FT's paraphraser is trained first, in a stage of its own.
      paraphraser = method_config("ft_paraphraser", teacher_features=methods["ft"]["teacher_features"],
                                  rate=methods["ft"]["rate"])
      config.stages.paraphraser = stage_config(
          model_config(student), paraphraser, teacher="teacher", num_steps=steps(FT_PARAPHRASER_EPOCHS),
          **{**optimizer(student), "learning_rate": paraphraser_learning_rate(student), "schedule": "constant",
             "decay_boundaries": ()})
      order.append("paraphraser")
    if name in TWO_STAGE:  # The init stage on the feature loss, then labels only from its student.
      config.stages[f"{name}_init"] = stage_config(
          model_config(student), init_stage_method(name, methods[name]), teacher="teacher",
          num_steps=steps(INIT_EPOCHS), **{**optimizer(student), "schedule": "constant", "decay_boundaries": (),
                                          "weight_decay_mask": INIT_DECAY_MASK})
      config.stages[name] = stage_config(model_config(student), method_config("supervised"),
                                         init_from=f"stage:{name}_init", num_steps=num_steps, **optimizer(student))
      order += [f"{name}_init", name]
      continue
    config.stages[name] = stage_config(model_config(student), methods[name], teacher="teacher",
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


# --- The recipe, row by row, with its source: tests/test_recipes.py checks every sweep point against it.
_REPO = "HobbitLong/RepDistiller"
_TRAIN, _SCRIPT, _LOOPS = f"{_REPO}/train_student.py", f"{_REPO}/scripts/run_cifar_distill.sh", f"{_REPO}/helper/loops.py"
_PRETRAIN, _ZOO = f"{_REPO}/helper/pretrain.py", f"{_REPO}/distiller_zoo"

# RepDistiller's `model(x, is_feat=True)` lists (models/resnet.py, wrn.py, vgg.py, mobilenetv2.py,
# ShuffleNetv1.py, ShuffleNetv2.py), without the pooled embedding, as kd tap points: "feat" (preact=False)
# and "preact" (preact=True, the maps after the stem).
REFERENCE_FEATURES = {
    "resnet20": {"feat": ("stem", "layer1_2", "layer2_2", "layer3_2"),
                 "preact": ("layer1_2/preact", "layer2_2/preact", "layer3_2/preact")},
    "resnet32": {"feat": ("stem", "layer1_4", "layer2_4", "layer3_4"),
                 "preact": ("layer1_4/preact", "layer2_4/preact", "layer3_4/preact")},
    "resnet56": {"feat": ("stem", "layer1_8", "layer2_8", "layer3_8"),
                 "preact": ("layer1_8/preact", "layer2_8/preact", "layer3_8/preact")},
    "resnet110": {"feat": ("stem", "layer1_17", "layer2_17", "layer3_17"),
                  "preact": ("layer1_17/preact", "layer2_17/preact", "layer3_17/preact")},
    "resnet8x4": {"feat": ("stem", "layer1_0", "layer2_0", "layer3_0"),
                  "preact": ("layer1_0/preact", "layer2_0/preact", "layer3_0/preact")},
    "resnet32x4": {"feat": ("stem", "layer1_4", "layer2_4", "layer3_4"),
                   "preact": ("layer1_4/preact", "layer2_4/preact", "layer3_4/preact")},
    # f3 is block3's raw output; preact=True BatchNorms f1, f2, f3 (block2.layer[0].bn1, block3.layer[0].bn1, bn1).
    "wrn_16_2": {"feat": ("stem", "block1_1", "block2_1", "block3_1"),
                 "preact": ("block2_0/bn1", "block3_0/bn1", "bn_final")},
    "wrn_40_1": {"feat": ("stem", "block1_5", "block2_5", "block3_5"),
                 "preact": ("block2_0/bn1", "block3_0/bn1", "bn_final")},
    "wrn_40_2": {"feat": ("stem", "block1_5", "block2_5", "block3_5"),
                 "preact": ("block2_0/bn1", "block3_0/bn1", "bn_final")},
    # f0 to f4 after F.relu; f1_pre to f4_pre are the blocks' last BatchNorms.
    "vgg8": {"feat": ("block0", "block1", "block2", "block3", "block4"),
             "preact": ("block1/bn0", "block2/bn0", "block3/bn0", "block4/bn0")},
    "vgg13": {"feat": ("block0", "block1", "block2", "block3", "block4"),
              "preact": ("block1/bn1", "block2/bn1", "block3/bn1", "block4/bn1")},
    # MobileNetV2's preact=True list is its feat list.
    "mobile_half": {"feat": ("stem", "blocks1_1", "blocks2_2", "blocks4_2", "blocks6_0"),
                    "preact": ("blocks1_1", "blocks2_2", "blocks4_2", "blocks6_0")},
    "ShuffleV1": {"feat": ("stem", "layer1_3", "layer2_7", "layer3_3"),
                  "preact": ("layer1_3/preact", "layer2_7/preact", "layer3_3/preact")},
    "ShuffleV2": {"feat": ("stem", "layer1_3", "layer2_7", "layer3_3"),
                  "preact": ("layer1_3/preact", "layer2_7/preact", "layer3_3/preact")},
}


def _taps(table: str, of: str, start: int, stop: int | None = None) -> dict:
  return {"features": table, "of": of, "from": start, "to": stop}


_POOL = ("pool",)  # feat[-1], the pooled embedding.
_SAME_WIDTH_PAIRS = ("wrn_40_2_wrn_16_2", "resnet56_resnet20", "resnet110_resnet20", "resnet110_resnet32",
                     "resnet32x4_resnet8x4", "vgg13_vgg8")
_AB_CONNECTOR = ("where the widths differ (wrn_40_2 -> wrn_40_1, the cross-family pairs), kd's connector is the AB "
                 "authors' 1x1 convolution without bias, N(0, 2 / C_T), and BatchNorm; RepDistiller's ConvReg at "
                 "equal resolution is a 1x1 convolution with a bias and torch's default init, and BatchNorm")
_CROSS_FAMILY = "kd's at and ab compare maps of equal resolution; RepDistiller pools the larger map (AT.py, AB's ConvReg)"
_INIT_MODULES = ("helper/pretrain.py's optimizer holds the connector and get_feat_modules() only; WRN's final "
                 "BatchNorm (AB's last pre-activation map, preact f3) is not among them, and the student is in eval "
                 "mode but for those modules, so for WRN students that BatchNorm stays at its initial identity "
                 "(running mean 0, variance 1) through the init stage, where kd trains it on the AB loss in train "
                 "mode (a stage trains its whole model); modules outside the list that these losses do not reach "
                 "keep their weights in both (no decay on them here), though kd updates their BatchNorm running "
                 "statistics (MobileNetV2's and ShuffleNetV2's last 1x1 convolution), which the main stage's first "
                 "steps replace")


def _method_rows(stage: str, name: str, rows: list[tuple]) -> list[dict]:
  """recipe_row(setting, "method." + key, value, source, stages=(stage,), **extra) for each
  (setting, key, value, source[, extra])."""
  out = [recipe_row(f"--distill for {stage}", "method.name", name, _TRAIN, stages=(stage,))]
  for entry in rows:
    setting, key, value, source = entry[:4]
    extra = entry[4] if len(entry) > 4 else {}
    out.append(recipe_row(setting, f"method.{key}", value, source, stages=(stage,), **extra))
  return out


def _pair_taps(table: str, start: int, cross_student: dict, cross_teacher: dict) -> list[tuple]:
  departs = {"departs": _CROSS_FAMILY}
  return [(f"{table}[{start}:-1] of the student", "student_features",
           {"*": _taps(table, "student", start), **cross_student}, _LOOPS, {"by": "pair", **departs}),
          (f"{table}[{start}:-1] of the teacher", "teacher_features",
           {"*": _taps(table, "teacher", start), **cross_teacher}, _LOOPS, {"by": "pair", **departs})]


def _init_stage_rows(name: str) -> list[dict]:
  """AB's or FSP's init stage (`<name>_init`) and the method's stage on labels from its student."""
  init = (f"{name}_init",)
  return [
      recipe_row("init_epochs 30", "num_steps", steps(INIT_EPOCHS), _TRAIN, stages=init),
      recipe_row("init(): a constant rate", "optimizer.schedule", "constant", _PRETRAIN, stages=init),
      recipe_row("init(): no decay", "optimizer.decay_boundaries", (), _PRETRAIN, stages=init),
      recipe_row("init(): SGD(init_modules.parameters(), weight_decay): the connector and get_feat_modules()",
                 "optimizer.weight_decay_mask", INIT_DECAY_MASK, _PRETRAIN, stages=init,
                 departs=_INIT_MODULES if name == "ab" else "",
                 reference="WRN's final BatchNorm frozen at its initial identity" if name == "ab" else None),
      recipe_row(f"--distill {'abound' if name == 'ab' else name}: then train() from init()'s student",
                 "init_from", f"stage:{name}_init", _TRAIN, stages=(name,)),
      recipe_row(f"loops.py: loss_kd = 0 for {'abound' if name == 'ab' else name}, -a 0: cross-entropy only",
                 "method.name", "supervised", _LOOPS, stages=(name,)),
  ]


_NO_TOKENS = ("(kd only: no class tokens in a CNN)",)
RECIPE = [
    *benchmark_recipe(train=_TRAIN, data=f"{_REPO}/dataset/cifar100.py", light_rate=_TRAIN),
    recipe_row("report the last epoch (RepDistiller also prints the best test epoch)", "report.headline", "last",
               _TRAIN, stages=None),
    *_method_rows("kd", "hinton_kd", [
        ("--kd_T 4", "temperature", 4.0, _TRAIN), ("-a 0.9", "kd_weight", 0.9, _SCRIPT),
        ("-r 0.1", "ce_weight", 0.1, _SCRIPT)]),
    *_method_rows("fitnet", "fitnets", [
        ("--hint_layer 2: feat[2] of the student", "student_features", _taps("feat", "student", 2, 3), _TRAIN),
        ("--hint_layer 2: feat[2] of the teacher", "teacher_features", _taps("feat", "teacher", 2, 3), _TRAIN),
        ("ConvReg", "regressor", True, f"{_REPO}/models/util.py"), ("-b 100", "hint_weight", 100.0, _SCRIPT),
        ("-r 1", "ce_weight", 1.0, _TRAIN), ("-a 0", "kd_weight", 0.0, _SCRIPT),
        ("--kd_T 4 (unused at -a 0)", "temperature", 4.0, _TRAIN),
        (*_NO_TOKENS, "student_special_tokens", 0, _TRAIN), (*_NO_TOKENS, "teacher_special_tokens", 0, _TRAIN)]),
    *_method_rows("at", "at", [
        *_pair_taps("feat", 1,
                    {"vgg13_mobile_half": ("blocks1_1", "blocks2_2", "blocks4_2"),
                     "resnet32x4_ShuffleV1": ("layer1_3", "layer2_7"), "resnet32x4_ShuffleV2": ("layer1_3", "layer2_7"),
                     "wrn_40_2_ShuffleV1": ("layer1_3", "layer2_7")},
                    {"vgg13_mobile_half": ("block1", "block2", "block3"),
                     "resnet32x4_ShuffleV1": ("layer2_4", "layer3_4"), "resnet32x4_ShuffleV2": ("layer2_4", "layer3_4"),
                     "wrn_40_2_ShuffleV1": ("block2_5", "block3_5")}),
        ("Attention(p=2)", "p", 2.0, f"{_ZOO}/AT.py"), ("-b 1000", "at_weight", 1000.0, _SCRIPT),
        ("-r 1", "ce_weight", 1.0, _TRAIN),
        (*_NO_TOKENS, "student_special_tokens", 0, _TRAIN), (*_NO_TOKENS, "teacher_special_tokens", 0, _TRAIN)]),
    *_method_rows("sp", "sp", [
        ("feat[-2] of the student", "student_features", _taps("feat", "student", -1), _LOOPS),
        ("feat[-2] of the teacher", "teacher_features", _taps("feat", "teacher", -1), _LOOPS),
        ("-b 3000", "sp_weight", 3000.0, _SCRIPT), ("-r 1", "ce_weight", 1.0, _TRAIN)]),
    *_method_rows("cc", "cc", [
        ("feat[-1] of the student", "student_features", _POOL, _LOOPS),
        ("feat[-1] of the teacher", "teacher_features", _POOL, _LOOPS),
        ("Correlation on LinearEmbed projections", "variant", "repdistiller", f"{_ZOO}/CC.py"),
        ("--feat_dim 128 (LinearEmbed)", "embed_dim", 128, _TRAIN), ("-b 0.02", "cc_weight", 0.02, _SCRIPT),
        ("-r 1", "ce_weight", 1.0, _TRAIN),
        ("(unused by variant repdistiller)", "gamma", 0.4, f"{_ZOO}/CC.py"),
        ("(unused by variant repdistiller)", "taylor_order", 2, f"{_ZOO}/CC.py")]),
    *_method_rows("vid", "vid", [
        ("feat[1:-1] of the student", "student_features", _taps("feat", "student", 1), _LOOPS),
        ("feat[1:-1] of the teacher", "teacher_features", _taps("feat", "teacher", 1), _LOOPS),
        ("-b 1", "vid_weight", 1.0, _SCRIPT), ("-r 1", "ce_weight", 1.0, _TRAIN),
        ("VIDLoss init_pred_var=5.0", "init_variance", 5.0, f"{_ZOO}/VID.py"),
        ("VIDLoss eps=1e-5", "variance_epsilon", 1e-5, f"{_ZOO}/VID.py")]),
    *_method_rows("rkd", "rkd", [
        ("feat[-1] of the student", "student_features", _POOL, _LOOPS),
        ("feat[-1] of the teacher", "teacher_features", _POOL, _LOOPS),
        ("RKDLoss w_d=25 (with -b 1)", "distance_weight", 25.0, f"{_ZOO}/RKD.py"),
        ("RKDLoss w_a=50 (with -b 1)", "angle_weight", 50.0, f"{_ZOO}/RKD.py"), ("-r 1", "ce_weight", 1.0, _TRAIN)]),
    *_method_rows("pkt", "pkt", [
        ("feat[-1] of the student", "student_features", _POOL, _LOOPS),
        ("feat[-1] of the teacher", "teacher_features", _POOL, _LOOPS),
        ("-b 30000", "pkt_weight", 30000.0, _SCRIPT), ("-r 1", "ce_weight", 1.0, _TRAIN)]),
    *_method_rows("ab_init", "ab", [
        *_pair_taps("preact", 0,
                    {"vgg13_mobile_half": ("blocks1_1", "blocks2_2", "blocks4_2"),
                     "resnet32x4_ShuffleV1": ("layer1_3/preact", "layer2_7/preact"),
                     "resnet32x4_ShuffleV2": ("layer1_3/preact", "layer2_7/preact"),
                     "wrn_40_2_ShuffleV1": ("layer1_3/preact", "layer2_7/preact")},
                    {"vgg13_mobile_half": ("block1/bn1", "block2/bn1", "block3/bn1"),
                     "resnet32x4_ShuffleV1": ("layer2_4/preact", "layer3_4/preact"),
                     "resnet32x4_ShuffleV2": ("layer2_4/preact", "layer3_4/preact"),
                     "wrn_40_2_ShuffleV1": ("block3_0/bn1", "bn_final")}),
        ("ABLoss margin=1.0", "margin", 1.0, f"{_ZOO}/AB.py"), ("Connector: identity where channels and size agree, else ConvReg", "connector",
         {"*": True, **{pair: False for pair in _SAME_WIDTH_PAIRS}}, f"{_REPO}/models/util.py",
         {"by": "pair", "departs": _AB_CONNECTOR, "reference": "ConvReg: 1x1 conv with bias, torch's default init"}),
        ("ABLoss: loss / 1000 * 3; init(): loss = sum(loss_group)", "ab_weight", 3e-3, f"{_ZOO}/AB.py"),
        ("init(): the AB loss alone, no cross-entropy", "ce_weight", 0.0, _PRETRAIN)]),
    *_init_stage_rows("ab"),
    *_method_rows("nst", "nst", [
        ("feat[1:-1] of the student", "student_features", _taps("feat", "student", 1), _LOOPS),
        ("feat[1:-1] of the teacher", "teacher_features", _taps("feat", "teacher", 1), _LOOPS),
        ("-b 50", "nst_weight", 50.0, _SCRIPT), ("-r 1", "ce_weight", 1.0, _TRAIN),
        (*_NO_TOKENS, "student_special_tokens", 0, _TRAIN), (*_NO_TOKENS, "teacher_special_tokens", 0, _TRAIN)]),
    *[row for stage, kd_weight, script in (("crd", 0.0, "-a 0"), ("crd_kd", 1.0, "-a 1")) for row in _method_rows(
        stage, "crd", [
            ("feat[-1] of the student", "student_features", _POOL, _LOOPS),
            ("feat[-1] of the teacher", "teacher_features", _POOL, _LOOPS),
            ("--feat_dim 128", "feat_dim", 128, _TRAIN), ("--nce_k 16384", "nce_k", 16384, _TRAIN),
            ("--nce_t 0.07", "nce_t", 0.07, _TRAIN), ("--nce_m 0.5", "nce_momentum", 0.5, _TRAIN),
            ("-b 0.8", "crd_weight", 0.8, _SCRIPT), ("-r 1", "ce_weight", 1.0, _TRAIN),
            (script, "kd_weight", kd_weight, _SCRIPT), ("--kd_T 4", "temperature", 4.0, _TRAIN)])],
    # FT: the paraphraser's init stage, then the translator stage.
    recipe_row("init_epochs 30", "num_steps", steps(FT_PARAPHRASER_EPOCHS), _TRAIN, stages=("paraphraser",)),
    recipe_row("init(): a constant rate", "optimizer.schedule", "constant", _PRETRAIN, stages=("paraphraser",)),
    recipe_row("init(): no decay", "optimizer.decay_boundaries", (), _PRETRAIN, stages=("paraphraser",)),
    recipe_row("init(): lr 0.01 for resnet and wrn students with --distill factor, else --learning_rate",
               "optimizer.learning_rate", {"*": 0.05, "mobile_half": 0.01, "ShuffleV1": 0.01, "ShuffleV2": 0.01,
                                           **{name: 0.01 for name in FT_PARAPHRASER_LR_001}},
               _PRETRAIN, stages=("paraphraser",), by="student"),
    *_method_rows("paraphraser", "ft_paraphraser", [
        ("feat[-2] of the teacher", "teacher_features", _taps("feat", "teacher", -1), _TRAIN),
        ("Paraphraser k=0.5", "rate", 0.5, f"{_REPO}/models/util.py"),
        ("nn.MSELoss reconstruction", "reconstruction_weight", 1.0, _TRAIN)]),
    *_method_rows("ft", "ft", [
        ("feat[-2] of the student", "student_features", _taps("feat", "student", -1), _LOOPS),
        ("feat[-2] of the teacher", "teacher_features", _taps("feat", "teacher", -1), _LOOPS),
        ("the paraphraser of the init stage", "paraphraser_stage", "paraphraser", _TRAIN),
        ("Paraphraser / Translator k=0.5", "rate", 0.5, f"{_REPO}/models/util.py"),
        ("-b 200 on FactorTransfer", "beta", 1.0, _SCRIPT,
         {"departs": "kd's ft is the paper's loss (beta * mean ||F_T/|F_T| - F_S/|F_S| ||_p); RepDistiller's "
                     "FactorTransfer compares channel means of squared factors, weighted 200", "reference": 200.0}),
        ("FactorTransfer p1=2, p2=1", "p", 1.0, f"{_ZOO}/FT.py",
         {"departs": "the paper's p = 1 on the normalised factors (see beta)", "reference": "p1=2, p2=1"}),
        ("-r 1", "ce_weight", 1.0, _TRAIN)]),
    *_method_rows("fsp_init", "fsp", [
        ("feat[:-1] of the student", "student_features", _taps("feat", "student", 0), _TRAIN),
        ("feat[:-1] of the teacher", "teacher_features", _taps("feat", "teacher", 0), _TRAIN),
        ("init(): loss = sum(loss_group), unweighted (-b 50 multiplies nothing)", "fsp_weight", 1.0, _PRETRAIN),
        ("init(): the FSP loss alone, no cross-entropy", "ce_weight", 0.0, _PRETRAIN)]),
    *_init_stage_rows("fsp"),
]
