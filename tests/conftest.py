"""Shared fixtures. Tests prepare datasets in a private TFDS folder, never in the user's."""

import os
import subprocess
import sys
import tempfile

# Before anything imports TFDS: it reads TFDS_DATA_DIR once. Each pytest-xdist worker (`make test` runs
# two) prepares its datasets in its own folder, so two workers never build the same dataset at once.
if "TFDS_DATA_DIR" not in os.environ or os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="kd-tests-tfds-")
# One XLA compilation cache for the session, shared with the subprocesses the tests start: many tests
# compile the same small programs (e.g. the quickstart's steps), which later tests load from disk.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="kd-tests-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import pytest  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
  """Runs `python -m kd.main ARGS` in a subprocess, as a user would."""
  return subprocess.run([sys.executable, "-m", "kd.main", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory) -> str:
  """A finished smoke run of the quickstart (all three stages and the report), made once."""
  workdir = str(tmp_path_factory.mktemp("quickstart-smoke"))
  result = run_main("--config=experiments/quickstart.py:smoke", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir
