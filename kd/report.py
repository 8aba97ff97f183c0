"""The report card: what distillation bought, measured on the test split.

For each of teacher, baseline (the student architecture trained on labels only) and the distilled
student: accuracy, parameter count, size in bytes, inference latency at batch 1 and 256, ECE. For the
student against the teacher: retention, compression, speedup, top-1 agreement, KL(teacher || student).
Written to `<workdir>/report.json` and `<workdir>/report.md`.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from kd import checkpoint
from kd import data
from kd import evaluation
from kd import models
from kd import train

ROLES = ("teacher", "baseline", "student")


def _measure_model(loaded: checkpoint.LoadedModel, arrays, mesh, eval_batch_size: int) -> tuple[dict, np.ndarray]:
  logits = evaluation.make_predict(loaded.apply, mesh)(loaded.variables, arrays, eval_batch_size)
  key = loaded.spec.input_key
  example = {key: arrays[key][:1]}
  large = {key: np.resize(arrays[key], (256,) + arrays[key].shape[1:])}
  metrics = {
      "accuracy": evaluation.accuracy(logits, arrays["label"]),
      "params": models.count_params(loaded.variables["params"]),
      "bytes": models.count_bytes(loaded.variables),
      "latency_ms_b1": evaluation.latency_ms(loaded.apply, loaded.variables, example),
      "latency_ms_b256": evaluation.latency_ms(loaded.apply, loaded.variables, large),
      "ece": evaluation.expected_calibration_error(logits, arrays["label"]),
  }
  return metrics, logits


def build(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Measures the exported models of the report's stages on `data.test_split`."""
  arrays = data.load_arrays(config.data.name, config.data.test_split, config.data.data_dir)
  mesh = train.make_mesh(config.mesh)
  report: dict[str, Any] = {"dataset": config.data.name, "split": config.data.test_split,
                            "examples": int(len(arrays["label"])), "seed": config.seed}
  logits = {}
  for role in ROLES:
    stage_name = config.report[role]
    loaded = checkpoint.load_model(os.path.join(workdir, stage_name))
    report[role], logits[role] = _measure_model(loaded, arrays, mesh, config.data.eval_batch_size)
    report[role]["stage"] = stage_name
  teacher, student = report["teacher"], report["student"]
  report.update({
      "retention": student["accuracy"] / teacher["accuracy"],
      "compression": teacher["params"] / student["params"],
      "speedup": teacher["latency_ms_b256"] / student["latency_ms_b256"],
      "speedup_b1": teacher["latency_ms_b1"] / student["latency_ms_b1"],
      "agreement": evaluation.agreement(logits["student"], logits["teacher"]),
      "kl": evaluation.mean_kl(logits["student"], logits["teacher"]),
      "ece": student["ece"],
      "gain_over_baseline": student["accuracy"] - report["baseline"]["accuracy"],
      "device": jax.devices()[0].device_kind,
  })
  return report


def to_markdown(report: dict[str, Any]) -> str:
  """The report card as a Markdown table and a summary line."""
  lines = [
      f"Report card: {report['dataset']} {report['split']} ({report['examples']} examples), "
      f"latency on {report['device']}",
      "",
      "| model | stage | accuracy | params | bytes | latency b1 (ms) | latency b256 (ms) | ECE |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for role in ROLES:
    m = report[role]
    lines.append(f"| {role} | {m['stage']} | {m['accuracy']:.2%} | {m['params']:,} | {m['bytes']:,} | "
                 f"{m['latency_ms_b1']:.3f} | {m['latency_ms_b256']:.3f} | {m['ece']:.4f} |")
  lines += [
      "",
      f"student vs teacher: retention {report['retention']:.2%}, compression {report['compression']:.1f}x, "
      f"speedup {report['speedup']:.1f}x (b256) / {report['speedup_b1']:.1f}x (b1), "
      f"agreement {report['agreement']:.2%}, KL(teacher||student) {report['kl']:.4f} nats, "
      f"ECE {report['ece']:.4f}",
      f"student vs baseline: {report['gain_over_baseline']:+.2%} accuracy",
  ]
  return "\n".join(lines) + "\n"


def write(report: dict[str, Any], workdir: str) -> str:
  """Writes report.json and report.md; returns the Markdown."""
  markdown = to_markdown(report)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(markdown)
  return markdown
