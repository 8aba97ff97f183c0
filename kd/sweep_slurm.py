"""The Slurm backend of `kd.sweep`: the sweep's unfinished runs as one job array, through submitit.

Each array task trains one run (`kd.sweep.run_one`) and is `submitit.helpers.Checkpointable`: on
preemption or before its time limit, Slurm (through submitit, `--signal=USR2@90`) warns the task; the
trainer saves a checkpoint at the current step and stops, and the task is requeued, to resume from
that checkpoint. A task killed without warning resumes from its latest periodic checkpoint when the
sweep is submitted again.

Logs: `<workdir>/slurm/<array id>_<task>/<array id>_<task>_0_log.out` and `.err` (submitit), and
`<workdir>/slurm_jobs.json` maps every run to its job id.
"""

import json
import os
import signal
import subprocess
import time
from typing import Any

import submitit

from kd import sweep as sweep_lib
from kd.errors import Interrupted

JOBS_JSON = "slurm_jobs.json"
# After a SIGTERM (preemption) has stopped training, how long a task waits for submitit's USR2,
# which requeues it. Slurm sends SIGKILL KillWait seconds after SIGTERM anyway.
_WAIT_FOR_REQUEUE_S = 60


class RunTask(submitit.helpers.Checkpointable):
  """One sweep run as a Slurm task: `RunTask()(workdir, name)`; requeued (same arguments) when preempted."""

  def __call__(self, workdir: str, name: str) -> dict[str, Any]:
    from kd import sweep  # pylint: disable=g-import-not-at-top,reimported

    sweep.setup_logging()
    warning_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
    requeue = signal.getsignal(warning_signal)  # submitit's: checkpoint() this task, requeue it, exit.
    outside_training = signal.getsignal(signal.SIGTERM)  # submitit's: ignore SIGTERM.
    warned = []

    def on_warning(signum, frame):
      warned.append(signum)
      if signal.getsignal(signal.SIGTERM) is outside_training:
        requeue(signum, frame)
      else:  # The trainer's handler: it saves a checkpoint after the current step and stops.
        signal.raise_signal(signal.SIGTERM)

    signal.signal(warning_signal, on_warning)
    try:
      return sweep.run_one(workdir, name)
    except Interrupted:
      if warned:
        requeue(warning_signal, None)
      # SIGTERM alone (Slurm preempts with SIGTERM, then submitit's warning): the checkpoint is
      # saved; wait for the warning, which requeues this task.
      deadline = time.monotonic() + _WAIT_FOR_REQUEUE_S
      while time.monotonic() < deadline:
        time.sleep(0.2)
      raise


def _queued_job_ids() -> set[str] | None:
  """Job ids Slurm still knows as pending or running (array tasks as `<id>_<task>`); None if squeue failed."""
  try:
    output = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60,
                            check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return {line.strip() for line in output.splitlines() if line.strip()}


def run_slurm(workdir: str, runs: list[sweep_lib.Run], *, parallel: int = 0, partition: str | None = None,
              timeout_min: int = 60, cpus_per_task: int = 1, mem_gb: float | None = None,
              gpus_per_task: int = 0, wait: bool = True, poll_s: float = 1.0) -> dict[str, str]:
  """Submits the unfinished runs as one job array and (if `wait`) waits for them.

  Returns:
    {run name: why} for the runs that failed (empty when all finished, or when not waiting).
  """
  pending = [run for run in runs if not run.is_finished(workdir)]
  for run in runs:
    if run.is_finished(workdir):
      print(f"[sweep] {run.name}: finished, skipped", flush=True)
  if not pending:
    return {}
  executor = submitit.AutoExecutor(folder=os.path.join(workdir, "slurm", "%j"), cluster="slurm")
  parameters = {"timeout_min": timeout_min, "cpus_per_task": cpus_per_task, "tasks_per_node": 1,
                "nodes": 1, "name": "kd-sweep-" + os.path.basename(workdir.rstrip("/")),
                "slurm_array_parallelism": parallel or len(pending)}
  if partition:
    parameters["slurm_partition"] = partition
  if mem_gb:
    parameters["mem_gb"] = mem_gb
  if gpus_per_task:
    parameters["gpus_per_node"] = gpus_per_task
  executor.update_parameters(**parameters)
  jobs = executor.map_array(RunTask(), [workdir] * len(pending), [run.name for run in pending])
  job_ids = {run.name: job.job_id for run, job in zip(pending, jobs)}
  with open(os.path.join(workdir, JOBS_JSON), "w") as f:
    json.dump(job_ids, f, indent=2)
  for run, job in zip(pending, jobs):
    print(f"[sweep] {run.name}: submitted as Slurm job {job.job_id} (logs: {job.paths.stdout})", flush=True)
  if not wait:
    return {}
  return _wait(workdir, dict(zip((run.name for run in pending), jobs)), poll_s)


def _wait(workdir: str, jobs: dict[str, Any], poll_s: float) -> dict[str, str]:
  """Waits for every job to write its result (or to leave the queue without one)."""
  failed, gone_since = {}, {}
  remaining = dict(jobs)
  while remaining:
    time.sleep(poll_s)
    queued = _queued_job_ids()
    for name, job in list(remaining.items()):
      if job.paths.result_pickle.exists():
        del remaining[name]
        try:
          job.result()
          print(f"[sweep] {name}: finished (Slurm job {job.job_id})", flush=True)
        except Exception as e:  # pylint: disable=broad-except  # submitit re-raises the task's error.
          failed[name] = f"Slurm job {job.job_id} failed ({type(e).__name__}); see {job.paths.stderr}"
          print(f"[sweep] {name}: FAILED; see {job.paths.stderr}", flush=True)
      elif queued is not None and job.job_id not in queued:
        # Out of the queue without a result: killed (e.g. scancel, out of memory), unless the result is
        # being written right now; give the file system a few polls.
        gone_since.setdefault(name, time.monotonic())
        if time.monotonic() - gone_since[name] > max(10 * poll_s, 10):
          del remaining[name]
          failed[name] = (f"Slurm job {job.job_id} left the queue without a result; see {job.paths.stderr}; "
                          "submit the sweep again to resume it")
          print(f"[sweep] {name}: FAILED, {failed[name]}", flush=True)
      else:
        gone_since.pop(name, None)
  return failed
