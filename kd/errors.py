"""Errors that `kd` reports to the user as one line, without a traceback."""


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
