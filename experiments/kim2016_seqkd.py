r"""Sequence-level knowledge distillation (Kim & Rush 2016), on byte-level LMs of the stdlib sources.

Y. Kim, A. M. Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv:1606.07947. The paper
distils translation models; here its three student objectives are transposed to a causal LM on
`stdlib_text`, with the first 16 bytes of each window as the "source" and the teacher's continuation
of the other 112 as the sequence-level target:
  baseline         NLL on the data (the paper's "Baseline" student);
  word_kd          token-level forward KL to the teacher on the data ("Word-KD", eq. 3);
  seq_kd           NLL on the teacher's continuations ("Seq-KD", eq. 5-6);
  seq_kd_word_kd   both ("Seq-KD + Word-KD").
How the teacher writes the continuations is the variant `decoding`:
  beam     (default) beam search with `beam_size` beams, 5 as in the paper (its approximation of the
           teacher's mode);
  greedy   the most likely byte at each step (a beam of 1);
  sample   a fresh draw at `sample_temperature` (0.9, TRL's GKD/seq-KD default) at every step.
The paper's finding to compare against: Seq-KD beats Word-KD, and the two combine; a Seq-KD student
decoded greedily comes close to its teacher with beam search. On a small byte-level teacher, greedy
and beam continuations are far more repetitive than sampled ones: with this file's teacher (600
steps), distinct 8-grams of 256 validation continuations were 4.6% greedy, 2.7% beam 5, 74.0% sampled
at T = 0.9, 72.1% in the data (`python benchmarks/decode.py --teacher=<workdir>/seed_0/teacher`).

    python -m kd.main --config=experiments/kim2016_seqkd.py --workdir=runs/kim2016_seqkd
    python -m kd.main --config=experiments/kim2016_seqkd.py:decoding=sample --workdir=runs/kim2016_sample

The teacher decodes every training batch of the two seq-KD stages (300 steps each, batch 16): with
greedy continuations the whole file took about 25 minutes on 2 CPU cores. Decoding one batch took
0.13 s greedy, 0.14-0.41 s sampled and 1.5-2.2 s with a beam of 5 (2 busy CPU cores), so the default
beam adds about 15-20 minutes. `:smoke` runs in seconds.
"""

import ml_collections

from kd.lm import configs
from kd.methods import method_config

DECODINGS = ("greedy", "sample", "beam")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  values = configs.parse_arg(arg, {"decoding": "beam", "beam_size": 5, "sample_temperature": 0.9},
                             "experiments/kim2016_seqkd.py")
  if values["decoding"] not in DECODINGS:
    raise ValueError(f"decoding={values['decoding']!r} of experiments/kim2016_seqkd.py: choose one of {DECODINGS}")
  # Smoke runs keep 2 beams: the beam search compiles once per stage, and its size sets the compile time.
  beam_size = min(values["beam_size"], 2) if values["smoke"] else values["beam_size"]
  decoder = {"prompt_length": 16, "decoding": values["decoding"], "beam_size": beam_size,
             "sample_temperature": values["sample_temperature"]}
  students = {
      "word_kd": method_config("lm_kd", divergence="forward_kl", kd_weight=1.0, ce_weight=0.0),
      "seq_kd": method_config("lm_seqkd", **decoder),
      "seq_kd_word_kd": method_config("lm_seqkd", **decoder, kd_weight=1.0),
  }
  return configs.lm_config(students, smoke=values["smoke"], report_student="seq_kd")


def sweep(add) -> None:
  """The three students under each way of decoding the teacher (the teacher is shared)."""
  for decoding in DECODINGS:
    add(f"decoding={decoding}")
