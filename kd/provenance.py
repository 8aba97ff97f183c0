"""What produced a run: resolved config, code version, packages, devices, seeds."""

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import jax

from kd.errors import WorkdirError

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets",
            "ml-collections", "numpy", "absl-py", "kd")


def git_commit() -> dict[str, str | bool | None]:
  """The commit of the `kd` source tree and whether it had uncommitted changes."""
  source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def git(*args):
    return subprocess.run(["git", "-C", source, *args], capture_output=True, text=True, timeout=10)

  try:
    head = git("rev-parse", "HEAD")
    if head.returncode:
      return {"commit": None, "dirty": None}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def collect(config_dict: dict, seed: int) -> dict:
  devices = jax.devices()
  return {
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": sys.argv,
      "config": config_dict,
      "seed": seed,
      "git": git_commit(),
      "packages": package_versions(),
      "python": platform.python_version(),
      "platform": platform.platform(),
      "devices": {"backend": jax.default_backend(), "kind": devices[0].device_kind,
                  "count": len(devices), "processes": jax.process_count()},
  }


def record(directory: str, config_dict: dict, seed: int, sources: dict | None = None) -> None:
  """Writes `<directory>/provenance.json`; a resumed run appends itself to its `resumes` list.

  `sources` says where weights from outside the run came from (an external teacher, `init_from`),
  with the SHA-256 of their variables. A write that fails (full or read-only disk) raises WorkdirError.
  """
  path = os.path.join(directory, "provenance.json")
  entry = collect(config_dict, seed)
  if sources:
    entry["sources"] = sources
  if os.path.exists(path):
    with open(path) as f:
      existing = json.load(f)
    existing.setdefault("resumes", []).append(entry)
    entry = existing
  try:
    os.makedirs(directory, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(entry, f, indent=2, default=str)
    os.replace(path + ".tmp", path)
  except OSError as e:  # A full or read-only disk: the previous record stays as it was.
    with contextlib.suppress(OSError):
      os.remove(path + ".tmp")
    raise WorkdirError.from_os_error(e, directory) from e
