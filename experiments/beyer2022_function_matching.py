r"""Function matching: a patient and consistent teacher (Beyer et al. 2022).

L. Beyer, X. Zhai, A. Royer, L. Markeeva, R. Anil, A. Kolesnikov, "Knowledge distillation: A good
teacher is patient and consistent", CVPR 2022, arXiv:2106.05237.

What it reproduces: the paper's recipe, "function matching". Teacher and student see the *same*
aggressively augmented view (an inception crop, a flip, then mixup with Beta(1, 1) across the
batch: `data.augment.teacher_view="same"`), the student minimises KL(teacher || student) on the
logits alone (no labels) at temperature 1, with Adam, gradient clipping at 1, a linear warmup and a
cosine decay, batch 512, for very long schedules ("patient": thousands of epochs on small datasets).
The optimizer settings per dataset and schedule are those of the authors' released configs
(big_vision `configs/proj/distill/bigsweep_*.py`, `bit_i1k.py`), chosen there on a 10% minival.

    python -m kd.main --config=experiments/beyer2022_function_matching.py:data=flowers102,schedule=fast \
        --workdir=runs/beyer2022_flowers_fast

Variants (`get_config(arg)`, `arg` = comma-separated key=value):
  data=flowers102|pets|food101|sun397|imagenet2012   (default flowers102)
  schedule=fast|medium|long                          (the paper's epoch grid; default fast)
  smoke        two steps of each stage on tiny models, on `tfds.testing.mock_data` or any prepared copy
               of oxford_flowers102 (resized to 32x32);
  offline      the whole recipe, shrunk to run here: digits, 300 steps per stage, about 2 minutes on
               2 CPU cores.
`sweep(add)` lists the paper's runs: every dataset at every schedule (`python -m kd.sweep`).

Differences from the paper, because of what `kd` has: the paper's teacher is BiT-M ResNet-152x2
pre-trained on ImageNet-21k and fine-tuned on the task, its student a BiT ResNet-50 (GroupNorm,
weight standardisation); here the teacher is the experiment's first stage, a torchvision-style
ResNet-34 trained on the labels (with the same augmentation), and the student a ResNet-18. The
images are stored at `data.image_size` (shorter side resized, central crop) and the inception crop
resizes back to that size, where the paper crops 128 (224 on ImageNet) pixels from the full image.
Expected runtime of the real variants: days to weeks of accelerator time (the paper's `long` Flowers
run is 1M epochs: about 25 h on a TPU v3-32); the file is the recipe, `offline` runs it here.
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config
from kd.models import model_config
from kd.models import zoo_model_config

# TFDS name, training split, validation split (carved from train where there is none), test split,
# training examples in that training split (for epochs -> steps).
DATASETS = {
    "flowers102": ("oxford_flowers102", "train", "validation", "test", 1020),
    "pets": ("oxford_iiit_pet", "train[:90%]", "train[90%:]", "test", 3312),
    "food101": ("food101", "train[:90%]", "train[90%:]", "validation", 68175),
    "sun397": ("sun397", "train", "validation", "test", 76128),
    "imagenet2012": ("imagenet2012", "train[:98%]", "train[99%:]", "validation", 1255544),
}

# Epochs per schedule (the released configs' fast / medium / long).
EPOCHS = {
    "flowers102": {"fast": 10_000, "medium": 100_000, "long": 1_000_000},
    "pets": {"fast": 1_000, "medium": 3_000, "long": 30_000},
    "food101": {"fast": 100, "medium": 1_000, "long": 3_000},
    "sun397": {"fast": 100, "medium": 1_000, "long": 3_000},
    "imagenet2012": {"fast": 300, "medium": 1_200, "long": 9_600},
}

# (learning rate, weight decay, temperature) per dataset and schedule, from the released configs;
# ImageNet uses one setting (lr 0.03, wd 3e-4, T=1) at batch 4096.
HYPERPARAMETERS = {
    "flowers102": {"fast": (3e-3, 3e-4, 10.0), "medium": (1e-3, 1e-4, 1.0), "long": (3e-4, 1e-5, 1.0)},
    "pets": {"fast": (1e-2, 1e-3, 5.0), "medium": (3e-3, 3e-4, 10.0), "long": (3e-3, 1e-5, 2.0)},
    "food101": {"fast": (1e-2, 1e-3, 10.0), "medium": (1e-3, 3e-4, 10.0), "long": (1e-2, 1e-4, 5.0)},
    "sun397": {"fast": (1e-2, 1e-3, 10.0), "medium": (1e-3, 1e-4, 10.0), "long": (1e-2, 3e-5, 10.0)},
    "imagenet2012": {schedule: (3e-2, 3e-4, 1.0) for schedule in ("fast", "medium", "long")},
}

# Reported ImageNet top-1 accuracy (%) of the released models (paper, Table 1 / big_vision README):
# the BiT-R152x2 teacher and the function-matching BiT-R50x1 student, by input resolution. The other
# datasets' figures are plotted in the paper, not tabulated in a form stated here.
REPORTED = {
    "imagenet2012": {"teacher_r152x2_224": 83.0, "teacher_r152x2_384": 84.3,
                     "student_r50x1_160": 80.5, "student_r50x1_224": 82.8},
}

TEACHER = zoo_model_config("resnet34")
STUDENT = zoo_model_config("resnet18")
MIXUP_ALPHA = 1.0  # big_vision's `mixup(p=1.0)`: lambda ~ Beta(1, 1), every batch.


def _parse(arg: str | None) -> dict[str, str]:
  options = {"data": "flowers102", "schedule": "fast"}
  if arg in ("smoke", "offline"):
    return {**options, "variant": arg}
  for item in (arg or "").split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in options:
      raise ValueError(f"unknown option {key!r} in {arg!r} of experiments/beyer2022_function_matching.py: "
                       "use data=..., schedule=..., or the variants smoke / offline")
    options[key] = value
  if options["data"] not in DATASETS:
    raise ValueError(f"data={options['data']!r}: choose one of {sorted(DATASETS)}")
  if options["schedule"] not in EPOCHS[options["data"]]:
    raise ValueError(f"schedule={options['schedule']!r}: choose one of fast, medium, long")
  return options


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = _parse(arg)
  dataset, schedule = options["data"], options["schedule"]
  name, train_split, val_split, test_split, num_train = DATASETS[dataset]
  learning_rate, weight_decay, temperature = HYPERPARAMETERS[dataset][schedule]
  batch_size = 4096 if dataset == "imagenet2012" else 512
  warmup = 5000 if dataset == "imagenet2012" else 1500
  num_steps = EPOCHS[dataset][schedule] * num_train // batch_size

  config = base_config()
  config.seeds = (0,)
  config.data.name = name
  config.data.train_split, config.data.validation_split, config.data.test_split = train_split, val_split, test_split
  config.data.batch_size = batch_size
  config.data.image_size = 224 if dataset == "imagenet2012" else 128
  config.data.augment.update(random_resized_crop=True, flip=True, mixup_alpha=MIXUP_ALPHA, teacher_view="same")
  # big_vision's AdamW (big_vision/optax.py): wd * w added after the Adam step, scaled by the schedule
  # only (not by the learning rate), on kernels only (its default wd_mults `.*/kernel$`).
  optimizer = dict(learning_rate=learning_rate, weight_decay=weight_decay, warmup_steps=warmup,
                   grad_clip_norm=1.0, schedule="cosine", weight_decay_mode="decoupled_schedule",
                   weight_decay_mask="kernels")
  config.stages.teacher = stage_config(TEACHER, method_config("supervised"), num_steps=num_steps, **optimizer)
  config.stages.baseline = stage_config(STUDENT, method_config("supervised"), num_steps=num_steps, **optimizer)
  # Function matching: KL on the teacher's outputs alone. kd_weight 1 and no label term; the T^2
  # factor of hinton_kd only rescales the loss, which Adam's update ignores.
  config.stages.student = stage_config(
      STUDENT, method_config("hinton_kd", temperature=temperature, kd_weight=1.0, ce_weight=0.0),
      teacher="teacher", num_steps=num_steps, **optimizer)
  config.stage_order = ("teacher", "baseline", "student")
  config.log_every_steps = 100
  config.eval_every_steps = 2500
  config.checkpoint.every_steps = 2500

  if options.get("variant") == "smoke":
    config.data.image_size = 32
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    tiny = {"name": "cnn", "channels": (8,), "hidden": 16}
    for stage in config.stages.values():
      stage.model = ml_collections.ConfigDict(model_config(**tiny))
      stage.num_steps = 2
      stage.optimizer.warmup_steps = 0
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint.every_steps = 2
  elif options.get("variant") == "offline":
    config.data.name = "digits"
    config.data.train_split, config.data.validation_split, config.data.test_split = "train[:90%]", "train[90%:]", "test"
    config.data.image_size = 0
    config.data.batch_size = 64
    # 8x8 digits: a mild inception crop (at least half the image) keeps the digit recognisable.
    config.data.augment.rrc_scale = (0.5, 1.0)
    config.data.augment.flip = False  # Mirrored digits are other symbols.
    config.stages.teacher.model = ml_collections.ConfigDict(model_config("cnn", channels=(32, 64),
                                                                                 hidden=256))
    for name in ("baseline", "student"):
      config.stages[name].model = ml_collections.ConfigDict(model_config("cnn", channels=(32,), hidden=32))
    for stage in config.stages.values():
      stage.num_steps = 300
      stage.optimizer.update(learning_rate=3e-3, weight_decay=1e-4, warmup_steps=30)
    config.stages.student.method.temperature = 1.0
    config.log_every_steps = 50
    config.eval_every_steps = 0
    config.checkpoint.every_steps = 300
  return config


def sweep(add) -> None:
  """The paper's runs: every dataset at every schedule length."""
  for dataset, schedules in EPOCHS.items():
    for schedule in schedules:
      add(f"data={dataset},schedule={schedule}", name=f"{dataset}_{schedule}")
