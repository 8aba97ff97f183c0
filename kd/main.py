r"""Runs an experiment from the command line.

    python -m kd.main --config=experiments/quickstart.py --workdir=runs/quickstart
    python -m kd.main --config=experiments/quickstart.py:smoke --workdir=/tmp/q \
        --config.stages.student.method.temperature=2.0 --stages=teacher,student

Any problem with the flags or the config is one line on stderr, `error: ...`, and exit status 2,
before anything is compiled or written.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kd import experiment
from kd.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with an argument: experiments/x.py:arg.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and the report.")
_STAGES = flags.DEFINE_list("stages", None, "Run only these stages (default: config.stage_order).")

USAGE = "usage: python -m kd.main --config=experiments/<file>.py[:arg] --workdir=<dir> [--config.<key>=<value> ...]"


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a bad flag or config is one line and exit status 2 (not a traceback)."""
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    _fail(f"{message}\n{USAGE}" if "config" not in message else message)
  if len(remaining) > 1:
    _fail(f"unexpected arguments {remaining[1:]}\n{USAGE}")
  if _CONFIG.value is None:
    _fail(f"--config is required\n{USAGE}")
  if not _WORKDIR.value:
    _fail(f"--workdir is required\n{USAGE}")
  return remaining


def _quiet_library_logs() -> None:
  # Orbax logs every save and restore at INFO; keep the progress lines readable.
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or "/orbax/" not in record.pathname)


def main(argv: list[str]) -> None:
  del argv
  _quiet_library_logs()
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value, _STAGES.value)
  except UserError as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
