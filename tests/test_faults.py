"""The fault battery: every row of README's "When things go wrong" table, tried on real tiny runs.

Faults (FAULTS) interrupt or damage a run of the quickstart's teacher stage (30 steps, logs every 4,
checkpoints every 6, evaluates every 10, so a checkpoint falls between log steps): `kill -9` at steps,
signals, corrupted checkpoints, NaNs, full and read-only disks, a second process, a changed config, the
stage's folder removed. Each stops the way README says (exit status, one `error:` line, no traceback,
nothing lost), and once fixed, running the same command again ends with final parameters, metrics.jsonl
and TensorBoard scalars identical to one uninterrupted run, shared by all (wall-clock fields aside).

Bad inputs (BAD_INPUTS) are one-flag mistakes: each is one `error:` line on stderr, exit status 2, no
traceback, and no stage folder written.

Everything runs through `python -m kd.main` subprocesses, as a user runs it, compiled without LLVM's
optimisations (`_unoptimised_xla`: the same programs, so the same numbers within this file), several at
once. The full disks are real: a tmpfs with few free bytes, or with few free inodes so that the disk
fills during a checkpoint's save, after kd's free-space check passed (mounting needs root, as on CI;
those cases are skipped without it). `pytest -s` prints the battery's figures at the end.
"""

import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from conftest import REPO
from kd import checkpoint
from test_end_to_end import _unoptimised_xla

FLAGS = ["--config=experiments/quickstart.py:smoke", "--stages=teacher", "--config.stages.teacher.num_steps=30",
         "--config.log_every_steps=4", "--config.checkpoint.every_steps=6", "--config.eval_every_steps=10"]
STEP_LINE = re.compile(r"\[teacher\] step (\d+)/30")
LATEST = 30  # The reference's checkpoints: steps 24 and 30 (checkpoint.keep=2).
PARALLEL = 2  # Runs at once: the machine's cores.

# The first column of README's table, row by row: each case names the row it belongs to.
ROWS = {
    "bad": "bad flag, config key, type or value; unknown model, method, dataset or config variant; a feature "
           "path that matches nothing; feature shapes a method cannot use (token features for a method that "
           "needs maps); a missing teacher, or one of another architecture or number of classes; an empty "
           "split; a batch that does not divide over the devices",
    "range": "a model attribute outside the range its model declares (`model.dropout=1.5`, `model.hidden=0`, a "
             "CIFAR ResNet depth that is not 6n + 2), or any number that is not finite (`method.temperature=inf`)",
    "catalog": "a catalog dataset (`data.name=mnist`) not prepared, on a machine that cannot download it",
    "import": "a model import path that does not import, or names no Linen/NNX class; a model attribute without "
              "a default left unset",
    "own code": "an exception in your own code: the config file, or a model module (at import or when traced)",
    "external": "an external teacher or `init_from` checkpoint whose arrays do not fit the model; one that states "
                "no input preprocessing; an unreadable or unknown format; a `.pth` that holds anything but "
                "tensors; an unknown `--arch` for `kd.convert`",
    "kill": "`kill -9` (also before the first checkpoint, or during the export), SIGTERM",
    "signal": "SIGTERM (preemption) or SIGINT (Ctrl-C)",
    "corrupt checkpoint": "the latest checkpoint is corrupted or half-written, or its bytes changed on disk",
    "corrupt export": "an exported model or connector (a teacher, a `kd.convert` output) whose files do not "
                      "match its `manifest.json`, or that is incomplete (`model/` or `model.json` deleted or "
                      "cut short)",
    "config": "a rerun of a workdir with another config (a changed hyperparameter, another teacher, the full "
              "quickstart into a smoke workdir), or a resume with another config",
    "lock": "a second `kd.main` on a stage another process is training (same workdir)",
    "nan": "NaN or Inf in the loss or gradients",
    "disk": "workdir read-only, or full: before a checkpoint, during its save, or with a few kB left when a "
            "rerun starts",
    "vanished": "a file or folder of the stage removed while it trains (by another process or a cleanup)",
}


# Runs.

def _env() -> dict[str, str]:
  return {**os.environ, **_unoptimised_xla()}


def _main(workdir, *extra, flags=FLAGS, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "kd.main", *flags, f"--workdir={workdir}", *extra], cwd=REPO,
                        capture_output=True, text=True, timeout=600, env={**_env(), **(env or {})})


def _start(workdir, *extra) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "kd.main", *FLAGS, f"--workdir={workdir}", *extra], cwd=REPO,
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())


def _signal_at_step(process: subprocess.Popen, step: int, signum: int, then=None) -> str:
  """Sends `signum` (or calls `then()`) once the run logs a step >= `step`; its stderr once it ended."""
  seen = []
  for line in process.stderr:
    seen.append(line)
    match = STEP_LINE.search(line)
    if match and int(match.group(1)) >= step:
      then() if then else process.send_signal(signum)
      break
  seen.extend(process.stderr.read().splitlines(keepends=True))
  process.wait(timeout=300)
  return "".join(seen)


def _stage(workdir) -> str:
  return os.path.join(str(workdir), "seed_0", "teacher")


def _errors(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("error:")]


# What a run leaves.

WALL_CLOCK = re.compile(r"seconds|per_second|time")


def _rows(workdir) -> list[dict]:
  with open(os.path.join(_stage(workdir), "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if not WALL_CLOCK.search(k)} for line in f]


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
        if not WALL_CLOCK.search(value.tag):
          scalars.append((value.tag, event.step, round(float(value.simple_value), 6)))
  return sorted(scalars)


_LOADING = threading.Lock()  # Cases run in threads; one loads a model at a time.


def _variables(workdir):
  with _LOADING:
    return jax.tree.map(np.asarray, checkpoint.load_model(_stage(workdir)).variables)


def _assert_same_run(expected, got) -> None:
  jax.tree.map(np.testing.assert_array_equal, _variables(expected), _variables(got))
  assert _rows(got) == _rows(expected)
  assert _tensorboard_scalars(got) == _tensorboard_scalars(expected)


def _tree_digest(directory) -> dict[str, str]:
  digest = {}
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        digest[os.path.relpath(os.path.join(root, name), directory)] = hashlib.sha256(f.read()).hexdigest()
  return digest


def _checkpoint_names(workdir) -> list[str]:
  folder = os.path.join(_stage(workdir), "checkpoints")
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# Damage.

def _copy_reference(reference, workdir, *, finished=True, drop_latest=False) -> None:
  """The reference run copied to `workdir`; unfinished: as a kill after its last checkpoint leaves it (no
  result, no export); drop_latest: as a kill before its last checkpoint (resumes from step 24)."""
  shutil.copytree(reference, str(workdir), dirs_exist_ok=True, symlinks=True)
  stage = _stage(workdir)
  if not finished:
    os.remove(os.path.join(stage, "result.json"))
    os.remove(os.path.join(stage, checkpoint.MODEL_JSON))
    shutil.rmtree(os.path.join(stage, checkpoint.MODEL_DIR))
  if drop_latest:
    shutil.rmtree(os.path.join(stage, "checkpoints", str(LATEST)))


def _largest_file(folder) -> str:
  files = [os.path.join(parent, name) for parent, _, names in os.walk(folder) for name in names
           if name != checkpoint.MANIFEST]
  return max(files, key=os.path.getsize)


def _flip_bytes(path) -> None:
  """Inverts 16 bytes in the middle of the file (same size)."""
  with open(path, "r+b") as f:
    content = bytearray(f.read())
    middle = len(content) // 2
    content[middle:middle + 16] = bytes(b ^ 0xFF for b in content[middle:middle + 16])
    f.seek(0)
    f.write(content)


def _truncate(path, size=None) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2 if size is None else size)


def _write_lock(workdir, pid: int) -> None:
  os.makedirs(_stage(workdir), exist_ok=True)
  with open(os.path.join(_stage(workdir), ".lock"), "w") as f:
    json.dump({"pid": pid, "host": socket.gethostname(), "since": time.time()}, f)


class _Disk:
  """A small tmpfs at `<path>` (needs root); `remount(...)` changes its options; unmounted by close()."""

  def __init__(self, path, options: str):
    self.path = str(path)
    os.makedirs(self.path, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", self.path], capture_output=True).returncode:
      pytest.skip("mounting a tmpfs needs root")

  def remount(self, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", self.path], check=True)

  def used_inodes(self) -> int:
    return os.statvfs(self.path).f_files - os.statvfs(self.path).f_ffree

  def fill(self, leave_bytes: int) -> None:
    with open(os.path.join(self.path, "filler"), "wb") as f:
      f.write(b"\0" * max(shutil.disk_usage(self.path).free - leave_bytes, 0))

  def close(self) -> None:
    subprocess.run(["umount", "-l", self.path], check=False)


# The faults. Each injects its fault into `case.workdir` and returns the failed runs to check against the
# case's `status` and `words`; the case then runs the same command again (after `fix`) and compares.

@dataclasses.dataclass
class Case:
  workdir: str
  reference: str
  scratch: str
  failed: list = dataclasses.field(default_factory=list)  # CompletedProcess-likes: returncode, stderr.
  notes: list = dataclasses.field(default_factory=list)  # Words the recovering run's stderr must contain.
  fix: Callable[[], None] | None = None
  cleanup: list = dataclasses.field(default_factory=list)

  def main(self, *extra, **kwargs):
    result = _main(self.workdir, *extra, **kwargs)
    self.failed.append(result)
    return result

  def disk(self, options: str) -> _Disk:
    disk = _Disk(os.path.join(self.scratch, "disk"), options)
    self.cleanup.append(disk.close)
    self.workdir = os.path.join(disk.path, "run")
    return disk


def kill_9_at_random_steps(case: Case) -> None:
  targets = sorted(np.random.default_rng(7).choice(np.arange(3, 28), size=2, replace=False))
  for target in targets:
    process = _start(case.workdir)
    log = _signal_at_step(process, int(target), signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, log[-2000:]
  case.notes.append("resuming from step")


def kill_9_before_the_first_checkpoint(case: Case) -> None:
  process = _start(case.workdir)
  log = _signal_at_step(process, 4, signal.SIGKILL)
  assert process.returncode == -signal.SIGKILL, log[-2000:]
  assert not [name for name in _checkpoint_names(case.workdir) if name.isdigit()]
  assert _rows(case.workdir)  # The killed run had logged a row.


def kill_9_during_the_export(case: Case) -> None:
  # What a kill between the final evaluation row and result.json leaves: the last checkpoint, the
  # evaluation row, and an export cut short.
  _copy_reference(case.reference, case.workdir)
  os.remove(os.path.join(_stage(case.workdir), "result.json"))
  shutil.rmtree(os.path.join(_stage(case.workdir), checkpoint.MODEL_DIR))


def sigterm_then_sigint_between_log_steps(case: Case) -> None:
  for step, signum, status in [(8, signal.SIGTERM, 143), (16, signal.SIGINT, 130)]:
    process = _start(case.workdir)
    log = _signal_at_step(process, step, signum)
    assert process.returncode == status, log[-3000:]
    saved = int(re.search(r"saved a checkpoint at step (\d+)", log).group(1))
    assert saved >= step and str(saved) in _checkpoint_names(case.workdir)
    assert "run the same command again to resume" in log and "Traceback" not in log
  case.notes.append("resuming from step")


def flipped_bytes_in_the_latest_checkpoint(case: Case) -> None:
  _copy_reference(case.reference, case.workdir, finished=False)
  _flip_bytes(_largest_file(os.path.join(_stage(case.workdir), "checkpoints", str(LATEST), "state")))
  case.notes += [f"checkpoint at step {LATEST}", "is corrupt", "resuming from step 24"]


def truncated_checkpoint_and_a_half_written_one(case: Case) -> None:
  _copy_reference(case.reference, case.workdir, finished=False)
  _truncate(_largest_file(os.path.join(_stage(case.workdir), "checkpoints", str(LATEST), "state")))
  half_written = os.path.join(_stage(case.workdir), "checkpoints", "36.orbax-checkpoint-tmp-1234567", "state")
  os.makedirs(half_written)
  with open(os.path.join(half_written, "data"), "wb") as f:
    f.write(b"partial")
  case.notes += ["is corrupt", "removed 36.orbax-checkpoint-tmp-1234567", "resuming from step 24"]


def nan_loss_under_stop(case: Case) -> None:
  case.main("--config.nonfinite.inject_at_step=23")
  assert _checkpoint_names(case.workdir) == ["12", "18"]  # None holds the bad step.
  case.notes.append("resuming from step 18")


def nan_loss_under_skip(case: Case) -> None:
  result = _main(case.workdir, "--config.nonfinite.inject_at_step=23", "--config.nonfinite.policy=skip")
  assert result.returncode == 0, result.stderr[-3000:]
  skipped = {row["step"]: row["train/skipped_updates"] for row in _rows(case.workdir) if "train/loss" in row}
  assert skipped[20] == 0 and skipped[24] == 1 and skipped[30] == 1
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(_variables(case.workdir)))


def disk_full_during_a_checkpoint_save(case: Case) -> None:
  # Few free inodes, many free bytes: kd's free-space check passes, and the disk fills while Orbax
  # writes step 30's files (about 30 of them).
  disk = case.disk("size=64m,nr_inodes=100000")
  _copy_reference(case.reference, case.workdir, finished=False, drop_latest=True)
  disk.remount(f"nr_inodes={disk.used_inodes() + 8}")
  case.main()
  assert not [name for name in _checkpoint_names(case.workdir) if checkpoint._ORBAX_TMP in name]  # pylint: disable=protected-access
  case.fix = lambda: disk.remount("nr_inodes=100000")
  case.notes.append("resuming from step 24")


def disk_too_full_for_the_next_checkpoint(case: Case) -> None:
  disk = case.disk("size=8m")
  _copy_reference(case.reference, case.workdir, finished=False, drop_latest=True)
  disk.fill(leave_bytes=300_000)  # Room for logs, not for a checkpoint (about 1 MB).
  case.main()
  case.fix = lambda: os.remove(os.path.join(disk.path, "filler"))


def a_few_kb_left_when_a_rerun_starts(case: Case) -> None:
  disk = case.disk("size=8m")
  _copy_reference(case.reference, case.workdir, finished=False, drop_latest=True)
  disk.fill(leave_bytes=8_192)
  before = _tree_digest(case.workdir)
  case.main()
  assert _tree_digest(case.workdir) == before
  case.fix = lambda: os.remove(os.path.join(disk.path, "filler"))


def read_only_workdir(case: Case) -> None:
  disk = case.disk("size=8m")
  _copy_reference(case.reference, case.workdir, finished=False, drop_latest=True)
  before = _tree_digest(case.workdir)
  disk.remount("ro")
  case.main()
  assert _tree_digest(case.workdir) == before
  case.fix = lambda: disk.remount("rw")


def stage_folder_removed_while_it_trains(case: Case) -> None:
  process = _start(case.workdir)
  stderr = _signal_at_step(process, 12, None,
                           then=lambda: shutil.rmtree(_stage(case.workdir), ignore_errors=True))
  case.failed.append(subprocess.CompletedProcess(process.args, process.returncode, "", stderr))


def a_second_process_on_the_stage(case: Case) -> None:
  _copy_reference(case.reference, case.workdir, finished=False, drop_latest=True)
  _write_lock(case.workdir, os.getpid())  # This test's process: alive, on this host.
  before = _tree_digest(case.workdir)
  case.main()
  assert _tree_digest(case.workdir) == before  # Nothing written, the lock untouched.
  case.fix = lambda: os.remove(os.path.join(_stage(case.workdir), ".lock"))


def a_lock_left_by_a_process_that_is_gone(case: Case) -> None:
  _copy_reference(case.reference, case.workdir, finished=False, drop_latest=True)
  finished = subprocess.Popen(["true"])
  finished.wait()
  _write_lock(case.workdir, finished.pid)
  case.notes += ["taking over", str(finished.pid)]


def a_rerun_with_a_changed_hyperparameter(case: Case) -> None:
  _copy_reference(case.reference, case.workdir)
  before = _tree_digest(case.workdir)
  case.main("--config.stages.teacher.optimizer.learning_rate=0.01")
  assert _tree_digest(case.workdir) == before
  case.notes.append("already finished")


def a_resume_with_a_changed_hyperparameter(case: Case) -> None:
  _copy_reference(case.reference, case.workdir, finished=False, drop_latest=True)
  before = _tree_digest(case.workdir)
  case.main("--config.stages.teacher.optimizer.learning_rate=0.01")
  assert _tree_digest(case.workdir) == before
  case.notes.append("resuming from step 24")


@dataclasses.dataclass(frozen=True)
class Fault:
  id: str
  row: str  # README's first-column text of the row it belongs to.
  inject: Callable[[Case], None]
  status: int | None = None  # Of the failed runs; None: no run fails with an error line.
  words: tuple[str, ...] = ()  # That their error line contains.
  # What running the same command again (after the case's fix) must equal of the reference: "all" (final
  # parameters, metrics.jsonl and TensorBoard's scalars), "parameters" (logs removed by the fault are
  # lost), or "" (it does not run again).
  identical: str = "all"


FAULTS = [
    Fault("kill-9-at-random-steps", ROWS["kill"], kill_9_at_random_steps),
    Fault("kill-9-before-the-first-checkpoint", ROWS["kill"], kill_9_before_the_first_checkpoint),
    Fault("kill-9-during-the-export", ROWS["kill"], kill_9_during_the_export),
    Fault("sigterm-then-sigint-between-log-steps", ROWS["signal"], sigterm_then_sigint_between_log_steps),
    Fault("flipped-bytes-in-the-latest-checkpoint", ROWS["corrupt checkpoint"],
          flipped_bytes_in_the_latest_checkpoint),
    Fault("truncated-checkpoint-and-a-half-written-one", ROWS["corrupt checkpoint"],
          truncated_checkpoint_and_a_half_written_one),
    Fault("nan-loss-under-stop", ROWS["nan"], nan_loss_under_stop, 1,
          ("[teacher] step 23: non-finite", "loss=nan", "ce=nan", "nonfinite.policy=skip")),
    Fault("nan-loss-under-skip", ROWS["nan"], nan_loss_under_skip, identical=""),
    Fault("disk-full-during-a-checkpoint-save", ROWS["disk"], disk_full_during_a_checkpoint_save, 2,
          ("No space left on device", "the checkpoints already there are intact (latest: step 24)")),
    Fault("disk-too-full-for-the-next-checkpoint", ROWS["disk"], disk_too_full_for_the_next_checkpoint, 2,
          ("No space left on device: a checkpoint needs about", "(latest: step 24)")),
    Fault("a-few-kb-left-when-a-rerun-starts", ROWS["disk"], a_few_kb_left_when_a_rerun_starts, 2,
          ("No space left on device", "(latest: step 24)")),
    Fault("read-only-workdir", ROWS["disk"], read_only_workdir, 2, ("is not writable (Read-only file system)",)),
    Fault("stage-folder-removed-while-it-trains", ROWS["vanished"], stage_folder_removed_while_it_trains, 2,
          ("vanished while the stage ran", "another process or a cleanup removed it"), identical="parameters"),
    Fault("a-second-process-on-the-stage", ROWS["lock"], a_second_process_on_the_stage, 2,
          (f"process {os.getpid()} on {socket.gethostname()} (since ", "--wait_for_lock", "another --workdir")),
    Fault("a-lock-left-by-a-process-that-is-gone", ROWS["lock"], a_lock_left_by_a_process_that_is_gone),
    Fault("a-rerun-with-a-changed-hyperparameter", ROWS["config"], a_rerun_with_a_changed_hyperparameter, 2,
          ("is a finished run of another config", "stages.teacher.optimizer.learning_rate: 0.003 -> 0.01",
           "--overwrite=teacher")),
    Fault("a-resume-with-a-changed-hyperparameter", ROWS["config"], a_resume_with_a_changed_hyperparameter, 2,
          ("unfinished run of another config", "learning_rate: 0.003 -> 0.01")),
]


# Bad inputs: (id, row, flags after --workdir, words the error line contains, setup). The setup, if any,
# prepares the workdir (e.g. a finished teacher, as the reference leaves it) and returns extra flags.

def _with_teacher(damage=None):
  def setup(reference, workdir, scratch):
    del scratch
    _copy_reference(reference, workdir)
    if damage:
      damage(_stage(workdir))
    return ["--stages=student"]
  return setup


def _own_config(source: str):
  def setup(reference, workdir, scratch):
    del reference, workdir
    path = os.path.join(scratch, "my_experiment.py")
    with open(path, "w") as f:
      f.write(source)
    return [f"--config={path}"]
  return setup


def _empty_tfds(reference, workdir, scratch):
  del reference, workdir
  return {"env": {"TFDS_DATA_DIR": os.path.join(scratch, "empty_tfds")}}


BAD_INPUTS = [
    ("unknown-key", ROWS["bad"], ["--config.stages.student.methd.name=x"],
     ["unknown config key stages.student.methd", "did you mean stages.student.method"]),
    ("unknown-model-key", ROWS["bad"], ["--config.stages.student.model.depth=3"],
     ["unknown config key stages.student.model.depth", "channels"]),
    ("bad-type", ROWS["bad"], ["--config.data.batch_size=abc"], ["config.data.batch_size", "abc"]),
    ("unknown-method", ROWS["bad"], ["--config.stages.student.method.name=fitnetz"], ["is not a method", "hinton_kd"]),
    ("unknown-model", ROWS["bad"], ["--config.stages.student.model.name=resnet99"], ["is not a model", "cnn"]),
    ("negative-temperature", ROWS["bad"], ["--config.stages.student.method.temperature=-1.0"],
     ["temperature=-1.0 must be > 0"]),
    ("zero-learning-rate", ROWS["bad"], ["--config.stages.teacher.optimizer.learning_rate=0.0"],
     ["learning_rate=0.0 must be > 0"]),
    ("unknown-teacher", ROWS["bad"], ["--config.stages.student.teacher=baseline2"],
     ["teacher='baseline2'", "earlier stages"]),
    ("unknown-dataset", ROWS["bad"], ["--config.data.name=no_such_dataset"],
     ["unknown dataset 'no_such_dataset'", "digits"]),
    ("empty-split", ROWS["bad"], ["--config.data.test_split=test[:0]"], ["empty"]),
    ("no-seeds", ROWS["bad"], ["--config.seeds=()"], ["seeds=()", "non-empty"]),
    ("missing-teacher", ROWS["bad"], ["--stages=student"], ["needs teacher stage 'teacher'", "no finished run"]),
    ("unknown-stage", ROWS["bad"], ["--stages=pupil"], ["'pupil'", "not a stage"]),
    ("unknown-variant", ROWS["bad"], ["--config=experiments/quickstart.py:nosuchvariant"],
     ["--config=experiments/quickstart.py:nosuchvariant: unknown variant 'nosuchvariant'", "use :smoke"]),
    ("missing-config-file", ROWS["bad"], ["--config=experiments/no_such_file.py"],
     ["config file experiments/no_such_file.py does not exist"]),
    ("teacher-of-another-architecture", ROWS["bad"], ["--config.stages.teacher.model.hidden=64"],
     ["but stages.teacher.model is", "'hidden': 64"], _with_teacher()),
    ("teacher-of-another-number-of-classes", ROWS["bad"], ["--config.data.name=synthetic/8x8x1_5_64"],
     ["predicts 10 classes of digits", "has 5"], _with_teacher()),
    ("dropout-out-of-range", ROWS["range"], ["--config.stages.student.model.dropout=1.5"],
     ["stages.student.model.dropout=1.5", "in [0, 1)"]),
    ("hidden-zero", ROWS["range"], ["--config.stages.student.model.hidden=0"],
     ["stages.student.model.hidden=0", "integer >= 1"]),
    ("infinite-temperature", ROWS["range"], ["--config.stages.student.method.temperature=inf"],
     ["temperature=inf must be finite"]),
    ("catalog-dataset-not-prepared", ROWS["catalog"], ["--config.data.name=mnist"],
     ["dataset 'mnist' is not prepared", "tfds build mnist --file_format=array_record"], _empty_tfds),
    ("model-import-path-that-does-not-import", ROWS["import"],
     ["--config.stages.student.model.name=no_such_module:Net"], ["no_such_module"]),
    ("exception-in-the-config-file", ROWS["own code"], [],
     ["ZeroDivisionError", "my_experiment.py:3", "--traceback"],
     _own_config("def get_config(arg=None):\n  del arg\n  return 1 / 0\n")),
    ("external-teacher-that-is-not-there", ROWS["external"], ["--config.stages.student.teacher=export:/no/such/dir"],
     ["no exported model in /no/such/dir"]),
    ("init-from-without-preprocessing", ROWS["external"],
     ["--config.stages.student.init_from=/no/such.safetensors"], ["does not state the input preprocessing"]),
    ("teacher-export-with-flipped-bytes", ROWS["corrupt export"], [], ["is corrupt", "SHA-256 differs"],
     _with_teacher(lambda stage: _flip_bytes(_largest_file(os.path.join(stage, checkpoint.MODEL_DIR))))),
    ("teacher-export-folder-deleted", ROWS["corrupt export"], [], ["model/ is missing"],
     _with_teacher(lambda stage: shutil.rmtree(os.path.join(stage, checkpoint.MODEL_DIR)))),
    ("teacher-model-json-cut-short", ROWS["corrupt export"], [], ["model.json is unreadable"],
     _with_teacher(lambda stage: _truncate(os.path.join(stage, checkpoint.MODEL_JSON), 20))),
    ("teacher-export-files-cut-short-without-manifest", ROWS["corrupt export"], [], ["is incomplete or unreadable"],
     _with_teacher(lambda stage: (os.remove(os.path.join(stage, checkpoint.MODEL_DIR, checkpoint.MANIFEST)),
                                  os.remove(os.path.join(stage, checkpoint.MODEL_DIR, "_METADATA"))))),
]
BAD_INPUTS = [case if len(case) == 5 else (*case, None) for case in BAD_INPUTS]


# Running the battery: the reference first, then every case, PARALLEL at a time.

@dataclasses.dataclass
class Outcome:
  ok: bool
  detail: str
  seconds: float
  skipped: bool = False


def _run_fault(fault: Fault, reference: str, scratch: str) -> Outcome:
  start = time.perf_counter()
  case = Case(workdir=os.path.join(scratch, "run"), reference=reference, scratch=scratch)
  try:
    fault.inject(case)
    for result in case.failed:
      errors = _errors(result.stderr)
      assert result.returncode == fault.status, (result.returncode, result.stderr[-3000:])
      assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
      for word in fault.words:
        assert word in errors[0], (word, errors[0])
    assert bool(case.failed) == (fault.status is not None), "no run failed as the case expects"
    if fault.identical:
      if case.fix:
        case.fix()
      again = _main(case.workdir)
      assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
      for note in case.notes:
        assert note in again.stderr, (note, again.stderr[-3000:])
      if fault.identical == "all":
        _assert_same_run(reference, case.workdir)
      else:
        jax.tree.map(np.testing.assert_array_equal, _variables(reference), _variables(case.workdir))
    return Outcome(True, "", time.perf_counter() - start)
  except pytest.skip.Exception as e:
    return Outcome(True, str(e), time.perf_counter() - start, skipped=True)
  except Exception:  # pylint: disable=broad-except  # Reported by the case's test.
    return Outcome(False, traceback.format_exc()[-4000:], time.perf_counter() - start)
  finally:
    for close in case.cleanup:
      close()


def _run_bad_input(case, reference: str, scratch: str) -> Outcome:
  start = time.perf_counter()
  _, _, flags, words, setup = case
  workdir = os.path.join(scratch, "run")
  try:
    extra = setup(reference, workdir, scratch) if setup else []
    env = extra.pop("env") if isinstance(extra, dict) else None
    extra = [] if isinstance(extra, dict) else extra
    config = [f for f in extra + flags if f.startswith("--config=")] or [FLAGS[0]]
    others = [f for f in FLAGS[1:] if f != "--stages=teacher"] if setup else []
    rest = [f for f in extra + flags if not f.startswith("--config=")]
    existing = set(os.listdir(os.path.join(workdir, "seed_0"))) if os.path.isdir(os.path.join(workdir, "seed_0")) else set()
    result = _main(workdir, *others, *rest, flags=config[-1:], env=env)
    errors = _errors(result.stderr)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for word in words:
      assert word in errors[0], (word, errors[0])
    if setup is None or isinstance(extra, list) and not extra:
      assert not os.path.exists(workdir), "nothing may be written for a bad input"
    written = set(os.listdir(os.path.join(workdir, "seed_0"))) if os.path.isdir(os.path.join(workdir, "seed_0")) else set()
    assert written == existing, f"a stage folder was written: {sorted(written - existing)}"
    return Outcome(True, "", time.perf_counter() - start)
  except Exception:  # pylint: disable=broad-except
    return Outcome(False, traceback.format_exc()[-4000:], time.perf_counter() - start)


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
  """Runs the reference, then every fault and bad input; their outcomes by ("fault" | "bad", id)."""
  reference = str(tmp_path_factory.mktemp("reference"))
  result = _main(reference)
  assert result.returncode == 0, result.stderr[-3000:]
  jobs = {}
  with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
    for fault in FAULTS:
      jobs[("fault", fault.id)] = pool.submit(_run_fault, fault, reference, str(tmp_path_factory.mktemp(fault.id)))
    for case in BAD_INPUTS:
      jobs[("bad", case[0])] = pool.submit(_run_bad_input, case, reference, str(tmp_path_factory.mktemp(case[0])))
    return {key: job.result() for key, job in jobs.items()}


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.id for fault in FAULTS])
def test_fault(battery, fault):
  outcome = battery[("fault", fault.id)]
  if outcome.skipped:
    pytest.skip(outcome.detail)
  assert outcome.ok, outcome.detail


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input(battery, case):
  if case[0] == "catalog-dataset-not-prepared":
    from kd.data import pipeline  # pylint: disable=g-import-not-at-top
    if pipeline._can_reach(pipeline.DOWNLOAD_PROBE_HOST):  # pylint: disable=protected-access
      pytest.skip("this machine can download datasets: the offline path is not exercised")
  outcome = battery[("bad", case[0])]
  assert outcome.ok, outcome.detail


def _readme_rows() -> list[str]:
  """The first column of each row of README's "When things go wrong" table."""
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  table = text.split("### When things go wrong", 1)[1].split("\n\n", 2)[1]
  return [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[2:] if line.startswith("| ")]


def test_every_case_names_a_row_of_the_readme_table_and_every_row_has_cases():
  rows = _readme_rows()
  named = {fault.row for fault in FAULTS} | {case[1] for case in BAD_INPUTS}
  assert not named - set(rows), f"cases name rows README's table does not have: {sorted(named - set(rows))}"
  assert not set(rows) - named, f"rows of README's table without a case: {sorted(set(rows) - named)}"
  assert len({fault.id for fault in FAULTS} | {case[0] for case in BAD_INPUTS}) == len(FAULTS) + len(BAD_INPUTS)


def test_zz_the_battery_s_figures(battery):
  faults = [battery[("fault", fault.id)] for fault in FAULTS]
  bad = [battery[("bad", case[0])] for case in BAD_INPUTS]
  def count(outcomes, mode=None):
    return sum(o.ok and not o.skipped for fault, o in zip(FAULTS, outcomes) if mode is None or fault.identical == mode)

  skipped = sum(o.skipped for o in faults + bad)
  print(f"\nfault battery: {len(faults)} faults tried, {count(faults)} ended as README says: "
        f"{count(faults, 'all')} recovered with final parameters and logs identical to the uninterrupted run, "
        f"{count(faults, 'parameters')} with identical final parameters (the fault removed logs), "
        f"{sum(not f.identical for f in FAULTS)} stopped or went on as documented; {len(bad)} bad inputs tried, "
        f"{sum(o.ok and not o.skipped for o in bad)} answered with one error: line, exit status 2, no traceback "
        f"and no stage folder" + (f"; {skipped} skipped" if skipped else ""))
  for key, outcome in sorted(battery.items(), key=lambda item: -item[1].seconds)[:5]:
    print(f"  slowest: {key[1]} {outcome.seconds:.1f} s")
