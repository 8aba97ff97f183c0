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
  sample   (default) a fresh draw at `sample_temperature` (0.9, TRL's GKD/seq-KD default) at every
           step, as `lm_seqkd` decodes by default;
  beam     beam search with `beam_size` beams, 5 as in the paper (its approximation of the teacher's
           mode);
  greedy   the most likely byte at each step (a beam of 1).
The paper's finding to compare against: Seq-KD beats Word-KD, and the two combine; a Seq-KD student
decoded greedily comes close to its teacher with beam search. The paper's beam works for translation,
where the source pins the target down; continuing a 16-byte prompt of source code has no such target,
and a small byte-level teacher's mode is a loop (runs of spaces): its greedy and beam continuations are
degenerate, and a student trained on them is far worse than the labels-only baseline. Sampling keeps
the data's diversity, so it is the default here.

Measured (`MEASURED`; this file's defaults: teacher 600 steps, students 300 steps at batch 16; one
teacher and baseline shared by the three runs through `--stage_store`; test split, perplexity per byte;
distinct 8-grams / all 8-grams of the 112 bytes the teacher generates after the first 16 of 256
validation windows, pooled over them, by `benchmarks/decode.py --teacher=<workdir>/seed_0/teacher`;
train seconds of the seq_kd stage with the teacher decoding every batch, 2 CPU cores shared with other
jobs at a load of about 10 during the beam run, so times are loose):

| decoding | seq_kd perplexity | baseline | teacher | distinct 8-grams | seq_kd train s | decode s / batch |
|---|---:|---:|---:|---:|---:|---:|
| the data itself | - | - | - | 72.1% | - | - |
| greedy | 34.32 | 8.49 | 5.30 | 4.6% | 93 | 0.13 |
| sample, T = 0.9 | 8.79 | 8.49 | 5.30 | 74.0% | 139 | 0.17 |
| beam 5 | 30.88 | 8.49 | 5.30 | 2.7% | 1,036 | 3.56 |

So at this scale sequence-level KD from sampled continuations comes near the baseline but does not
beat it (8.79 against 8.49; next-byte accuracy 45.3% against 45.1%), and the mode-seeking decodings
cost a factor of 3.6 (beam) to 4 (greedy) in perplexity. (The word_kd and seq_kd_word_kd students were
not part of this measurement.)

    python -m kd.main --config=experiments/kim2016_seqkd.py --workdir=runs/kim2016_sample \
        --stage_store=runs/stages
    python -m kd.main --config=experiments/kim2016_seqkd.py:decoding=beam --workdir=runs/kim2016_beam \
        --stage_store=runs/stages      # with the same --stage_store, runs share teacher and baseline

The teacher decodes every training batch of the two seq-KD stages (300 steps each, batch 16): the
teacher trains in about 80 s and each student in 25 s (baseline) to 140 s (sampled seq-KD) on 2 lightly
loaded CPU cores, plus 30-90 s of evaluation per stage; a beam of 5 decodes a batch in 1.5-3.6 s, so
each beam seq-KD stage adds 8-18 minutes. `:smoke` runs in seconds.
"""

import ml_collections

from kd.lm import configs
from kd.methods import method_config

DECODINGS = ("greedy", "sample", "beam")
# Measured here with this file's defaults (see the docstring): test perplexity per byte of the seq_kd
# student, of the labels-only baseline and the teacher; distinct 8-gram fraction of the teacher's
# continuations (pooled over 256 validation prompts); train seconds of the seq_kd stage.
MEASURED = {
    "greedy": {"seq_kd_perplexity": 34.32, "distinct_8grams": 0.046, "seq_kd_train_seconds": 93},
    "sample": {"seq_kd_perplexity": 8.79, "distinct_8grams": 0.740, "seq_kd_train_seconds": 139},
    "beam": {"seq_kd_perplexity": 30.88, "distinct_8grams": 0.027, "seq_kd_train_seconds": 1036},
    "baseline_perplexity": 8.49, "teacher_perplexity": 5.30, "data_distinct_8grams": 0.721,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  values = configs.parse_arg(arg, {"decoding": "sample", "beam_size": 5, "sample_temperature": 0.9},
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
