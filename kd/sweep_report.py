"""The table of a sweep: accuracy per variant, mean ± std over seeds, next to the paper's numbers.

`python -m kd.report <sweep workdir>` prints it and writes `<workdir>/sweep_report.md` and
`sweep_report.csv`. For each variant of the sweep (`kd.sweep`), over the seeds whose runs are finished:

  last        test accuracy of the variant's result stage at its last step (its `result.json`);
  best        test accuracy at the step of highest *validation* accuracy (kd.selection: the rows of
              `metrics.jsonl` logged every `eval_every_steps`), and the mean step it came at; "-"
              without a validation split (`data.validation_split=""`), as selection there would be
              on the test split;
  reported    the paper's number, from the experiment file's `REPORTED`;
  difference  headline − reported, in percentage points; the headline is `report.headline` of the
              variant's config ("last" unless the config says "best").

The result stage is the last stage of the variant's `stage_order`.

Convention for experiment files: a module-level dict

    REPORTED = {"<variant name>": 71.2, ...}        # top-1 test accuracy in percent
    REPORTED = {"<variant name>": {"accuracy": 71.2}, ...}   # the same

keyed by the names the file's `sweep(add)` gives its variants (`add(name=...)`, or the name built
from the overrides; a `--grid` variant falls back to its base variant's key). Variants without an
entry show "-".
"""

import csv
import io
import json
import math
import os
from typing import Any

import numpy as np

from kd import selection
from kd import sweep as sweep_lib

MARKDOWN = "sweep_report.md"
CSV = "sweep_report.csv"
COLUMNS = ("variant", "stage", "seeds", "last_accuracy", "last_accuracy_std", "best_accuracy",
           "best_accuracy_std", "best_step", "reported", "difference")


def _mean_std(values: list[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def reported_numbers(config_path: str) -> dict[str, float]:
  """The experiment file's REPORTED, as {variant: accuracy in percent}."""
  module = sweep_lib.load_module(config_path)
  reported = {}
  for key, value in getattr(module, "REPORTED", {}).items():
    reported[key] = float(value["accuracy"] if isinstance(value, dict) else value)
  return reported


def aggregate(workdir: str) -> list[dict[str, Any]]:
  """One row per variant (in the sweep's order) with the columns of `COLUMNS`; accuracies are fractions."""
  manifest, runs = sweep_lib.read_manifest(workdir)
  reported = reported_numbers(manifest["config"])
  variants: dict[str, list[sweep_lib.Run]] = {}
  for run in runs:
    variants.setdefault(run.variant, []).append(run)
  rows = []
  for variant, variant_runs in variants.items():
    stage = variant_runs[0].stages[-1]
    last, best, best_steps, seeds, headlines = [], [], [], [], set()
    for run in variant_runs:
      stage_dir = os.path.join(run.run_dir(workdir), stage)
      if not run.is_finished(workdir):
        continue
      with open(os.path.join(stage_dir, "result.json")) as f:
        last.append(json.load(f)[selection.REPORT])
      selected = selection.best_on_validation(stage_dir)
      if selected is not None:
        best.append(selected["test_accuracy"])
        best_steps.append(selected["step"])
      headlines.add(_headline(stage_dir))
      seeds.append(run.seed)
    paper = reported.get(variant, reported.get(variant_runs[0].base))
    row = {"variant": variant, "stage": stage, "seeds": seeds, "runs": len(variant_runs)}
    row.update({key: None for key in COLUMNS[3:8]})
    if seeds:
      row["last_accuracy"], row["last_accuracy_std"] = _mean_std(last)
    if best and len(best) == len(seeds):
      row["best_accuracy"], row["best_accuracy_std"] = _mean_std(best)
      row["best_step"] = float(np.mean(best_steps))
    row["headline"] = "best" if headlines == {"best"} else "last"
    headline = row[f"{row['headline']}_accuracy"]
    row["reported"] = paper
    row["difference"] = 100 * headline - paper if paper is not None and headline is not None else None
    rows.append(row)
  return rows


def _headline(stage_dir: str) -> str:
  """`report.headline` of the config a stage ran with (provenance.json), "last" if it does not say."""
  try:
    with open(os.path.join(stage_dir, "provenance.json")) as f:
      return json.load(f)["config"]["report"].get("headline", "last")
  except (OSError, KeyError, ValueError):
    return "last"


def _percent(mean: float | None, std: float | None, count: int) -> str:
  if mean is None:
    return "-"
  return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if count > 1 else "")


def to_markdown(rows: list[dict[str, Any]], workdir: str) -> str:
  lines = [f"Sweep {workdir}: test accuracy (%) of each variant's last stage, mean ± std over finished seeds; "
           "'at best validation': at the step of highest validation accuracy; difference: the headline "
           "(last, or * at best validation) − reported",
           "", "| variant | stage | seeds | last step | at best validation (step) | reported | difference |",
           "|---|---|---|---:|---:|---:|---:|"]
  for row in rows:
    count = len(row["seeds"])
    seeds = f"{count}/{row['runs']}" + (f" {row['seeds']}" if count else "")
    best = _percent(row["best_accuracy"], row["best_accuracy_std"], count)
    if row["best_step"] is not None:
      best += f" ({row['best_step']:.0f})"
    if row["headline"] == "best":
      best += " *"
    reported = "-" if row["reported"] is None else f"{row['reported']:.2f}"
    difference = "-" if row["difference"] is None else f"{row['difference']:+.2f}"
    lines.append(f"| {row['variant']} | {row['stage']} | {seeds} | "
                 f"{_percent(row['last_accuracy'], row['last_accuracy_std'], count)} | {best} | "
                 f"{reported} | {difference} |")
  return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
  """Accuracies in percent; seeds joined by spaces; empty cells for what is missing."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(COLUMNS)
  for row in rows:
    cells = []
    for column in COLUMNS:
      value = row[column]
      if column == "seeds":
        value = " ".join(str(s) for s in value)
      elif value is not None and column in ("last_accuracy", "last_accuracy_std", "best_accuracy",
                                            "best_accuracy_std"):
        value = round(100 * value, 4)
      elif isinstance(value, float) and not math.isnan(value):
        value = round(value, 4)
      cells.append("" if value is None else value)
    writer.writerow(cells)
  return out.getvalue()


def write(workdir: str) -> str:
  """Aggregates the sweep in `workdir`, writes the Markdown and CSV files, returns the Markdown."""
  rows = aggregate(workdir)
  markdown = to_markdown(rows, workdir)
  with open(os.path.join(workdir, MARKDOWN), "w") as f:
    f.write(markdown)
  with open(os.path.join(workdir, CSV), "w") as f:
    f.write(to_csv(rows))
  return markdown
