"""The Slurm backend of kd.sweep against a real single-node Slurm (slurm-wlm + munge, started here).

Two runs as one job array; the long one is preempted the way submitit's `job._interrupt()` does it
(SIGTERM, then the USR2 warning), is requeued by its task, and resumes from the checkpoint its trainer
saved on the signal.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO
import slurm_cluster

TINY = textwrap.dedent("""
    from kd.config import base_config, stage_config
    from kd.methods import method_config

    def get_config(arg=None):
      config = base_config()
      config.data.batch_size = 16
      mlp = {"name": "cnn", "channels": (), "hidden": 16}
      config.stages.teacher = stage_config(mlp, method_config("supervised"), num_steps=6)
      config.stage_order = ("teacher",)
      config.report.baseline = config.report.student = "teacher"
      config.log_every_steps = 100
      config.checkpoint.every_steps = 100_000
      return config

    def sweep(add):
      add(name="short")
      add(name="long", **{"stages.teacher.num_steps": 3000})
""")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  if os.geteuid() != 0:
    pytest.skip("starting Slurm daemons needs root")
  try:
    running = slurm_cluster.SlurmCluster(str(tmp_path_factory.mktemp("slurm"))).start()
  except slurm_cluster.ClusterError as e:
    pytest.fail(f"cannot start a Slurm cluster here: {e}")
  yield running
  running.stop()


def _squeue(cluster, job_id: str) -> str:
  result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True,
                          env=cluster.env(), timeout=30)
  return result.stdout.strip()


def test_slurm_sweep_with_preemption_and_resume(cluster, tmp_path):
  config_path = tmp_path / "tiny.py"
  config_path.write_text(TINY)
  workdir = tmp_path / "sweep"
  sweep = subprocess.Popen([sys.executable, "-m", "kd.sweep", f"--config={config_path}", f"--workdir={workdir}",
                            "--backend=slurm", "--parallel=2"], cwd=REPO, env=cluster.env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    jobs_json = workdir / "slurm_jobs.json"
    long_dir = workdir / "long" / "seed_0" / "teacher"
    deadline = time.monotonic() + 120
    # Preempt the long run once it is training (its first progress line is logged).
    while not (long_dir / "metrics.jsonl").exists() or not (long_dir / "metrics.jsonl").read_text():
      assert sweep.poll() is None, sweep.stdout.read()
      assert time.monotonic() < deadline, "the long run did not start training within 120 s"
      time.sleep(0.2)
    job_id = json.loads(jobs_json.read_text())["long/seed_0"]
    for signal_name in ("SIGTERM", "USR2"):  # What submitit's job._interrupt() sends.
      subprocess.run(["scancel", "--signal", signal_name, job_id], check=True, env=cluster.env(), timeout=30)
    # The task requeues itself; Slurm then holds it for 120 s (BeginTime): release it now.
    while "PENDING" not in _squeue(cluster, job_id):
      assert time.monotonic() < deadline, f"job {job_id} was not requeued: {_squeue(cluster, job_id)!r}"
      time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, env=cluster.env(),
                   timeout=30)
    output, _ = sweep.communicate(timeout=180)
  finally:
    if sweep.poll() is None:
      sweep.kill()
  assert sweep.returncode == 0, output[-4000:]
  assert "short/seed_0: finished" in output and "long/seed_0: finished" in output, output[-4000:]
  for name, steps in (("short", 6), ("long", 3000)):
    result = json.loads((workdir / name / "seed_0" / "teacher" / "result.json").read_text())
    assert result["step"] == steps
  # Logs per run, per array task; the long run's shows the signal, the saved step and the resume.
  array_id = job_id.split("_")[0]
  logs = "".join(open(os.path.join(workdir, "slurm", folder, file)).read()
                 for folder in os.listdir(workdir / "slurm") if folder.startswith(array_id)
                 for file in os.listdir(workdir / "slurm" / folder) if file.endswith(("log.err", "log.out")))
  stopped = re.search(r"saved a checkpoint at step (\d+)", logs)
  assert stopped, logs[-4000:]
  assert f"resuming from step {stopped.group(1)}" in logs, logs[-4000:]
  assert 0 < int(stopped.group(1)) < 3000
  assert "requeued" in logs.lower(), logs[-4000:]
