"""Where training reports to: a progress line, `metrics.jsonl`, and TensorBoard event files."""

import json
import os
import time

from absl import logging
import tensorboardX


class MetricsWriter:
  """Appends scalars to `<dir>/metrics.jsonl` and `<dir>/tensorboard/` (readable by TensorBoard)."""

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    self._jsonl = open(os.path.join(directory, "metrics.jsonl"), "a")
    self._tensorboard = tensorboardX.SummaryWriter(os.path.join(directory, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tensorboard.close()


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
