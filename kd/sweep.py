r"""Sweeps: an experiment's table of runs, expanded into one workdir per variant and seed, then run.

    python -m kd.sweep --config=experiments/methods_digits.py[:arg] --workdir=runs/sweep \
        [--backend=local|slurm] [--parallel=N] [--grid=key=v1,v2 ...] [--seeds=0,1,2]

The experiment file lists the variants of its table in `sweep(add)` (or `sweep(add, arg)`, which
also receives the `:arg` of --config). Each call of

    add(arg=None, *, name=None, **overrides)

is one variant: `get_config(arg)` (None: the command line's `:arg`) with `overrides`, dotted config
keys (`add(**{"stages.kd.method.temperature": 2.0})`), applied on top. `name` names the variant's
folder; without it the name is built from the overrides' last key parts, e.g.
`stage_order=teacher-kd,temperature=2`. Each `--grid=dotted.key=v1,v2` multiplies every variant by
those values (parsed as Python literals, else strings). A file without `sweep` has one variant.

Every variant runs once per seed of its config (`config.seeds`, or `--seeds`): run `<variant>/seed_<n>`
trains the config's `stage_order` for that seed in `<workdir>/<variant>/seed_<n>/<stage>`, so a variant's
folder is laid out like a `kd.main` workdir. `<workdir>/sweep.json` is the manifest: the config file,
the flags, and every run with its arg, overrides, seed and folder. A run whose stages all have a
`result.json` is skipped; an unfinished one resumes from its checkpoints. `python -m kd.report <workdir>`
tabulates the finished runs.

Backends: `local` runs `--parallel` runs at once (default 1) as subprocesses (log: `<run>/run.log`);
`slurm` submits one job array through submitit (`--parallel` tasks at once, default all; logs:
`<workdir>/slurm/<job id>/`), whose tasks are requeued on preemption or timeout and resume from their
checkpoints (kd.sweep_slurm).
"""

import ast
import dataclasses
import inspect
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable

from kd.errors import ConfigError
from kd.errors import refused_variant
from kd.errors import UserError

MANIFEST = "sweep.json"
STAGE_STORE = "stages"  # <workdir>/stages/<identity digest>: stages shared by the runs.
RUN_LOG = "run.log"


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep: a variant of the experiment and one seed."""

  name: str  # "<variant>/seed_<n>", also its folder under the sweep's workdir.
  variant: str
  base: str  # The variant's name before --grid values were added: the key of REPORTED.
  arg: str | None
  overrides: dict[str, Any]
  seed: int
  stages: tuple[str, ...]

  def run_dir(self, workdir: str) -> str:
    return os.path.join(workdir, self.name)

  def variant_dir(self, workdir: str) -> str:
    return os.path.join(workdir, self.variant)

  def is_finished(self, workdir: str) -> bool:
    return all(os.path.exists(os.path.join(self.run_dir(workdir), stage, "result.json"))
               for stage in self.stages)


# Config file and variants.


def split_config_spec(spec: str) -> tuple[str, str | None]:
  """`experiments/x.py:arg` -> ("experiments/x.py", "arg"); no colon -> arg None."""
  path, _, arg = spec.partition(":")
  return path, (arg or None)


def load_module(path: str):
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path} does not exist: give the path of an experiment file, e.g. "
                      "--config=experiments/methods_digits.py")
  folder = os.path.dirname(os.path.abspath(path))  # A config may import files beside it, as in kd.main.
  if folder not in sys.path:
    sys.path.insert(0, folder)
  spec = importlib.util.spec_from_file_location("kd_experiment_sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_value(text: str) -> Any:
  """A flag's value: a Python literal (2, 0.5, (1, 2), True) if it parses as one, else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_grid(items: list[str]) -> list[tuple[str, list[Any]]]:
  """`["a.b=1,2", "c=x"]` -> [("a.b", [1, 2]), ("c", ["x"])]. Tuple values: `--grid='k=(1,2);(3,4)'`."""
  grid = []
  for item in items:
    key, sep, values = item.partition("=")
    if not sep or not key or not values:
      raise ConfigError(f"--grid={item!r} must be key=v1,v2 (a dotted config key and comma-separated "
                        "values), e.g. --grid=stages.kd.method.temperature=2,4")
    separator = ";" if ";" in values else ","
    grid.append((key, [parse_value(v) for v in values.split(separator)]))
  return grid


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return format(value, "g")
  if isinstance(value, (tuple, list)):
    return "-".join(_format_value(v) for v in value)
  return str(value)


def variant_name(arg: str | None, default_arg: str | None, overrides: dict[str, Any]) -> str:
  """A readable folder name: the arg (when not the command line's) and `key=value` per override.

  Keys are shortened to their last dotted part, or as many parts as keep them distinct.
  """
  keys = list(overrides)
  parts = []
  for key in keys:
    pieces = key.split(".")
    for depth in range(1, len(pieces) + 1):
      short = ".".join(pieces[-depth:])
      if sum(other.split(".")[-depth:] == pieces[-depth:] for other in keys) == 1:
        break
    parts.append(f"{short}={_format_value(overrides[key])}")
  if arg is not None and arg != default_arg:
    parts.insert(0, arg)
  name = ",".join(parts) or "default"
  return re.sub(r"[^A-Za-z0-9._=,+-]", "-", name)


def expand(config_spec: str, grid: list[tuple[str, list[Any]]] = (),
           seeds: tuple[int, ...] | None = None) -> list[Run]:
  """The runs of a sweep: the experiment's `sweep(add)` variants x the grid x the seeds.

  Every variant's config is built and validated here, so a bad key or value fails before anything
  runs, with a ConfigError that names the variant.
  """
  from kd import config as config_lib  # pylint: disable=g-import-not-at-top  # Keeps `--help` light.
  from kd import experiment  # pylint: disable=g-import-not-at-top

  path, default_arg = split_config_spec(config_spec)
  module = load_module(path)
  variants: list[tuple[str | None, str | None, dict[str, Any]]] = []  # (arg, name, overrides)

  def add(arg: str | None = None, *, name: str | None = None, **overrides) -> None:
    variants.append((default_arg if arg is None else arg, name, dict(overrides)))

  sweep_fn: Callable | None = getattr(module, "sweep", None)
  if sweep_fn is None:
    add()
  elif len(inspect.signature(sweep_fn).parameters) >= 2:
    sweep_fn(add, default_arg)
  else:
    sweep_fn(add)
  if not variants:
    raise ConfigError(f"sweep(add) in {path} added no variant: call add(...) at least once")

  grid_keys = [key for key, _ in grid]
  runs, names = [], {}
  for (arg, name, overrides), values in itertools.product(variants, itertools.product(
      *[values for _, values in grid])):
    base = name or variant_name(arg, default_arg, overrides)
    grid_overrides = dict(zip(grid_keys, values))
    overrides = {**overrides, **grid_overrides}
    variant = name or variant_name(arg, default_arg, overrides)
    if name and grid_keys:
      variant = variant_name(name, None, grid_overrides)
    if variant in names:
      if names[variant] == (arg, overrides):
        continue  # The same variant added twice: run it once.
      raise ConfigError(f"two variants of {path} are both named {variant!r}: give add(..., name=...) "
                        "distinct names")
    names[variant] = (arg, overrides)
    try:
      config = experiment.load_config(path, arg, validate=False, **overrides)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
      refused = refused_variant(e, path)
      if refused and arg == default_arg:  # The command line's :arg.
        raise ConfigError(f"--config={config_spec}: {refused}") from e
      if refused:
        raise ConfigError(f"sweep variant {variant!r}, add({arg!r}) in sweep() of {path}: {refused}") from e
      raise ConfigError(f"sweep variant {variant!r}: {e}; check the keys and value types given to "
                        "add() and --grid") from e
    if seeds is not None:
      config.seeds = tuple(seeds)
    try:
      config_lib.validate(config)
    except ConfigError as e:
      raise ConfigError(f"sweep variant {variant!r}: {e}") from e
    for seed in config.seeds:
      runs.append(Run(name=f"{variant}/seed_{seed}", variant=variant, base=base, arg=arg,
                      overrides=overrides, seed=seed, stages=tuple(config.stage_order)))
  return runs


# The manifest.


def _jsonable(value: Any) -> Any:
  if isinstance(value, tuple):
    return {"__tuple__": [_jsonable(v) for v in value]}
  if isinstance(value, list):
    return [_jsonable(v) for v in value]
  return value


def _from_json(value: Any) -> Any:
  if isinstance(value, dict) and set(value) == {"__tuple__"}:
    return tuple(_from_json(v) for v in value["__tuple__"])
  if isinstance(value, list):
    return [_from_json(v) for v in value]
  return value


def write_manifest(workdir: str, config_spec: str, runs: list[Run], **flags) -> str:
  """Writes `<workdir>/sweep.json` (atomically) and returns its path."""
  path, arg = split_config_spec(config_spec)
  manifest = {
      "config": os.path.abspath(path),
      "arg": arg,
      "flags": flags,
      "runs": [{"name": r.name, "variant": r.variant, "base": r.base, "arg": r.arg, "seed": r.seed,
                "stages": list(r.stages), "overrides": {k: _jsonable(v) for k, v in r.overrides.items()}}
               for r in runs],
  }
  os.makedirs(workdir, exist_ok=True)
  target = os.path.join(workdir, MANIFEST)
  with open(target + ".tmp", "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(target + ".tmp", target)
  return target


def read_manifest(workdir: str) -> tuple[dict[str, Any], list[Run]]:
  path = os.path.join(workdir, MANIFEST)
  if not os.path.exists(path):
    raise UserError(f"{workdir} holds no {MANIFEST}: give the --workdir of a sweep made by python -m kd.sweep")
  with open(path) as f:
    manifest = json.load(f)
  runs = [Run(name=r["name"], variant=r["variant"], base=r["base"], arg=r["arg"], seed=r["seed"],
              stages=tuple(r["stages"]), overrides={k: _from_json(v) for k, v in r["overrides"].items()})
          for r in manifest["runs"]]
  return manifest, runs


# Running one run (in a subprocess, or a Slurm task).


def run_one(workdir: str, name: str) -> dict[str, Any]:
  """Trains run `name` of the sweep in `workdir` (stages already finished are skipped).

  Returns the result of its last stage.
  """
  from kd import experiment  # pylint: disable=g-import-not-at-top
  from kd import train  # pylint: disable=g-import-not-at-top

  manifest, runs = read_manifest(workdir)
  run = next((r for r in runs if r.name == name), None)
  if run is None:
    raise UserError(f"no run {name!r} in {os.path.join(workdir, MANIFEST)}; runs: {[r.name for r in runs]}")
  config = experiment.load_config(manifest["config"], run.arg, validate=False, **run.overrides)
  config.seeds = (run.seed,)
  variant_dir = run.variant_dir(workdir)
  experiment.check(config, variant_dir, list(config.stage_order))
  result = None
  for stage in config.stage_order:  # Stages of the same identity are shared by the runs (kd.fingerprint).
    result = train.train_stage(config, stage, train.seed_dir(variant_dir, run.seed), seed=run.seed,
                               store=os.path.join(workdir, STAGE_STORE))
  return result


def prepare_datasets(config_path: str, runs: list[Run]) -> None:
  """Prepares each variant's dataset once, here, so that runs started together do not race to do it."""
  from kd import data  # pylint: disable=g-import-not-at-top
  from kd import experiment  # pylint: disable=g-import-not-at-top

  seen = set()
  for run in runs:
    if run.variant in seen:
      continue
    seen.add(run.variant)
    config = experiment.load_config(config_path, run.arg, validate=False, **run.overrides)
    data.load_spec(config.data.name, config.data.data_dir)


# Backends.


def _print_status(workdir: str, runs: list[Run], failed: dict[str, str]) -> None:
  for run in runs:
    status = "done" if run.is_finished(workdir) else ("FAILED " + failed[run.name] if run.name in failed
                                                      else "unfinished")
    print(f"  {status:10s} {run.name}", flush=True)


def run_local(workdir: str, runs: list[Run], parallel: int = 1,
              env: dict[str, str] | None = None) -> dict[str, str]:
  """Runs the unfinished runs as subprocesses, `parallel` at a time; returns {name: why} of failures."""
  pending = [run for run in runs if not run.is_finished(workdir)]
  for run in runs:
    if run.is_finished(workdir):
      print(f"[sweep] {run.name}: finished, skipped", flush=True)
  running: dict[str, tuple[subprocess.Popen, Any]] = {}
  failed = {}
  while pending or running:
    while pending and len(running) < parallel:
      run = pending.pop(0)
      os.makedirs(run.run_dir(workdir), exist_ok=True)
      log = open(os.path.join(run.run_dir(workdir), RUN_LOG), "a")
      command = [sys.executable, "-m", "kd.sweep", f"--run={run.name}", f"--workdir={workdir}"]
      running[run.name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})}), log)
      print(f"[sweep] {run.name}: started (log: {os.path.join(run.run_dir(workdir), RUN_LOG)})", flush=True)
    time.sleep(0.2)
    for name, (process, log) in list(running.items()):
      if process.poll() is None:
        continue
      log.close()
      del running[name]
      if process.returncode == 0:
        print(f"[sweep] {name}: finished", flush=True)
      else:
        failed[name] = f"exit status {process.returncode}"
        print(f"[sweep] {name}: FAILED with exit status {process.returncode}; see its {RUN_LOG}", flush=True)
  return failed


def setup_logging() -> None:
  """kd.main's logging (progress lines at INFO, library chatter filtered) in a worker process."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from kd import main as kd_main  # pylint: disable=g-import-not-at-top

  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  kd_main._quiet_library_logs()  # pylint: disable=protected-access


def _worker(workdir: str, name: str) -> int:
  """One run in this process, with kd.main's exit statuses."""
  from kd.errors import Interrupted  # pylint: disable=g-import-not-at-top
  from kd.errors import TrainingError  # pylint: disable=g-import-not-at-top

  setup_logging()
  try:
    run_one(workdir, name)
  except TrainingError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except Interrupted as e:
    print(f"{e}; run the sweep again to resume", file=sys.stderr)
    return 128 + e.signum
  return 0


def main(argv: list[str] | None = None) -> int:
  """The command line (see the module docstring). Returns the exit status."""
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="python -m kd.sweep", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", help="experiments/<file>.py[:arg]")
  parser.add_argument("--workdir", required=True, help="the sweep's folder")
  parser.add_argument("--backend", default="local", choices=("local", "slurm"))
  parser.add_argument("--parallel", type=int, default=None, help="runs at once (local: processes, default "
                      "1; slurm: array tasks at once, default 0: no limit)")
  parser.add_argument("--grid", action="append", default=[], help="dotted.key=v1,v2 (repeatable)")
  parser.add_argument("--seeds", default=None, help="comma-separated seeds, instead of config.seeds")
  parser.add_argument("--detach", action="store_true", help="slurm: submit and return, without waiting")
  parser.add_argument("--dry_run", action="store_true", help="print the runs and write the manifest only")
  parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # One run, in a worker process.
  parser.add_argument("--slurm_partition", default=None)
  parser.add_argument("--slurm_timeout_min", type=int, default=60)
  parser.add_argument("--slurm_cpus_per_task", type=int, default=1)
  parser.add_argument("--slurm_mem_gb", type=float, default=None)
  parser.add_argument("--slurm_gpus_per_task", type=int, default=0)
  args = parser.parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  try:
    if args.run is not None:
      return _worker(workdir, args.run)
    if not args.config:
      raise ConfigError("--config is required: python -m kd.sweep --config=experiments/<file>.py[:arg] "
                        "--workdir=<dir>")
    if args.parallel is None:
      args.parallel = 1 if args.backend == "local" else 0
    if args.parallel < 0 or (args.backend == "local" and args.parallel < 1):
      raise ConfigError(f"--parallel={args.parallel} must be >= 1 for the local backend (>= 0 for slurm)")
    seeds = None
    if args.seeds:
      try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
      except ValueError:
        raise ConfigError(f"--seeds={args.seeds!r} must be comma-separated integers, e.g. --seeds=0,1,2") from None
    runs = expand(args.config, parse_grid(args.grid), seeds)
    write_manifest(workdir, args.config, runs, grid=args.grid, seeds=args.seeds, backend=args.backend)
    print(f"[sweep] {len(runs)} runs in {workdir} ({sum(r.is_finished(workdir) for r in runs)} finished)",
          flush=True)
    if args.dry_run:
      _print_status(workdir, runs, {})
      return 0
    if not all(run.is_finished(workdir) for run in runs):
      prepare_datasets(split_config_spec(args.config)[0], runs)
    if args.backend == "local":
      failed = run_local(workdir, runs, args.parallel)
    else:
      from kd import sweep_slurm  # pylint: disable=g-import-not-at-top
      failed = sweep_slurm.run_slurm(
          workdir, runs, parallel=args.parallel, partition=args.slurm_partition, wait=not args.detach,
          timeout_min=args.slurm_timeout_min, cpus_per_task=args.slurm_cpus_per_task,
          mem_gb=args.slurm_mem_gb, gpus_per_task=args.slurm_gpus_per_task)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print("[sweep] status:", flush=True)
  _print_status(workdir, runs, failed)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
