r"""Language-model distillation, offline: byte-level LMs on the Python standard library's sources.

Trains on `stdlib_text` (128-byte windows of the standard library's top-level modules, split by file):
  teacher         a 4-layer, 128-wide transformer LM, next-token cross-entropy;
  baseline        a 2-layer, 64-wide student, cross-entropy only (labels only);
  student         the same student, token-level forward KL to the teacher (word-level KD);
  student_jsd     ... generalized JSD(0.5) (Agarwal et al. 2024, supervised, lambda = 0);
  student_seqkd   ... trained on the teacher's continuations of 16-byte prompts, sampled at T = 0.9
                  (lm_seqkd's default; Kim & Rush 2016, experiments/kim2016_seqkd.py compares decodings);
  student_gkd     ... on-policy GKD, lambda = 0.5, JSD(0.5) (Agarwal et al. 2024, arXiv:2306.13649);
then the report card on the test split: perplexity (per byte: each token is a byte) of each,
retention (teacher perplexity / student perplexity), parameter counts, decode tokens/s with the KV
cache at batch 1 and 32, and teacher-student next-token agreement.

    python -m kd.main --config=experiments/lm_stdlib.py --workdir=runs/lm_stdlib

About 25 minutes on 2 shared CPU cores. `:smoke` trains tiny models (teacher, baseline, student)
for a few steps.
"""

import ml_collections

from kd.lm import configs
from kd.methods import method_config

STUDENTS = {
    "student": method_config("lm_kd", divergence="forward_kl"),
    "student_jsd": method_config("lm_kd", divergence="jsd", beta=0.5),
    "student_seqkd": method_config("lm_seqkd"),
    "student_gkd": method_config("lm_gkd", divergence="jsd", beta=0.5, student_data_fraction=0.5),
}
SMOKE_STUDENTS = ("student",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  smoke = configs.parse_arg(arg, {}, "experiments/lm_stdlib.py")["smoke"]
  students = {k: v for k, v in STUDENTS.items() if k in SMOKE_STUDENTS} if smoke else STUDENTS
  return configs.lm_config(students, smoke=smoke)
