"""Errors that `kd` reports to the user as one line, without a traceback."""

import errno
import os
import sysconfig
import traceback


class UserError(Exception):
  """A problem the user can fix (a config value, a path, a dataset): the message says how.

  `python -m kd.main` prints `error: <message>` and exits with status 2. Raise it before anything
  is compiled or written, so that nothing in the workdir is touched.
  """


class ConfigError(UserError):
  """A config key, type or value that cannot work."""


class DataError(UserError):
  """A dataset that cannot be found, prepared or read."""


class WorkdirError(UserError):
  """The workdir cannot be written (read-only, full): the checkpoints already there are intact."""

  @classmethod
  def from_os_error(cls, error: OSError, stage_dir: str) -> "WorkdirError":
    """One line for a write in `stage_dir` that failed with `error`: what happened, what is intact, the fix.

    Space (ENOSPC, EDQUOT, EFBIG) and permissions (EROFS, EACCES, EPERM) are problems of the disk; a
    path that vanished (ENOENT, ENOTDIR, ESTALE) was removed by someone else while the stage ran.
    """
    what = error.strerror or str(error)
    steps = committed_steps(stage_dir)
    kept = (f"the checkpoints already there are intact (latest: step {steps[-1]})" if steps
            else "no checkpoint was written yet")
    again = "then run the same command again to resume"
    if error.errno in _SPACE_ERRNOS:
      fix = "free space (or raise the file size limit, ulimit -f)" if error.errno == errno.EFBIG else "free space"
      return cls(f"cannot write to {stage_dir} ({what}): {kept}; {fix}, {again}")
    if error.errno in _PERMISSION_ERRNOS:
      return cls(f"cannot write to {stage_dir} ({what}): {kept}; make it writable, {again}")
    path = os.path.abspath(str(error.filename)) if error.filename else ""
    inside = path.startswith(os.path.abspath(stage_dir) + os.sep)
    where = (f"{os.path.relpath(path, stage_dir)} in {stage_dir}" if inside
             else path or f"a file or folder in {stage_dir}")
    if error.errno in _VANISHED_ERRNOS:
      start = (f"from the latest checkpoint left (step {steps[-1]}; logs removed with the rest are lost)" if steps
               else "afresh (no checkpoint is left)")
      return cls(f"{where} vanished while the stage ran ({what}): another process or a cleanup removed it. "
                 "Keep other processes and cleanups off the workdir while it trains, then run the same command "
                 f"again: it starts {start}")
    name = errno.errorcode.get(error.errno, str(error.errno))
    return cls(f"writing {where} failed ({name}: {what}): {kept}; check the disk, {again}")


_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_PERMISSION_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_VANISHED_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.ESTALE)


def workdir_error_for(error: BaseException, workdir: str) -> WorkdirError | None:
  """The WorkdirError for an OSError behind `error` (raised as such, or as its cause), if any.

  For a write that failed outside kd's own handlers (a lock, a log file): named after the stage folder
  the file is in (the nearest folder above it holding `checkpoints` or `fingerprint.json`, up to
  `workdir`). None for other errors and for an OSError raised in the user's own code.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      if user_frame(error) is not None:
        return None
      folder = os.path.dirname(os.path.abspath(str(error.filename))) if error.filename else workdir
      stage_dir, top = folder, os.path.abspath(workdir)
      while not any(os.path.exists(os.path.join(stage_dir, name)) for name in ("checkpoints", "fingerprint.json")):
        if stage_dir in (top, os.path.dirname(stage_dir)):
          stage_dir = folder
          break
        stage_dir = os.path.dirname(stage_dir)
      return WorkdirError.from_os_error(error, stage_dir)
    error = error.__cause__ or error.__context__
  return None


def committed_steps(stage_dir: str) -> list[int]:
  """The steps of the complete checkpoints in `<stage_dir>/checkpoints` (Orbax names a step's folder
  `<step>` only once it is complete), in order."""
  try:
    names = os.listdir(os.path.join(stage_dir, "checkpoints"))
  except OSError:
    return []
  return sorted(int(name) for name in names if name.isdigit())


class TrainingError(Exception):
  """Training cannot go on (e.g. a non-finite loss under the `stop` policy).

  `python -m kd.main` prints `error: <message>` and exits with status 1; the checkpoints in the
  workdir are intact.
  """


class Interrupted(Exception):
  """Training stopped on SIGTERM or SIGINT after saving a checkpoint; rerunning resumes it."""

  def __init__(self, signum: int, step: int, stage_dir: str):
    super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved in {stage_dir}")
    self.signum, self.step, self.stage_dir = signum, step, stage_dir


# Code that is not the user's: kd itself, installed packages and the standard library.
_NOT_USER_CODE = tuple(os.path.realpath(p) + os.sep for p in {
    os.path.dirname(os.path.abspath(__file__)), sysconfig.get_paths()["purelib"],
    sysconfig.get_paths()["platlib"], sysconfig.get_paths()["stdlib"]})


def user_frame(error: BaseException) -> tuple[BaseException, traceback.FrameSummary] | None:
  """The innermost frame of the user's own code (a config file, a model module) in `error` or the
  errors it was raised from, with the error raised there; None if none of it is the user's."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith("<")
              and not os.path.realpath(frame.filename).startswith(_NOT_USER_CODE)]
    if frames:
      return error, frames[-1]
    error = error.__cause__ or error.__context__
  return None


def user_code_error(error: BaseException) -> str | None:
  """One line for an exception raised in the user's code, naming the file and line; else None."""
  found = user_frame(error)
  if found is None:
    return None
  raised, frame = found
  text = str(raised).strip()
  message = text.splitlines()[-1] if text else ""
  return (f"{type(raised).__name__}: {message} (raised at {frame.filename}:{frame.lineno}, in "
          f"{frame.name}; --traceback or KD_TRACEBACK=1 shows the whole traceback)")


def refused_variant(error: BaseException, path: str) -> str | None:
  """The message of a variant the config file at `path` refuses, or None.

  A config file refuses a `get_config(arg)` it does not know with its own `raise ValueError(...)`
  (experiments/quickstart.py: "unknown variant 'x' of experiments/quickstart.py; use :smoke or
  nothing"), naming the known variants and the fix. Any other error (a ValueError raised deeper, in
  code the file calls) is not a refusal but a bug, and None.
  """
  seen = set()
  while error is not None and id(error) not in seen:  # absl's flag parser wraps it.
    seen.add(id(error))
    frames = traceback.extract_tb(error.__traceback__)
    if (isinstance(error, ValueError) and frames
        and os.path.realpath(frames[-1].filename) == os.path.realpath(path)):
      text = str(error).strip()
      return text.splitlines()[-1] if text else "get_config refused it (ValueError)"
    error = error.__cause__ or error.__context__
  return None
