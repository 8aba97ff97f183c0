"""Where training reports to: a progress line, `metrics.jsonl`, and TensorBoard event files."""

import json
import os
import time

from absl import logging
import numpy as np
import tensorboardX


class MetricsWriter:
  """Appends scalars to `<dir>/metrics.jsonl` and `<dir>/tensorboard/` (readable by TensorBoard).

  `metrics.jsonl` is the record: a run resumed from a checkpoint keeps exactly the `keep_rows` rows
  that were written when that checkpoint was saved (the checkpoint stores `rows`) and drops whatever an
  interrupted run logged after it (rows of later steps, a final evaluation written after the last
  checkpoint, a line cut short by a kill); a run that starts from scratch keeps none. TensorBoard's
  events are then made to match: earlier event files are purged (TensorBoard drops their events) and
  the kept rows are written again, so both logs of a resumed run equal those of an uninterrupted one.
  Checkpoints written before the row count was stored resume by step instead (`resume_step`).
  """

  def __init__(self, directory: str, keep_rows: int | None = 0, resume_step: int = 0):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "metrics.jsonl")
    rows = _read_rows(path)
    kept = rows[:keep_rows] if keep_rows is not None else [r for r in rows if r.get("step", 0) <= resume_step]
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(row) + "\n" for row in kept)
    os.replace(path + ".tmp", path)
    self._jsonl = open(path, "a")
    self.rows = len(kept)
    board = os.path.join(directory, "tensorboard")
    earlier = os.path.isdir(board) and any(name.startswith("events.") for name in os.listdir(board))
    # purge_step=1 tells TensorBoard to drop the earlier files' events from step 1 on.
    self._tensorboard = tensorboardX.SummaryWriter(board, purge_step=1 if earlier else None)
    for row in kept:
      self._add_to_tensorboard(row["step"], {k: v for k, v in row.items() if k != "step"})

  def _add_to_tensorboard(self, step: int, scalars: dict[str, float]) -> None:
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    self.rows += 1
    self._add_to_tensorboard(step, scalars)
    self._tensorboard.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tensorboard.close()


def _read_rows(path: str) -> list[dict]:
  """The rows of a metrics.jsonl, up to a line cut short by a kill."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return rows


def window_state(window: list[dict]) -> list[dict]:
  """The metrics of the steps since the last log row, as JSON (values and dtypes, exactly)."""
  return [{key: [float(value), str(np.asarray(value).dtype)] for key, value in metrics.items()}
          for metrics in window]


def restore_window(state: list[dict]) -> list[dict]:
  """`window_state`'s inverse: the same numpy scalars, so their mean is bitwise the same."""
  return [{key: np.asarray(value, dtype=dtype) for key, (value, dtype) in metrics.items()} for metrics in state]


class Progress:
  """Formats `[stage] step 300/1500  loss 0.4123  2310 ex/s  ETA 0:00:12`."""

  def __init__(self, name: str, first_step: int, num_steps: int, batch_size: int):
    self.name, self.num_steps, self.batch_size = name, num_steps, batch_size
    self._last_step, self._last_time = first_step, time.perf_counter()

  def line(self, step: int, scalars: dict[str, float]) -> str:
    now = time.perf_counter()
    steps_per_second = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = int((self.num_steps - step) / max(steps_per_second, 1e-9))
    shown = "  ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k.startswith("train/")).replace(
        "train/", "")
    return (f"[{self.name}] step {step}/{self.num_steps}  {shown}  "
            f"{steps_per_second * self.batch_size:.0f} ex/s  ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")

  def log(self, step: int, scalars: dict[str, float]) -> None:
    logging.info(self.line(step, scalars))
