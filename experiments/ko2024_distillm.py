r"""DistiLLM's skew divergences (Ko et al. 2024) on byte-level LMs of the stdlib sources.

J. Ko, S. Kim, T. Chen, S.-Y. Yun, "DistiLLM: Towards Streamlined Distillation for Large Language
Models", ICML 2024, arXiv:2402.03898. Students trained with the alpha-skew KL (SKL, eq. 3) and
alpha-skew reverse KL (SRKL, eq. 4) at alpha = 0.1, against plain forward and reverse KL, all on a
mix of fixed data and student-generated outputs (probability 0.5 per batch). Departure: DistiLLM
schedules the student-generated fraction adaptively and reuses generations from a replay buffer;
here the fraction is fixed (the GKD mechanism of `lm_gkd`).

    python -m kd.main --config=experiments/ko2024_distillm.py:divergence=skew_reverse_kl \
        --workdir=runs/distillm_srkl

About 12 minutes per run on 2 CPU cores; `:smoke` in seconds. The paper's finding to compare against:
SKL and SRKL train faster and more stably than KL and RKL, SRKL being the best overall.
"""

import ml_collections

from kd.lm import configs
from kd.methods import method_config

DIVERGENCES = ("forward_kl", "reverse_kl", "skew_forward_kl", "skew_reverse_kl")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  values = configs.parse_arg(arg, {"divergence": "skew_reverse_kl", "alpha": 0.1, "lambda": 0.5},
                             "experiments/ko2024_distillm.py")
  method = method_config("lm_gkd", divergence=values["divergence"], alpha=values["alpha"],
                         student_data_fraction=values["lambda"], sample_temperature=1.0)
  return configs.lm_config({"distillm": method}, smoke=values["smoke"])


def sweep(add) -> None:
  for divergence in DIVERGENCES:
    add(f"divergence={divergence}")
