"""The report card of a language-model experiment (`kd.report` hands token datasets over to it).

For teacher, baseline and the distilled student, on `data.test_split`: perplexity (per token), bits
per token, bits per byte (the same NLL over the UTF-8 bytes the target tokens stand for: equal to bits
per token on byte-level `stdlib_text`; from the tokenizer on `text_files` data; absent where the
dataset's bytes are unknown), next-token accuracy, parameter count, size in bytes, and decode tokens/s
with the KV cache at batch 1 and 32 (greedy, 16-token prompt, 112 new tokens, one device). For the student against the
teacher: retention (teacher perplexity / student perplexity, 1 = as good as the teacher), compression,
decode speedup, next-token agreement (same argmax) and KL(teacher || student) per token. Each stage in
`report.compare` gets a row of perplexity, next-token accuracy, retention and agreement with the teacher;
a stage of it that has not finished (a run of some `--stages` only) is listed as such, not measured.

A teacher with another tokenizer (an external teacher on a dataset with text_files' teacher_tokenizer)
is scored on its own tokens of the same text (`teacher_tokens`, with its tokenizer's bytes per id):
retention is then teacher bits per byte / student bits per byte, and agreement and KL, which compare
the two models id by id, are left out.
"""

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from kd import checkpoint
from kd import data
from kd import models
from kd import train
from kd.lm import evaluation as lm_evaluation

ROLES = ("teacher", "baseline", "student")
DECODE_BATCH_SIZES = (1, 32)


def _measure(loaded: checkpoint.LoadedModel, arrays, mesh, batch_size: int, reference, bytes_per_id) -> dict[str, Any]:
  evaluate = lm_evaluation.make_evaluate(loaded.apply, mesh, bytes_per_id=bytes_per_id)
  metrics = evaluate(loaded.variables, arrays, batch_size, reference)
  return {"perplexity": metrics["eval/perplexity"], "bits_per_token": metrics["eval/bits_per_token"],
          "bits_per_byte": metrics.get("eval/bits_per_byte"),
          "token_accuracy": metrics["eval/accuracy"], "agreement": metrics.get("agreement"),
          "params": models.count_params(loaded.variables["params"]),
          "bytes": models.count_bytes(loaded.variables)}


def build(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Measures the report's stages of the first seed's run (one seed: LM runs are long).

  The teacher's next-token predictions are computed once and each stage's agreement with them in
  the same pass as its perplexity; KL(teacher || student) needs both models' logits, and is computed
  for the report's student only.
  """
  arrays = data.load_arrays(config.data.name, config.data.test_split, config.data.data_dir)
  num_classes = data.load_spec(config.data.name, config.data.data_dir).num_classes
  bytes_per_id = lm_evaluation.bytes_per_id(config.data.name, num_classes)
  mesh = train.make_mesh(config.mesh)
  seed = config.seeds[0]
  run_dir = train.seed_dir(workdir, seed)
  batch_size = config.data.eval_batch_size
  from kd import report as report_lib  # pylint: disable=g-import-not-at-top  # It imports this module.

  # A stage's export, or (when the report's teacher is no stage) the student's teacher_checkpoint.
  teacher_model = report_lib.role_model(config, "teacher", run_dir)
  # An external teacher with its own tokenizer (the stages of a config all read the student's) is scored
  # on its own tokens: then only bits per byte compare, and agreement and KL have no meaning.
  own_tokens = None if config.report.teacher in config.stages else lm_evaluation.teacher_tokenization(
      config.data.name, arrays, teacher_model.spec.num_classes)
  reference = None if own_tokens else lm_evaluation.predictions(
      teacher_model.apply, teacher_model.variables, arrays, batch_size, mesh)
  measured = {}
  compare = [name for name in config.report.compare if train.is_finished(os.path.join(run_dir, name))]
  not_finished = [name for name in config.report.compare if name not in compare]
  kl = None
  for stage_name in dict.fromkeys([config.report[role] for role in ROLES] + compare):
    loaded = (checkpoint.load_model(os.path.join(run_dir, stage_name)) if stage_name in config.stages
              else teacher_model)
    stage_arrays, stage_bytes = own_tokens if own_tokens and loaded is teacher_model else (arrays, bytes_per_id)
    measured[stage_name] = _measure(loaded, stage_arrays, mesh, batch_size, reference, stage_bytes)
    if stage_name in [config.report[role] for role in ROLES]:
      for decode_batch in DECODE_BATCH_SIZES:
        measured[stage_name][f"decode_tokens_per_s_b{decode_batch}"] = lm_evaluation.decode_tokens_per_second(
            loaded.module, loaded.variables, batch_size=decode_batch)
    if stage_name == config.report.student and not own_tokens:
      kl = lm_evaluation.mean_kl(loaded.apply, loaded.variables, teacher_model.apply, teacher_model.variables,
                                 arrays, batch_size, mesh)

  report: dict[str, Any] = {"kind": "language_model"}
  for role in ROLES:
    report[role] = {"stage": config.report[role], **measured[config.report[role]]}
  teacher, student, baseline = report["teacher"], report["student"], report["baseline"]
  # Perplexities per token of two tokenizers do not compare; bits per byte do.
  retention_basis = "bits_per_byte" if own_tokens else "perplexity"

  def retention(m):
    return None if m[retention_basis] is None else teacher[retention_basis] / m[retention_basis]

  report.update({
      "retention": retention(student), "retention_basis": retention_basis,
      "teacher_tokenization": bool(own_tokens),
      "compression": teacher["params"] / student["params"],
      "decode_speedup_b1": student["decode_tokens_per_s_b1"] / teacher["decode_tokens_per_s_b1"],
      "decode_speedup_b32": student["decode_tokens_per_s_b32"] / teacher["decode_tokens_per_s_b32"],
      "agreement": student["agreement"],
      "kl": kl,
      "perplexity_gain_over_baseline": baseline["perplexity"] - student["perplexity"],
  })
  rows = []
  for stage_name in compare:
    m = measured[stage_name]
    rows.append({"stage": stage_name, "method": config.stages[stage_name].method.name,
                 "divergence": config.stages[stage_name].method.get("divergence", "")
                               if config.stages[stage_name].method.name != "lm_supervised" else "",
                 "perplexity": m["perplexity"], "bits_per_token": m["bits_per_token"],
                 "bits_per_byte": m["bits_per_byte"],
                 "token_accuracy": m["token_accuracy"], "retention": retention(m),
                 "agreement": m["agreement"], "params": m["params"]})
  report.update({"comparison": rows, "seeds": [seed], "dataset": config.data.name,
                 "split": config.data.test_split,
                 "tokens": int(np.sum(arrays["mask"][:, 1:])), "examples": int(len(arrays["tokens"])),
                 "bytes_known": bytes_per_id is not None, "not_finished": not_finished,
                 "device": jax.devices()[0].device_kind})
  return report


def _bits_per_byte(value) -> str:
  return "-" if value is None else f"{value:.3f}"


def _percent(value) -> str:
  return "-" if value is None else f"{value:.2%}"


def to_markdown(report: dict[str, Any]) -> str:
  lines = [
      f"Report card: {report['dataset']} {report['split']} ({report['examples']} windows, "
      f"{report['tokens']:,} predicted tokens), seed {report['seeds'][0]}; decoding on {report['device']}",
      "",
      "| model | stage | perplexity (per token) | bits/token | bits/byte | next-token acc. | params | decode tok/s b1 "
      "| decode tok/s b32 |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for role in ROLES:
    m = report[role]
    lines.append(f"| {role} | {m['stage']} | {m['perplexity']:.3f} | {m['bits_per_token']:.3f} | "
                 f"{_bits_per_byte(m['bits_per_byte'])} | {m['token_accuracy']:.2%} | {m['params']:,} | "
                 f"{m['decode_tokens_per_s_b1']:,.0f} | {m['decode_tokens_per_s_b32']:,.0f} |")
  basis = {"perplexity": "perplexity", "bits_per_byte": "bits/byte"}[report.get("retention_basis", "perplexity")]
  same_tokens = (f", next-token agreement {report['agreement']:.2%}, KL(teacher||student) {report['kl']:.4f} "
                 "nats/token" if report["kl"] is not None else "")
  lines += [
      "",
      f"student vs teacher: retention {_percent(report['retention'])} (teacher {basis} / student {basis}), "
      f"compression {report['compression']:.1f}x, decode speedup {report['decode_speedup_b1']:.2f}x (b1) / "
      f"{report['decode_speedup_b32']:.2f}x (b32){same_tokens}",
      f"student vs baseline: perplexity {report['perplexity_gain_over_baseline']:+.3f} lower",
  ]
  if report.get("teacher_tokenization"):
    lines.append("the teacher has its own tokenizer: it is scored on its own tokens of the same text, so its "
                 "perplexity per token does not compare with the students'; bits/byte do")
  if report.get("not_finished"):
    lines.append(f"not finished, so not compared: {', '.join(report['not_finished'])}")
  if not report.get("bytes_known", True):
    lines.append("bits/byte: the dataset does not say how many bytes its tokens stand for")
  if report["comparison"]:
    lines += ["", "| stage | method | divergence | perplexity | bits/token | bits/byte | next-token acc. | retention "
              "| agreement |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["comparison"]:
      lines.append(f"| {row['stage']} | {row['method']} | {row['divergence']} | {row['perplexity']:.3f} | "
                   f"{row['bits_per_token']:.3f} | {_bits_per_byte(row['bits_per_byte'])} | "
                   f"{row['token_accuracy']:.2%} | {_percent(row['retention'])} | {_percent(row['agreement'])} |")
  return "\n".join(lines) + "\n"
