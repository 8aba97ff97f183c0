"""One writer per stage: a lock file `<stage>/.lock` held while a process trains that stage.

Two processes training one stage write into each other's checkpoints and logs. `stage_lock` creates
`<stage>/.lock` atomically (O_CREAT | O_EXCL: of two processes, exactly one creates it) holding its
holder's pid, host and start time as JSON, and removes it when the stage's training ends, however it
ends. A lock whose holder is gone (same host, no process with that pid, or a newer process that was
given the same pid) is taken over with a warning: a process killed with SIGKILL cannot remove its lock.
A lock held from another host cannot be checked from here; its message says how to remove it.
"""

import contextlib
import datetime
import json
import os
import socket
import time
from typing import Any, Iterator

from absl import logging
import jax
import numpy as np

from kd.errors import WorkdirError

LOCK_FILE = ".lock"
_POLL_SECONDS = 1.0
# A lock file with no readable content this old was left by a holder that died while writing it.
_UNREADABLE_STALE_SECONDS = 10.0
# The guard serialising take-overs; one this old was left by a process that died taking over.
_GUARD_STALE_SECONDS = 30.0


def _holder() -> dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _describe(holder: dict[str, Any] | None) -> str:
  if not holder:
    return "an unknown process"
  since = datetime.datetime.fromtimestamp(holder.get("since", 0)).isoformat(sep=" ", timespec="seconds")
  return f"process {holder.get('pid')} on {holder.get('host')} (since {since})"


def _read(path: str) -> dict[str, Any] | None:
  """The holder recorded in a lock file; None if the file is empty or garbled."""
  with open(path) as f:
    text = f.read()
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _process_start_time(pid: int) -> float | None:
  """When process `pid` started (seconds since the epoch), from /proc; None where there is none."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/stat") as f:
      boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # Field 22 of stat: start time in ticks.
  except (OSError, ValueError, IndexError, StopIteration):
    return None


def _is_stale(holder: dict[str, Any] | None, path: str) -> bool:
  """Whether the lock's holder is certainly gone."""
  if holder is None:
    try:
      return time.time() - os.path.getmtime(path) > _UNREADABLE_STALE_SECONDS
    except FileNotFoundError:
      return False
  if holder.get("host") != socket.gethostname():
    return False
  pid = holder["pid"]
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # Alive, another user's.
    pass
  started = _process_start_time(pid)
  # A process that started after the lock was taken was given a recycled pid (1 s: /proc's resolution).
  return started is not None and started > holder.get("since", 0) + 1.0


def _try_create(path: str) -> dict[str, Any] | None:
  """Creates the lock file; returns what it records, or None if it exists already."""
  try:
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return None
  except FileNotFoundError:  # Its holder left the folder empty and removed it: make it and try again.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return None
  holder = _holder()
  with os.fdopen(descriptor, "w") as f:
    json.dump(holder, f)
  return holder


def _take_over(path: str, stale: dict[str, Any] | None) -> None:
  """Removes a stale lock, unless another process took it over first (a guard file serialises this)."""
  guard = path + ".takeover"
  try:
    descriptor = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    with contextlib.suppress(FileNotFoundError):
      if time.time() - os.path.getmtime(guard) > _GUARD_STALE_SECONDS:
        os.remove(guard)
    return
  try:
    try:
      current = _read(path)
    except FileNotFoundError:
      return
    if current == stale:  # Still the dead holder's, not a lock just taken by a live process.
      logging.warning("taking over %s: its holder, %s, is gone", path, _describe(stale))
      os.remove(path)
  finally:
    os.close(descriptor)
    os.remove(guard)


@contextlib.contextmanager
def stage_lock(stage_dir: str, *, wait: bool = False, timeout_s: float | None = None) -> Iterator[None]:
  """Holds `<stage_dir>/.lock` for the duration of the `with` block.

  With several JAX processes (kd.distributed) on one stage, only the primary one takes the lock, and
  all of them raise if it cannot.

  Args:
    stage_dir: the stage's folder (created if missing).
    wait: if another live process holds the lock, wait until it is released (or its holder is gone)
      instead of raising.
    timeout_s: with `wait`, give up after this many seconds (None: no limit).

  Raises:
    WorkdirError: the lock is held by another live process (and `wait` is False or timed out).
  """
  if jax.process_count() == 1:
    with _lock(stage_dir, wait, timeout_s):
      yield
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  with contextlib.ExitStack() as stack:
    error = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(_lock(stage_dir, wait, timeout_s))
      except WorkdirError as e:
        error = e
    locked = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not locked:
      raise error or WorkdirError(f"{stage_dir} is being trained by another run: the primary process "
                                  "(process 0) could not lock it; see its error")
    yield


@contextlib.contextmanager
def _lock(stage_dir: str, wait: bool, timeout_s: float | None) -> Iterator[None]:
  created = not os.path.isdir(stage_dir)
  os.makedirs(stage_dir, exist_ok=True)
  path = os.path.join(stage_dir, LOCK_FILE)
  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  announced = False
  while (mine := _try_create(path)) is None:
    try:
      holder = _read(path)
    except FileNotFoundError:  # Released meanwhile: try again at once.
      continue
    if _is_stale(holder, path):
      _take_over(path, holder)
      continue
    if not wait or (deadline is not None and time.monotonic() >= deadline):
      waited = f" after waiting {timeout_s:g} s" if wait else ""
      raise WorkdirError(
          f"{stage_dir} is being trained by {_describe(holder)}{waited} (lock {path}): wait for it to end, "
          "rerun with --wait_for_lock to start when it does, or use another --workdir; if that process is "
          f"gone (e.g. on another host), remove {path}")
    if not announced:
      logging.info("waiting for %s to release %s", _describe(holder), path)
      announced = True
    time.sleep(_POLL_SECONDS)
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      if _read(path) == mine:  # Never remove a lock that is not this one.
        os.remove(path)
    if created:  # A stage that failed before writing anything (e.g. its teacher is corrupt) leaves no folder.
      with contextlib.suppress(OSError):
        os.rmdir(stage_dir)  # Only if empty.
