r"""Cross-tokenizer distillation with the Universal Logit Distillation loss, offline on the stdlib corpus.

N. Boizard, K. El Haddad, C. Hudelot, P. Colombo, "Towards Cross-Tokenizer Distillation: the Universal
Logit Distillation Loss for LLMs", arXiv:2402.12030 (2024). ULD compares the two models' next-token
distributions sorted in decreasing order (a Wasserstein-1 distance that needs no shared vocabulary,
Sec. 3), so a student can learn from a teacher with another tokenizer (kd.methods.lm_uld).

Against it, Approximate Likelihood Matching: B. Minixhofer, I. Vulić, E. M. Ponti, "Universal
Cross-Tokenizer Distillation via Approximate Likelihood Matching", arXiv:2503.20083 (2025). ALM
compares the two models' likelihoods of the same pieces of text, chunks whose ends are token boundaries
of both tokenizations, through a binarised f-divergence at temperature tau (Sec. 3; kd.methods.lm_alm,
chunks aligned by kd.data.text_files). A byte-level teacher of a BPE student is the paper's flagship
case: every BPE boundary is a byte boundary, so every BPE token but a window's first is a chunk.

Here the teacher reads bytes and the student a byte-level BPE of 2,048 ids trained on the corpus's
train files (the paper's teachers and students also differ in tokenizer, not only in size):

  bytes run (data stdlib_text: 128-byte windows of the standard library's modules, split by file)
    teacher        4-layer, 128-wide byte-level transformer LM, next-token cross-entropy
    baseline       2-layer, 64-wide byte-level student, labels only
    bytes_kd       the same student, forward KL to the teacher (lm_kd): the same-tokenizer student
  bpe run (data text_files over the same files and split, BPE tokens, teacher_tokenizer=bytes)
    bpe_baseline   the same 2-layer, 64-wide student on BPE tokens, labels only
    bpe_uld        ... with ULD to the byte teacher (lm_uld, uld_weight 1, ce_weight 1, T = 1; the
                   teacher reads its own byte tokenization of each window, teacher_tokens)
    bpe_uld_light  ... uld_weight 0.1 (not in the smoke run)
    bpe_alm        ... with ALM to the byte teacher (lm_alm, the paper's tau = 100, alm_weight 1,
                   ce_weight 1; the aligned chunks come with the data, chunk_ids / teacher_chunk_ids)
    bpe_alm_strong ... alm_weight 100 = tau (not in the smoke run): at tau = 100 the binarised KL is about
                   1/tau times a divergence of the chunks' negative log-likelihoods u (teacher) and v
                   (student), u log(u/v) - u + v, so weight tau brings it to the cross-entropy's scale

Perplexities per token of different tokenizers do not compare: the summary compares bits per byte
(kd's LM report card: the NLL in bits over the UTF-8 bytes of the predicted tokens). The two runs are
two configs (data.name is one per config); the bpe run's teacher is the bytes run's export
(`teacher="export:<root>/bytes/seed_0/teacher"`, checked against the dataset's byte tokenization), and
its report card scores that teacher on its own byte windows of the test text (its "teacher" row,
byte_teacher), with bpe_baseline as the baseline and bpe_alm_strong as the student; the summary table
of both runs is `<root>/report_card.md`.

    python experiments/boizard2024_uld.py --root=runs/boizard2024_uld      # --smoke: about 2 minutes

which trains the BPE (kd.lm.tokenizer.train_stdlib_bpe into <root>/bpe2048), then runs

    python -m kd.main --config=experiments/boizard2024_uld.py:run=bytes,root=<root> --workdir=<root>/bytes
    python -m kd.main --config=experiments/boizard2024_uld.py:run=bpe,root=<root> --workdir=<root>/bpe

Measured here (2 shared CPU cores under load, seed 0, bits per byte on the test split; about 25 minutes
with TEACHER_STEPS / STUDENT_STEPS: the bytes run about 12, the bpe run's five stages and report 14):

    teacher 2.598 (bytes), baseline 3.294 and bytes_kd 3.169 (bytes), bpe_baseline 2.818, bpe_uld 2.927,
    bpe_uld_light 2.819, bpe_alm 2.817, bpe_alm_strong 2.796 (BPE): ULD does not help here (positions
    matched in order cover different text), ALM at the paper's weight changes nothing measurable (its
    term is about 0.004 next to a cross-entropy of 5.4 nats), and at weight tau it gains 0.022 bits per
    byte on the baseline (see the README). With seed 1 for the bpe stages (the same teacher):
    bpe_baseline 2.813, bpe_alm 2.813, bpe_alm_strong 2.788 (a gain of 0.026). ALM's step costs little:
    23-28 s of training against 96 s for ULD's sorts and 17 s for the baseline. The bpe run's report card
    scores the byte teacher on its own windows of the BPE test split at 2.618 bits per byte: retention of
    bpe_alm_strong 93.61% (teacher bits/byte / student bits/byte).
"""

import os
import sys
import sysconfig

import ml_collections

from kd.data import text_files
from kd.lm import configs
from kd.methods import method_config

DEFAULT_ROOT = "runs/boizard2024_uld"
VOCAB_SIZE, SMOKE_VOCAB_SIZE = 2048, 512
# BPE tokens per window: about as much text as stdlib_text's 128-byte windows (about 3.4 bytes per token
# on Python sources); the teacher's bytes of a window are cut at its 128 positions.
BPE_MAX_LENGTH, TEACHER_MAX_LENGTH = 40, 128
TEACHER_STEPS, STUDENT_STEPS = 400, 200
# The smoke run's BPE corpus: six stdlib modules, split by file.
SMOKE_FILES = {"train": ("bisect.py", "colorsys.py", "fnmatch.py", "keyword.py"), "validation": ("glob.py",),
               "test": ("copyreg.py",)}
TEACHER_NAME = "byte_teacher"  # The bpe run's report-card name for the bytes run's exported teacher.
ULD = method_config("lm_uld", uld_weight=1.0, ce_weight=1.0, temperature=1.0)
ULD_LIGHT = method_config("lm_uld", uld_weight=0.1, ce_weight=1.0, temperature=1.0)
ALM = method_config("lm_alm", alm_weight=1.0, ce_weight=1.0, temperature=100.0)
ALM_STRONG = method_config("lm_alm", alm_weight=100.0, ce_weight=1.0, temperature=100.0)


def paths(root: str, smoke: bool = False) -> dict[str, str]:
  """Where each step writes, under `root`."""
  return {"tokenizer": os.path.join(root, f"bpe{SMOKE_VOCAB_SIZE if smoke else VOCAB_SIZE}"),
          "bytes": os.path.join(root, "bytes"), "bpe": os.path.join(root, "bpe"),
          "teacher_export": os.path.join(root, "bytes", "seed_0", "teacher"),
          "report_card": os.path.join(root, "report_card.md")}


def _stdlib() -> str:
  return sysconfig.get_paths()["stdlib"]


def data_name(root: str, smoke: bool = False) -> str:
  """The stdlib sources split 80/10/10 by file name (as stdlib_text), BPE tokens, the teacher's bytes."""
  tokenizer = paths(root, smoke)["tokenizer"]
  teacher = {"teacher_tokenizer": text_files.BYTES, "teacher_max_length": TEACHER_MAX_LENGTH}
  if smoke:
    files = {split: "+".join(os.path.join(_stdlib(), name) for name in names) for split, names in SMOKE_FILES.items()}
    return text_files.dataset_name(tokenizer=tokenizer, max_length=BPE_MAX_LENGTH, **files, **teacher)
  return text_files.dataset_name(files=os.path.join(_stdlib(), "*.py"), split="80/10/10", tokenizer=tokenizer,
                                 max_length=BPE_MAX_LENGTH, **teacher)


def train_tokenizer(root: str, smoke: bool = False) -> str:
  """The BPE, trained once on the corpus's train files (kd.lm.tokenizer)."""
  from kd.lm import tokenizer  # pylint: disable=g-import-not-at-top

  folder = paths(root, smoke)["tokenizer"]
  if not os.path.isfile(os.path.join(folder, tokenizer.TOKENIZER_FILE)):
    if smoke:
      tokenizer.train_bpe([os.path.join(_stdlib(), name) for name in SMOKE_FILES["train"]], folder,
                          vocab_size=SMOKE_VOCAB_SIZE)
    else:
      tokenizer.train_stdlib_bpe(folder, vocab_size=VOCAB_SIZE)
  return folder


def _steps(config: ml_collections.ConfigDict, smoke: bool) -> None:
  if smoke:
    return
  config.stages.teacher.num_steps = TEACHER_STEPS
  for name in config.stages:
    if name != "teacher":
      config.stages[name].num_steps = STUDENT_STEPS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  values = configs.parse_arg(arg, {"run": "bytes", "root": DEFAULT_ROOT}, "experiments/boizard2024_uld.py")
  smoke, root = values["smoke"], values["root"]
  if values["run"] not in ("bytes", "bpe"):
    raise ValueError(f"run={values['run']!r} of experiments/boizard2024_uld.py: choose bytes or bpe")
  config = configs.lm_config({"bytes_kd": method_config("lm_kd", divergence="forward_kl")}, smoke=smoke,
                             teacher_steps=TEACHER_STEPS, student_steps=STUDENT_STEPS)
  _steps(config, smoke)
  if values["run"] == "bytes":
    return config
  # The bpe run: the same student architecture on BPE tokens; its teacher is the bytes run's export,
  # which reads the dataset's byte tokenization of each window (teacher_tokens).
  student = dict(config.stages.baseline.model)
  config.data.name = data_name(root, smoke)
  config.data.validation_split, config.data.test_split = "validation", "test"
  baseline = config.stages.baseline
  uld = config.stages.bytes_kd
  del config.stages["teacher"], config.stages["baseline"], config.stages["bytes_kd"]
  config.stages.bpe_baseline = baseline
  uld.teacher = "export:" + os.path.abspath(paths(root, smoke)["teacher_export"])
  config.stages.bpe_uld = uld
  config.stages.bpe_uld.method = ml_collections.ConfigDict(ULD)
  assert dict(config.stages.bpe_uld.model) == student
  config.stage_order = ("bpe_baseline", "bpe_uld")
  if not smoke:
    config.stages.bpe_uld_light = ml_collections.ConfigDict(uld.to_dict())
    config.stages.bpe_uld_light.method = ml_collections.ConfigDict(ULD_LIGHT)
    config.stage_order += ("bpe_uld_light",)
  # ALM: the same student, steps and teacher; only the loss differs.
  alm_stages = {"bpe_alm": ALM} if smoke else {"bpe_alm": ALM, "bpe_alm_strong": ALM_STRONG}
  for name, method in alm_stages.items():
    config.stages[name] = ml_collections.ConfigDict(uld.to_dict())
    config.stages[name].method = ml_collections.ConfigDict(method)
    config.stage_order += (name,)
  # The report's teacher is no stage of this run: the students' byte teacher, scored on its own byte
  # windows of the test text (kd.lm.report), so its bits per byte compare with the BPE students'.
  config.report.update(teacher=TEACHER_NAME, baseline="bpe_baseline",
                       student="bpe_alm" if smoke else "bpe_alm_strong", compare=config.stage_order)
  return config


def summary(bytes_report: dict, bpe_report: dict) -> str:
  """Bits per byte of every model of both runs (the one figure that compares across tokenizers)."""
  rows = [("teacher", "bytes", "lm_supervised", bytes_report["teacher"]),
          # The same model on the bpe run's test windows (their bytes), from that run's report card.
          (f"teacher ({bpe_report['teacher']['stage']}, bpe run's card)", "bytes", "lm_supervised",
           bpe_report["teacher"])]
  for name, report in (("bytes", bytes_report), ("bpe", bpe_report)):
    for row in report["comparison"]:
      rows.append((row["stage"], name, row["method"], row))
  lines = ["| stage | tokenizer | method | bits/byte | perplexity (per token) | next-token acc. | params |",
           "|---|---|---|---:|---:|---:|---:|"]
  for stage, tokenizer, method, m in rows:
    bits = "-" if m["bits_per_byte"] is None else f"{m['bits_per_byte']:.3f}"
    lines.append(f"| {stage} | {tokenizer} | {method} | {bits} | {m['perplexity']:.3f} | {m['token_accuracy']:.2%} "
                 f"| {m.get('params', 0):,} |")
  return "\n".join(lines) + "\n"


def run_all(root: str = DEFAULT_ROOT, smoke: bool = False) -> str:
  """Every step of the module docstring, in order (a finished stage is not trained again); the summary."""
  from kd import experiment  # pylint: disable=g-import-not-at-top

  where = paths(root, smoke)
  variant = f"root={root}" + (",smoke" if smoke else "")
  train_tokenizer(root, smoke)
  bytes_report = experiment.run(get_config(f"run=bytes,{variant}"), where["bytes"])
  # kd checks that the methods, the dataset's two tokenizations and the exported teacher agree.
  bpe_report = experiment.run(get_config(f"run=bpe,{variant}"), where["bpe"])
  table = summary(bytes_report, bpe_report)
  with open(where["report_card"], "w") as f:
    f.write(table)
  return table


if __name__ == "__main__":
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description="The experiment of experiments/boizard2024_uld.py, end to end.")
  parser.add_argument("--root", default=DEFAULT_ROOT, help="the folder of every step's output")
  parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps")
  parser.add_argument("--data_name", action="store_true", help="print the bpe run's dataset name and exit")
  args = parser.parse_args()
  if args.data_name:
    print(data_name(args.root, args.smoke))
    sys.exit(0)
  print(run_all(args.root, args.smoke))
