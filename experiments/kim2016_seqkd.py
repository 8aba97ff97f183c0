r"""Sequence-level knowledge distillation (Kim & Rush 2016), on byte-level LMs of the stdlib sources.

Y. Kim, A. M. Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv:1606.07947. The paper
distils translation models; here its three student objectives are transposed to a causal LM on
`stdlib_text`, with the first 16 bytes of each window as the "source" and the teacher's greedy
continuation (beam 1; the paper uses beam 5) as the sequence-level target:
  baseline         NLL on the data (the paper's "Baseline" student);
  word_kd          token-level forward KL to the teacher on the data ("Word-KD", eq. 3);
  seq_kd           NLL on the teacher's continuations ("Seq-KD", eq. 5-6);
  seq_kd_word_kd   both ("Seq-KD + Word-KD").
The paper's finding to compare against: Seq-KD beats Word-KD, and the two combine; a Seq-KD student
decoded greedily comes close to its teacher with beam search.

    python -m kd.main --config=experiments/kim2016_seqkd.py --workdir=runs/kim2016_seqkd

About 25 minutes on 2 CPU cores (the teacher decodes every training batch); `:smoke` in seconds.
"""

import ml_collections

from kd.lm import configs
from kd.methods import method_config

STUDENTS = {
    "word_kd": method_config("lm_kd", divergence="forward_kl", kd_weight=1.0, ce_weight=0.0),
    "seq_kd": method_config("lm_seqkd", prompt_length=16, sample_temperature=0.0),
    "seq_kd_word_kd": method_config("lm_seqkd", prompt_length=16, sample_temperature=0.0, kd_weight=1.0),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  smoke = configs.parse_arg(arg, {}, "experiments/kim2016_seqkd.py")["smoke"]
  return configs.lm_config(STUDENTS, smoke=smoke, report_student="seq_kd")
