r"""On-policy generalized KD (GKD, Agarwal et al. 2024) on byte-level LMs of the stdlib sources.

R. Agarwal, N. Vieillard, Y. Zhou, P. Stanczyk, S. Ramos, M. Geist, O. Bachem, "On-Policy Distillation
of Language Models: Learning from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649. Its ablation
grid (Figures 4-5): the student-data fraction lambda in {0 (supervised KD), 0.5 (mixed), 1 (on-policy)}
crossed with the divergence in {forward KL, reverse KL, JSD(0.1), JSD(0.5), JSD(0.9)}; prompts are the
first 16 bytes of each window and the student samples at temperature 1. One run per grid point:

    python -m kd.main --config=experiments/agarwal2024_gkd.py:lambda=1.0,divergence=jsd,beta=0.5 \
        --workdir=runs/gkd_l1_jsd05

About 12 minutes per point on 2 CPU cores; `sweep(add)` lists the grid; `:smoke` in seconds. The
paper's finding to compare against: on-policy data (lambda = 1) helps most, and the best divergence
depends on the task, with JSD(0.9) and reverse KL strong for sampling at temperature 1.
"""

import ml_collections

from kd.lm import configs
from kd.methods import method_config

LAMBDAS = (0.0, 0.5, 1.0)
DIVERGENCES = (("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  values = configs.parse_arg(arg, {"lambda": 0.5, "divergence": "jsd", "beta": 0.5},
                             "experiments/agarwal2024_gkd.py")
  method = method_config("lm_gkd", student_data_fraction=values["lambda"], divergence=values["divergence"],
                         beta=values["beta"], prompt_length=16, sample_temperature=1.0)
  return configs.lm_config({"gkd": method}, smoke=values["smoke"])


def sweep(add) -> None:
  """The lambda x divergence grid."""
  for fraction in LAMBDAS:
    for divergence, beta in DIVERGENCES:
      add(f"lambda={fraction},divergence={divergence},beta={beta}")
