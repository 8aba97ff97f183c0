"""The logs of an interrupted run equal an uninterrupted run's: metrics.jsonl row for row, and the
scalars TensorBoard reads from the event files (purges applied), however the run was interrupted.

Logs every 4 steps and checkpoints every 6, so a checkpoint falls between log steps and a log row
averages steps from both sides of an interruption; evaluates every 10 steps and at the end."""

import glob
import json
import os
import signal
import shutil
import struct
import subprocess
import sys

import pytest
from tensorboardX.proto import event_pb2

from conftest import REPO
from conftest import run_main

FLAGS = ["--config=experiments/quickstart.py:smoke", "--stages=teacher", "--config.stages.teacher.num_steps=30",
         "--config.log_every_steps=4", "--config.checkpoint.every_steps=6", "--config.eval_every_steps=10"]


def _stage(workdir) -> str:
  return os.path.join(str(workdir), "seed_0", "teacher")


def _rows(workdir) -> list[dict]:
  with open(os.path.join(_stage(workdir), "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _tensorboard_scalars(workdir) -> list[tuple[str, int, float]]:
  """(tag, step, value) as TensorBoard shows them: files in order, a purge drops earlier events from its step."""
  scalars = []
  for path in sorted(glob.glob(os.path.join(_stage(workdir), "tensorboard", "events.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # TFRecord: length, its CRC, the record, its CRC.
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        scalars = [s for s in scalars if s[1] < event.step]
      for value in event.summary.value:
        scalars.append((value.tag, event.step, round(float(value.simple_value), 6)))
  return sorted(scalars)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  result = run_main(*FLAGS, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _assert_same_logs(expected, got):
  assert _rows(got) == _rows(expected)
  assert _tensorboard_scalars(got) == _tensorboard_scalars(expected)


def _run_until(workdir, stop_at_step: int, signum: int) -> None:
  process = subprocess.Popen([sys.executable, "-m", "kd.main", *FLAGS, f"--workdir={workdir}"], cwd=REPO,
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  for line in process.stderr:
    if f"[teacher] step {stop_at_step}/30" in line:
      process.send_signal(signum)
      break
  process.communicate(timeout=120)


def test_sigterm_between_log_steps_then_resume_logs_the_same_rows(straight, tmp_path):
  # Progress lines come at log steps; step 8 is one, and the stop lands a few steps after it.
  _run_until(tmp_path, 8, signal.SIGTERM)
  rows = _rows(tmp_path)
  assert rows and rows[-1]["step"] < 30  # Interrupted mid-run.
  result = run_main(*FLAGS, f"--workdir={tmp_path}")
  assert result.returncode == 0 and "resuming from step" in result.stderr, result.stderr[-3000:]
  _assert_same_logs(straight, tmp_path)


def test_kill_before_the_first_checkpoint_then_rerun_starts_the_logs_afresh(straight, tmp_path):
  _run_until(tmp_path, 4, signal.SIGKILL)
  assert not glob.glob(os.path.join(_stage(tmp_path), "checkpoints", "[0-9]*"))
  assert _rows(tmp_path)  # The killed run had logged a row.
  result = run_main(*FLAGS, f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_same_logs(straight, tmp_path)


def test_kill_during_the_export_then_rerun_writes_the_final_evaluation_once(straight, tmp_path):
  shutil.copytree(str(straight), str(tmp_path), dirs_exist_ok=True)
  stage = _stage(tmp_path)
  # What a kill between the final evaluation row and result.json leaves: the last checkpoint, the
  # evaluation row, and an export cut short.
  os.remove(os.path.join(stage, "result.json"))
  shutil.rmtree(os.path.join(stage, "model"))
  result = run_main(*FLAGS, f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert [row["step"] for row in _rows(tmp_path)].count(30) == 2  # The train row and one evaluation row.
  _assert_same_logs(straight, tmp_path)


# Training a finished stage for longer: under a schedule that does not depend on num_steps, the stage
# trains on from its last checkpoint and ends as a run of the new length from the start would.
CONSTANT = ["--config=experiments/quickstart.py:smoke", "--stages=teacher", "--config.log_every_steps=4",
            "--config.checkpoint.every_steps=5", "--config.eval_every_steps=6",
            "--config.stages.teacher.optimizer.schedule=constant"]


def _exported_variables(workdir):
  import kd  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(kd.load_model(_stage(workdir)).variables)


def test_more_steps_under_a_constant_schedule_train_on_to_the_same_parameters_and_logs(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  longer, extended = tmp_path / "longer", tmp_path / "extended"
  assert run_main(*CONSTANT, "--config.stages.teacher.num_steps=24", f"--workdir={longer}").returncode == 0
  assert run_main(*CONSTANT, "--config.stages.teacher.num_steps=12", f"--workdir={extended}").returncode == 0
  result = run_main(*CONSTANT, "--config.stages.teacher.num_steps=24", f"--workdir={extended}")
  assert result.returncode == 0 and "num_steps 12 -> 24: training on from step 12" in result.stderr, (
      result.stderr[-3000:])
  assert "resuming from step 12" in result.stderr
  # Step 12 is an eval step of the longer run: its evaluation (the short run's final one) is logged once.
  _assert_same_logs(longer, extended)
  for a, b in zip(_exported_variables(longer), _exported_variables(extended)):
    np.testing.assert_array_equal(a, b)
  superseded = os.listdir(extended / "superseded")  # The 12-step result and export, kept.
  assert len(superseded) == 1 and superseded[0].startswith("seed_0_teacher_12_steps_")
  with open(extended / "superseded" / superseded[0] / "result.json") as f:
    assert json.load(f)["step"] == 12
  # A cosine schedule depends on num_steps: more steps there are another config, refused.
  result = run_main("--config=experiments/quickstart.py:smoke", "--stages=teacher",
                    "--config.stages.teacher.num_steps=30", f"--workdir={longer}")
  assert result.returncode == 2 and "stages.teacher.num_steps: 24 -> 30" in result.stderr.splitlines()[-1]
