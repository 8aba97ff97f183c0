"""Errors that `kd` reports to the user as one line, without a traceback."""

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
