"""Model selection on the validation split: the step a stage would be stopped at, and its test numbers.

A stage evaluates the validation and the test split every `eval_every_steps` and at its end (rows of
`metrics.jsonl` with `validation/accuracy` and `test/accuracy`). "Best" is the step of highest
validation accuracy (the earliest of equals); its test accuracy is what a model chosen without looking
at the test split scores. Without a validation split there is no selection: only the last step counts.
"""

import json
import os
from typing import Any

METRICS = "metrics.jsonl"
SELECT_ON = "validation/accuracy"
REPORT = "test/accuracy"


def evaluation_rows(stage_dir: str) -> list[dict[str, Any]]:
  """The rows of a stage's metrics.jsonl that hold evaluations, in step order."""
  rows = []
  path = os.path.join(stage_dir, METRICS)
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:  # A line cut short by a kill; the rest still count.
          continue
        if REPORT in row:
          rows.append(row)
  return rows


def best_on_validation(stage_dir: str) -> dict[str, Any] | None:
  """{"step", "validation_accuracy", "test_accuracy"} at the best validation step, or None when the stage
  logged no validation evaluation."""
  rows = [row for row in evaluation_rows(stage_dir) if SELECT_ON in row]
  if not rows:
    return None
  best = max(rows, key=lambda row: (row[SELECT_ON], -row["step"]))
  return {"step": int(best["step"]), "validation_accuracy": float(best[SELECT_ON]),
          "test_accuracy": float(best[REPORT])}
