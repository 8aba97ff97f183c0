"""One writer per stage: a second run on a stage being trained stops at once (or waits), and the lock
never outlives its run."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO
from kd import experiment
from kd import locks
from kd import train
from kd.errors import Interrupted
from kd.errors import TrainingError
from kd.errors import WorkdirError

STAGE_FLAGS = ["--config=experiments/quickstart.py:smoke", "--stages=teacher", "--config.eval_every_steps=0"]
STEP_LINE = re.compile(r"\[teacher\] step (\d+)/")


def _teacher_dir(workdir) -> str:
  return os.path.join(str(workdir), "seed_0", "teacher")


def _lock_path(workdir) -> str:
  return os.path.join(_teacher_dir(workdir), locks.LOCK_FILE)


def _write_lock(workdir, pid: int) -> None:
  os.makedirs(_teacher_dir(workdir), exist_ok=True)
  with open(_lock_path(workdir), "w") as f:
    json.dump({"pid": pid, "host": socket.gethostname(), "since": time.time()}, f)


def _config(num_steps=20):
  config = experiment.load_config(os.path.join(REPO, "experiments", "quickstart.py"), "smoke")
  config.stages.teacher.num_steps = num_steps
  config.eval_every_steps = 0
  return config


def _errors(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _start(workdir, *extra):
  return subprocess.Popen([sys.executable, "-m", "kd.main", *STAGE_FLAGS, f"--workdir={workdir}", *extra],
                          cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def test_the_lock_is_released_after_an_error(tmp_path):
  config = _config()
  config.nonfinite.inject_at_step = 5
  with pytest.raises(TrainingError):
    train.train_stage(config, "teacher", str(tmp_path / "seed_0"), seed=0)
  assert not os.path.exists(_lock_path(tmp_path))


def test_the_lock_is_released_on_exceptions_and_interrupted_propagates(tmp_path):
  stage_dir = str(tmp_path / "stage")
  lock = os.path.join(stage_dir, locks.LOCK_FILE)
  with pytest.raises(Interrupted):
    with locks.stage_lock(stage_dir):
      assert os.path.exists(lock)
      with pytest.raises(WorkdirError, match=f"process {os.getpid()} "):
        with locks.stage_lock(stage_dir):  # A second holder, even in this process, is refused.
          pass
      assert os.path.exists(lock)
      raise Interrupted(signal.SIGTERM, 3, stage_dir)
  assert not os.path.exists(lock)
  with locks.stage_lock(stage_dir):  # Free again.
    pass


def test_the_lock_is_released_after_sigterm(tmp_path):
  process = _start(tmp_path, "--config.stages.teacher.num_steps=400", "--config.log_every_steps=1",
                   "--config.checkpoint.every_steps=100")
  seen = []
  for line in process.stderr:
    seen.append(line)
    match = STEP_LINE.search(line)
    if match and int(match.group(1)) >= 5:
      process.send_signal(signal.SIGTERM)
      break
  seen.extend(process.stderr.read().splitlines(keepends=True))
  process.wait(timeout=120)
  assert process.returncode == 143, "".join(seen)[-3000:]
  assert not os.path.exists(_lock_path(tmp_path))


def test_wait_for_lock_starts_once_the_holder_releases_it(tmp_path):
  held = locks.stage_lock(_teacher_dir(tmp_path))
  held.__enter__()
  try:
    process = _start(tmp_path, "--wait_for_lock")
    seen = []
    for line in process.stderr:
      seen.append(line)
      if "waiting for" in line:
        break
    assert process.poll() is None, "".join(seen)[-3000:]
    assert f"process {os.getpid()}" in seen[-1]
    time.sleep(1.0)
    assert not os.path.exists(os.path.join(_teacher_dir(tmp_path), "metrics.jsonl"))
  finally:
    held.__exit__(None, None, None)
  seen.extend(process.stderr.read().splitlines(keepends=True))
  process.wait(timeout=300)
  assert process.returncode == 0, "".join(seen)[-3000:]
  assert train.is_finished(_teacher_dir(tmp_path))
  assert not os.path.exists(_lock_path(tmp_path))


def test_two_runs_started_at_once_train_the_stage_once(tmp_path):
  extra = ("--config.stages.teacher.num_steps=300", "--config.log_every_steps=10",
           "--config.checkpoint.every_steps=100")
  processes = [_start(tmp_path, *extra) for _ in range(2)]
  outputs = [process.communicate(timeout=300)[1] for process in processes]
  codes = [process.returncode for process in processes]
  assert sorted(codes) == [0, 2], "\n---\n".join(output[-2000:] for output in outputs)
  winner, loser = (processes[0], processes[1]) if codes[0] == 0 else (processes[1], processes[0])
  loser_stderr = outputs[processes.index(loser)]
  errors = _errors(loser_stderr)
  assert len(errors) == 1 and f"process {winner.pid} " in errors[0], loser_stderr[-3000:]
  assert not STEP_LINE.search(loser_stderr)  # It trained nothing.
  with open(os.path.join(_teacher_dir(tmp_path), "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [row["step"] for row in rows if "train/loss" in row] == list(range(10, 301, 10))  # Once each.
  assert not os.path.exists(_lock_path(tmp_path))
