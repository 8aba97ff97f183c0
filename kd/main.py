r"""Runs an experiment from the command line.

    python -m kd.main --config=experiments/quickstart.py --workdir=runs/quickstart
    python -m kd.main --config=experiments/quickstart.py:smoke --workdir=/tmp/q \
        --config.stages.student.method.temperature=2.0 --stages=teacher,student

Exit status: 0 done; 2 a problem with the flags, the config, the data or the workdir (one line on
stderr, `error: ...`, before anything is compiled or written); 1 training failed (e.g. a NaN loss
under nonfinite.policy=stop); 128+N stopped by signal N (SIGTERM: 143, SIGINT: 130) after saving a
checkpoint, so that running the same command again resumes.

One process trains a stage at a time (kd.locks): a second run on a stage being trained exits with
status 2 naming the first, or, with `--wait_for_lock`, waits for it and then skips or resumes the stage.

The config file's folder is importable while it loads and while its runs run, so a config can import
a model file beside it. An exception raised in the user's own code (the config file, a model module) is
one line too, naming the file and line it was raised at; `--traceback` (or KD_TRACEBACK=1) shows the
whole traceback instead.
"""

import difflib
import logging as std_logging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kd import distributed
from kd import errors
from kd import experiment
from kd.errors import Interrupted
from kd.errors import TrainingError
from kd.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with an argument: experiments/x.py:arg.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and the report.")
_STAGES = flags.DEFINE_list("stages", None, "Run only these stages (default: config.stage_order).")
_WAIT_FOR_LOCK = flags.DEFINE_bool("wait_for_lock", False, "When another process is training a stage of this "
                                   "workdir, wait for it to end instead of exiting with an error.")
_OVERWRITE = flags.DEFINE_list("overwrite", [], "Stages whose folders hold results of another config: move "
                               "them to <workdir>/superseded/ and train them again (nothing is deleted).")
_STAGE_STORE = flags.DEFINE_string("stage_store", "", "A folder of stages by identity shared with other workdirs: "
                                   "a stage another run trained with the same config, data, seed and teacher "
                                   "is reused from there instead of trained again.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the whole traceback of an error raised in the "
                               "user's code (config file, model module) instead of one line.")

USAGE = ("python -m kd.main --config=experiments/<file>.py[:arg] --workdir=<dir> "
         "[--config.<key>=<value> ...]")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _one_line(error: BaseException) -> str:
  # The last line of a wrapped traceback is the error itself (absl quotes it whole: drop those quotes
  # only, not one that belongs to the message).
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  line = lines[-1]
  if len(line) > 1 and line[0] == line[-1] and line[0] in "'\"":
    line = line[1:-1]
  return line


def _show_tracebacks(argv: list[str] | None = None) -> bool:
  if os.environ.get("KD_TRACEBACK", "") not in ("", "0"):
    return True
  if argv is not None:
    return "--traceback" in argv or "--traceback=true" in argv
  return _TRACEBACK.value


def _config_file(argv: list[str]) -> str | None:
  for arg in argv:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":", 1)[0]
  return None


def _bad_override(argv: list[str]) -> str | None:
  """Names the first `--config.<key>=...` whose key is not in the config, with the keys there."""
  path = _config_file(argv)
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  arg = spec.split(":", 1)[1] if ":" in spec else None
  try:
    config = experiment.load_config(path, arg, validate=False)
  except Exception:  # pylint: disable=broad-except
    return None
  for override in argv:
    if not override.startswith("--config."):
      continue
    keys = override[len("--config."):].split("=", 1)[0].split(".")
    node = config
    for depth, key in enumerate(keys):
      if not hasattr(node, "keys") or key not in node:
        known = sorted(node.keys()) if hasattr(node, "keys") else []
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {'.'.join(keys[:depth] + close)}? " if close else ""
        return (f"unknown config key {'.'.join(keys[:depth + 1])} in {override}: {hint}"
                f"keys there: {known}")
      node = node[key]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a bad flag or config is one line and exit status 2 (not a traceback)."""
  path = _config_file(argv)
  if path is None:
    _fail(f"--config is required: {USAGE}")
  if os.path.isdir(path):
    _fail(f"--config={path} is a folder: give an experiment file in it, e.g. --config=experiments/quickstart.py")
  if not os.path.isfile(path):
    _fail(f"config file {path} does not exist: give the path of an experiment file, e.g. "
          "--config=experiments/quickstart.py")
  experiment.make_config_folder_importable(path)
  try:
    remaining = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # absl raises flags.Error; ml_collections raises KeyError or AttributeError for unknown keys
    # and whatever the config file's get_config raises.
    if _show_tracebacks(argv) and errors.user_frame(e):
      raise
    if isinstance(e, AttributeError) and "get_config" in str(e):
      _fail(f"config file {path} defines no get_config(arg=None): an experiment file returns its "
            "config from get_config (see experiments/quickstart.py)")
    refused = errors.refused_variant(e, path)
    if refused:
      spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
      _fail(f"--config={spec}: {refused}")
    _fail(_bad_override(argv) or errors.user_code_error(e) or _one_line(e))
  if len(remaining) > 1:
    _fail(f"unexpected arguments {remaining[1:]}: {USAGE}")
  if not _WORKDIR.value:
    _fail(f"--workdir is required: {USAGE}")
  return remaining


def _quiet_library_logs() -> None:
  # Orbax and TFDS log every save, restore and dataset load at INFO; keep progress lines readable.
  # Orbax also logs the traceback of a failed background save, which kd re-raises as one line.
  def keep(record) -> bool:
    if "/orbax/" in record.pathname:
      return record.levelno >= std_logging.CRITICAL
    if "/tensorflow_datasets/" in record.pathname:  # Its warnings are about custom configs.
      return record.levelno >= std_logging.ERROR
    return True

  logging.get_absl_handler().addFilter(keep)


def main(argv: list[str]) -> None:
  del argv
  _quiet_library_logs()
  try:
    distributed.initialize()  # Several processes (Slurm tasks, or KD_COORDINATOR_ADDRESS): one runtime.
    distributed.prepare_dataset(_CONFIG.value)
    experiment.run(_CONFIG.value, _WORKDIR.value, _STAGES.value, wait_for_lock=_WAIT_FOR_LOCK.value,
                   overwrite=_OVERWRITE.value, stage_store=_STAGE_STORE.value)
    distributed.shutdown()
  except UserError as e:
    if _show_tracebacks() and e.__cause__ is not None and errors.user_frame(e.__cause__):
      traceback.print_exception(e.__cause__)
    _fail(str(e))
  except TrainingError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except Interrupted as e:
    print(f"{e}; run the same command again to resume", file=sys.stderr)
    sys.exit(128 + e.signum)  # The shell's convention for "ended by signal N".
  except Exception as e:  # pylint: disable=broad-except
    disk_error = None if _show_tracebacks() else errors.workdir_error_for(e, _WORKDIR.value)
    if disk_error is not None:  # A write outside kd's handlers on a full, read-only or vanished path.
      _fail(str(disk_error))
    line = None if _show_tracebacks() else errors.user_code_error(e)
    if line is None:  # kd's own error, or a traceback asked for: show it whole.
      raise
    print(f"error: {line}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
