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
