"""Where training reports to: a progress line, `metrics.jsonl`, and TensorBoard event files."""

import json
import os
import time

from absl import logging
import tensorboardX


class MetricsWriter:
  """Appends scalars to `<dir>/metrics.jsonl` and `<dir>/tensorboard/` (readable by TensorBoard).

  A run resumed from a checkpoint at step `resume_step` first drops what an interrupted run logged
  after that step, so the logs of a resumed run equal those of an uninterrupted one.
  """

  def __init__(self, directory: str, resume_step: int = 0):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "metrics.jsonl")
    if resume_step and os.path.exists(path):
      _truncate_after(path, resume_step)
    self._jsonl = open(path, "a")
    self._tensorboard = tensorboardX.SummaryWriter(
        os.path.join(directory, "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tensorboard.close()


def _truncate_after(path: str, step: int) -> None:
  """Keeps the rows of a metrics.jsonl logged at or before `step` (and drops a torn last line)."""
  kept = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        break  # A line cut short by a kill.
      if row.get("step", 0) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


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
