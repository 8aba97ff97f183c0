"""Faults during training: kills, preemption signals, corrupted checkpoints, NaNs, full and read-only
disks. In every case nothing already written is lost and a resumed run is the run one would have had."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from conftest import run_main
from kd import checkpoint
from kd import experiment
from kd import train

# The teacher stage of the quickstart, long enough to be interrupted, checkpointing often.
STAGE_FLAGS = ["--config=experiments/quickstart.py:smoke", "--stages=teacher",
               "--config.stages.teacher.num_steps=60", "--config.checkpoint.every_steps=7",
               "--config.log_every_steps=1", "--config.eval_every_steps=0"]
STEP_LINE = re.compile(r"\[teacher\] step (\d+)/60")
RESUME_LINE = re.compile(r"\[teacher\] resuming from step (\d+)")


def _teacher_dir(workdir) -> str:
  return os.path.join(str(workdir), "seed_0", "teacher")


def _variables(stage_dir):
  return jax.tree.map(np.asarray, checkpoint.load_model(stage_dir).variables)


def _metrics(stage_dir):
  with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _assert_same_run(expected_dir, got_dir):
  jax.tree.map(np.testing.assert_array_equal, _variables(expected_dir), _variables(got_dir))
  assert _metrics(expected_dir) == _metrics(got_dir)


def _checkpoint_steps(stage_dir):
  directory = os.path.join(stage_dir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _start(workdir, *extra):
  return subprocess.Popen([sys.executable, "-m", "kd.main", *STAGE_FLAGS, f"--workdir={workdir}", *extra],
                          cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def _signal_at_step(process, target_step: int, signum: int) -> str:
  """Sends `signum` once the process logs a step >= target_step; returns the stderr read so far."""
  seen = []
  for line in process.stderr:
    seen.append(line)
    match = STEP_LINE.search(line)
    if match and int(match.group(1)) >= target_step:
      process.send_signal(signum)
      break
  seen.extend(process.stderr.read().splitlines(keepends=True))
  process.wait(timeout=120)
  return "".join(seen)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """The uninterrupted run every interrupted one must equal."""
  workdir = tmp_path_factory.mktemp("straight")
  result = run_main(*STAGE_FLAGS, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return _teacher_dir(workdir)


def test_kill_9_at_random_steps_then_resume_is_bitwise_identical(tmp_path, straight_run):
  rng = np.random.default_rng(7)
  targets = sorted(rng.choice(np.arange(3, 58), size=5, replace=False))
  for kill_number, target in enumerate(targets):
    latest_before = (_checkpoint_steps(_teacher_dir(tmp_path)) or [0])[-1]
    process = _start(tmp_path)
    log = _signal_at_step(process, int(target), signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, log[-2000:]
    if kill_number:
      # Only the steps since the last checkpoint are recomputed.
      assert int(RESUME_LINE.search(log).group(1)) == latest_before, log[-2000:]
  result = run_main(*STAGE_FLAGS, f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert RESUME_LINE.search(result.stderr)
  _assert_same_run(straight_run, _teacher_dir(tmp_path))


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_preemption_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, straight_run, signum, status):
  process = _start(tmp_path)
  log = _signal_at_step(process, 17, signum)
  assert process.returncode == status, log[-3000:]
  saved = int(re.search(r"saved a checkpoint at step (\d+)", log).group(1))
  assert saved >= 17 and saved % 7 != 0  # Saved at the signal, not at a periodic step.
  assert saved in _checkpoint_steps(_teacher_dir(tmp_path))
  assert "run the same command again to resume" in log and "Traceback" not in log
  result = run_main(*STAGE_FLAGS, f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert int(RESUME_LINE.search(result.stderr).group(1)) == saved
  _assert_same_run(straight_run, _teacher_dir(tmp_path))


def _config():
  config = experiment.load_config(os.path.join(REPO, "experiments", "quickstart.py"), "smoke")
  config.stages.teacher.num_steps = 60
  config.checkpoint.every_steps = 7
  config.log_every_steps = 1
  config.eval_every_steps = 0
  return config


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight_run):
  config = _config()
  run_dir = str(tmp_path / "seed_0")
  assert train.train_stage(config, "teacher", run_dir, seed=0, stop_after_step=30) is None
  stage_dir = os.path.join(run_dir, "teacher")
  assert _checkpoint_steps(stage_dir) == [28, 30]  # keep=2
  # Garble every file of the latest checkpoint's train state, and leave a half-written one behind
  # as a crash during a save would.
  for root, _, files in os.walk(os.path.join(stage_dir, "checkpoints", "30", "state")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.write(b"\x00garbage\x00" * 8)
  half_written = os.path.join(stage_dir, "checkpoints", "35.orbax-checkpoint-tmp-1234567")
  os.makedirs(half_written)
  result = train.train_stage(config, "teacher", run_dir, seed=0)
  assert result is not None and result["step"] == 60
  moved = os.listdir(os.path.join(stage_dir, "corrupt_checkpoints"))
  assert len(moved) == 1 and moved[0].startswith("30-")  # Kept for inspection, not deleted.
  _assert_same_run(straight_run, stage_dir)


def test_nan_loss_stops_the_run_naming_the_step_and_the_terms(tmp_path):
  result = run_main(*STAGE_FLAGS, f"--workdir={tmp_path}", "--config.nonfinite.inject_at_step=23")
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "step 23: non-finite" in errors[0], result.stderr[-3000:]
  assert "loss=nan" in errors[0] and "ce=nan" in errors[0]
  assert "nonfinite.policy=skip" in errors[0]
  # The checkpoints before the bad step are intact and hold finite parameters.
  assert _checkpoint_steps(_teacher_dir(tmp_path)) == [14, 21]
  config = _config()
  config.nonfinite.inject_at_step = 0
  resumed = train.train_stage(config, "teacher", str(tmp_path / "seed_0"), seed=0)
  assert resumed is not None and np.isfinite(resumed["test/loss"])


def test_nan_loss_under_skip_policy_skips_the_update_and_counts_it(tmp_path):
  result = run_main(*STAGE_FLAGS, f"--workdir={tmp_path}", "--config.nonfinite.inject_at_step=23",
                    "--config.nonfinite.policy=skip")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _metrics(_teacher_dir(tmp_path))
  skipped = {row["step"]: row["train/skipped_updates"] for row in rows if "train/skipped_updates" in row}
  assert skipped[22] == 0 and skipped[23] == 1 and skipped[60] == 1
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(_variables(_teacher_dir(tmp_path))))


def _tree_digest(directory):
  digest = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digest


@pytest.fixture
def small_disk(tmp_path):
  """A 6 MB tmpfs (needs root, as on CI); unmounted afterwards."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
                    capture_output=True).returncode:
    pytest.skip("mounting a tmpfs needs root")
  yield mount_point
  subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_read_only_workdir_is_a_clear_error_and_loses_nothing(small_disk):
  workdir = small_disk / "run"
  first = run_main(*STAGE_FLAGS, f"--workdir={workdir}", "--config.stages.teacher.num_steps=20")
  assert first.returncode == 0, first.stderr[-3000:]
  before = _tree_digest(workdir)
  subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
  try:
    result = run_main("--config=experiments/quickstart.py:smoke", f"--workdir={workdir}")
  finally:
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
  assert result.returncode == 2
  assert f"error: workdir {workdir} is not writable (Read-only file system)" in result.stderr
  assert _tree_digest(workdir) == before


def test_full_disk_is_a_clear_error_and_the_checkpoints_stay_intact(small_disk, tmp_path):
  workdir = small_disk / "run"
  config = _config()
  config.stages.teacher.num_steps = 40
  assert train.train_stage(config, "teacher", str(workdir / "seed_0"), seed=0, stop_after_step=14) is None
  # Fill the disk, leaving room for logs but not for another checkpoint (~1 MB for this teacher).
  filler = small_disk / "filler"
  free = shutil.disk_usage(small_disk).free
  with open(filler, "wb") as f:
    f.write(b"\0" * max(free - 300_000, 0))
  result = run_main(*STAGE_FLAGS, f"--workdir={workdir}", "--config.stages.teacher.num_steps=40")
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "No space left on device" in errors[0], result.stderr[-3000:]
  assert "latest: step 14" in errors[0]
  os.remove(filler)
  resumed = run_main(*STAGE_FLAGS, f"--workdir={workdir}", "--config.stages.teacher.num_steps=40")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert int(RESUME_LINE.search(resumed.stderr.replace("/40", "/60")).group(1)) == 14
