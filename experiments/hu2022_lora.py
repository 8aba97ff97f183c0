r"""LoRA students: a trained small model adapted to its teacher through low-rank updates only, on digits.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022, arXiv:2106.09685): freeze a
trained model's weights W and train W + (alpha / r) A B (Eq. 3; A Gaussian, B = 0 at the start, so the
model starts as it was), a small fraction of its parameters. Here the quickstart's student architecture,
trained on labels (baseline), is then distilled from the quickstart's teacher (Hinton KD, T = 4) in two
ways, each starting from the baseline's weights (`init_from="stage:baseline"`):
  lora_kd   LoRA of rank 4 on every kernel (kd.models.lora; the base frozen through optax's masking),
            exported merged into the base's architecture;
  full_kd   every parameter trained.

    python -m kd.main --config=experiments/hu2022_lora.py --workdir=runs/hu2022_lora

`:smoke` runs a few steps; `--config.stages.lora_kd.model.rank=8` sets another rank. The paper's own
numbers are GLUE and GPT-3 results of large language models; this file does not restate them.
"""

import ml_collections

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config
from kd.models import model_config

TEACHER = {"name": "cnn", "channels": (32, 64), "hidden": 256}
STUDENT = {"name": "cnn", "channels": (32,), "hidden": 32}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = base_config()
  config.seeds = (0, 1, 2)
  config.data.name = "digits"
  config.data.batch_size = 64
  optimizer = {"learning_rate": 3e-3, "weight_decay": 1e-4}
  kd = method_config("hinton_kd", temperature=4.0, kd_weight=0.9, ce_weight=0.1)
  config.stages.teacher = stage_config(TEACHER, method_config("supervised"), num_steps=1500, **optimizer)
  config.stages.baseline = stage_config(STUDENT, method_config("supervised"), num_steps=1500, **optimizer)
  lora = model_config("lora", base=model_config(**STUDENT), rank=4, alpha=8.0, targets="kernels")
  # LoRA's factors start at B = 0 and learn at a higher rate than full fine-tuning (the paper's Sec. 5-6
  # tune it per task); no weight decay on the factors.
  config.stages.lora_kd = stage_config(lora, kd, teacher="teacher", init_from="stage:baseline", num_steps=1000,
                                       learning_rate=1e-2, weight_decay=0.0)
  config.stages.full_kd = stage_config(STUDENT, kd, teacher="teacher", init_from="stage:baseline", num_steps=1000,
                                       **optimizer)
  config.stage_order = ("teacher", "baseline", "lora_kd", "full_kd")
  config.report.student = "lora_kd"
  config.report.compare = ("baseline", "lora_kd", "full_kd")
  config.log_every_steps = 250
  config.eval_every_steps = 500
  config.checkpoint.every_steps = 500
  if arg == "smoke":
    config.seeds = (0,)
    config.data.batch_size = 16
    for stage in config.stages.values():
      stage.num_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 2
    config.checkpoint.every_steps = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of experiments/hu2022_lora.py; use :smoke or nothing")
  return config
