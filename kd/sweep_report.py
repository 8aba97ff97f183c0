"""The table of a sweep: accuracy per variant, mean ± std over seeds, next to the paper's numbers.

`python -m kd.report <sweep workdir>` prints it and writes `<workdir>/sweep_report.md` and
`sweep_report.csv`. For each variant of the sweep (`kd.sweep`), over the seeds whose runs are finished:

  last        test accuracy of the variant's result stage at its last step (its `result.json`);
  best        test accuracy at the step of highest *validation* accuracy (kd.selection: the rows of
              `metrics.jsonl` logged every `eval_every_steps`), and the mean step it came at; "-"
              without a validation split (`data.validation_split=""`), as selection there would be
              on the test split;
  reported    the paper's number, from the experiment file's `REPORTED`;
  reported as how the paper defines that number: "last epoch" (the final model's test accuracy) or
              "best epoch" (the highest test accuracy over the epochs), as the file's RECIPE row for
              `report.headline` says (its `reference` where kd departs), or its `REPORTED_AS`;
  difference  headline − reported, in percentage points; the headline is `report.headline` of the
              variant's config ("last" unless the config says "best").

The result stage is the last stage of the variant's `stage_order`.

Convention for experiment files: a module-level dict

    REPORTED = {"<variant name>": 71.2, ...}        # top-1 test accuracy in percent
    REPORTED = {"<variant name>": {"accuracy": 71.2}, ...}   # the same
    REPORTED = {"<variant name>": {"<stage>": 71.2, ...}, ...}   # by the variant's result stage
    REPORTED = {"<pair>": {"<stage>": 71.2, ...}, ...}   # by a value of the variant's argument
    REPORTED = {"<stage>": 71.2, ...}               # by stage, for every variant

keyed by the names the file's `sweep(add)` gives its variants (`add(name=...)`, or the name built
from the overrides; a `--grid` variant falls back to its base variant's key), by a value of the
variant's `key=value` argument (the paper files' `pair=<teacher>_<student>`) or by stage name.
Variants without an entry show "-".
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
           "best_accuracy_std", "best_step", "reported", "difference", "reported_as")
# How a paper's number is defined (report.headline's values): the epoch its test accuracy is read at.
DEFINITIONS = {"last": "last epoch", "best": "best epoch"}


def _mean_std(values: list[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _number(value) -> float | None:
  if isinstance(value, dict):
    value = value.get("accuracy")
  return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def paper_number(reported: dict[str, Any], stage: str, names: tuple[str | None, ...] = (),
                 arg: str | None = None) -> float | None:
  """The paper's accuracy (%) for `stage` of a run, from an experiment file's `REPORTED`.

  Looked up as REPORTED[name] for the first of `names` (the variant, its base) it holds: a number,
  {"accuracy": n} or {stage: n}; else REPORTED[value][stage] for a value of the run's `key=value`
  argument (e.g. its pair); else REPORTED[stage]. None where the paper has no number.
  """
  for name in names:
    if name is not None and name in reported:
      entry = reported[name]
      return _number(entry.get(stage) if isinstance(entry, dict) and "accuracy" not in entry else entry)
  for item in (arg or "").split(","):
    value = item.partition("=")[2].strip()
    if value and isinstance(reported.get(value), dict):
      return _number(reported[value].get(stage))
  return _number(reported.get(stage))


def reported_definition(module) -> str | None:
  """How the paper's REPORTED numbers are defined, "last" or "best" (epoch), None where the file does not say.

  The file's `REPORTED_AS`, else its RECIPE row for `report.headline`: the reference's value where
  kd departs from it, kd's own otherwise.
  """
  if getattr(module, "REPORTED_AS", None) in DEFINITIONS:
    return module.REPORTED_AS
  for row in getattr(module, "RECIPE", ()):
    if row.get("key") == "report.headline" and row.get("stages") is None:
      value = row["reference"] if row.get("departs") and row.get("reference") is not None else row["value"]
      return value if value in DEFINITIONS else None
  return None


def aggregate(workdir: str) -> list[dict[str, Any]]:
  """One row per variant (in the sweep's order) with the columns of `COLUMNS`; accuracies are fractions."""
  manifest, runs = sweep_lib.read_manifest(workdir)
  module = sweep_lib.load_module(manifest["config"])
  reported, definition = getattr(module, "REPORTED", {}), reported_definition(module)
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
    paper = paper_number(reported, stage, (variant, variant_runs[0].base), variant_runs[0].arg)
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
    row["reported_as"] = definition if paper is not None else None
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
           "(last, or * at best validation) − reported; reported as: the epoch the paper reads its number at",
           "", "| variant | stage | seeds | last step | at best validation (step) | reported | reported as | "
           "difference |",
           "|---|---|---|---:|---:|---:|---|---:|"]
  for row in rows:
    count = len(row["seeds"])
    seeds = f"{count}/{row['runs']}" + (f" {row['seeds']}" if count else "")
    best = _percent(row["best_accuracy"], row["best_accuracy_std"], count)
    if row["best_step"] is not None:
      best += f" ({row['best_step']:.0f})"
    if row["headline"] == "best":
      best += " *"
    reported = "-" if row["reported"] is None else f"{row['reported']:.2f}"
    reported_as = DEFINITIONS.get(row.get("reported_as"), "-")
    difference = "-" if row["difference"] is None else f"{row['difference']:+.2f}"
    lines.append(f"| {row['variant']} | {row['stage']} | {seeds} | "
                 f"{_percent(row['last_accuracy'], row['last_accuracy_std'], count)} | {best} | "
                 f"{reported} | {reported_as} | {difference} |")
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
