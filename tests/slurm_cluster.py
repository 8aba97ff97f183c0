"""A real single-node Slurm cluster for tests, started from nothing and stopped by PID.

`SlurmCluster(scratch).start()` installs Debian's slurm-wlm and munge with apt-get when they are
absent, creates a munge key if there is none, starts munged (unless one is running), writes a
`slurm.conf` into `scratch` (free ports, state and logs there too) and starts slurmctld and slurmd in
the foreground as children of this process. `env()` gives the environment (SLURM_CONF) under which
sbatch, squeue and scontrol talk to it. `stop()` stops the daemons it started, by PID.

    python tests/slurm_cluster.py /tmp/slurm   # starts one and keeps it up until Ctrl-C
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

PACKAGES = ("slurm-wlm", "munge")
MUNGE_KEY = "/etc/munge/munge.key"
MUNGE_PID = "/run/munge/munged.pid"


class ClusterError(RuntimeError):
  """Slurm could not be installed or started here; the message says why."""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(command: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError:
    return False
  return True


def ensure_installed() -> None:
  """apt-get installs slurm-wlm and munge if slurmctld, slurmd or munged is missing."""
  if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged",
                                         "/usr/sbin/munged")):
    return
  if os.geteuid() != 0:
    raise ClusterError("slurm-wlm and munge are not installed and installing them needs root")
  env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
  result = _run(["apt-get", "install", "-y", "-q", *PACKAGES], timeout=600, env=env)
  if result.returncode != 0:
    update = _run(["apt-get", "update", "-q"], timeout=600, env=env)
    result = _run(["apt-get", "install", "-y", "-q", *PACKAGES], timeout=600, env=env)
    if result.returncode != 0:
      raise ClusterError(f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr[-1500:]} "
                         f"(apt-get update: {update.stderr[-500:]})")


class SlurmCluster:
  """One node (this machine) with all its CPUs and 90% of its memory, one `debug` partition."""

  def __init__(self, scratch: str):
    self.scratch = os.path.abspath(scratch)
    self.conf = os.path.join(self.scratch, "slurm.conf")
    self.processes: dict[str, subprocess.Popen] = {}
    self.munged_pid: int | None = None  # Only if this cluster started it.

  def env(self) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": self.conf}

  def _start_munge(self) -> None:
    if not os.path.exists(MUNGE_KEY):
      tool = shutil.which("mungekey") or "/usr/sbin/mungekey"
      result = _run([tool, "--create", "--keyfile", MUNGE_KEY]) if os.path.exists(tool) else None
      if result is None or result.returncode != 0:
        result = _run(["/usr/sbin/create-munge-key", "-f"])
      if result.returncode != 0:
        raise ClusterError(f"cannot create {MUNGE_KEY}: {result.stderr[-500:]}")
    shutil.chown(MUNGE_KEY, "munge", "munge")
    os.chmod(MUNGE_KEY, 0o400)
    os.makedirs("/run/munge", exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if os.path.exists(MUNGE_PID):
      with open(MUNGE_PID) as f:
        pid = int(f.read().strip() or 0)
      if pid and _alive(pid):
        return  # Someone's munged is serving: use it, leave it running.
    result = _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--force"])
    if result.returncode != 0:
      raise ClusterError(f"munged did not start: {result.stderr[-500:]}")
    for _ in range(50):
      if os.path.exists(MUNGE_PID):
        with open(MUNGE_PID) as f:
          text = f.read().strip()
        if text:
          self.munged_pid = int(text)
          return
      time.sleep(0.1)
    raise ClusterError(f"munged started but wrote no {MUNGE_PID}")

  def _write_conf(self) -> None:
    host = socket.gethostname().split(".")[0]
    with open("/proc/meminfo") as f:
      total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    cpus = os.cpu_count()
    for sub in ("state", "spool", "log"):
      os.makedirs(os.path.join(self.scratch, sub), exist_ok=True)
    s = self.scratch
    with open(self.conf, "w") as f:
      f.write(f"""\
ClusterName=kdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={s}/state
SlurmdSpoolDir={s}/spool
SlurmctldPidFile={s}/slurmctld.pid
SlurmdPidFile={s}/slurmd.pid
SlurmctldLogFile={s}/log/slurmctld.log
SlurmdLogFile={s}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
KillWait=5
JobRequeue=1
ReturnToService=2
MailProg=/bin/true
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={int(total_kb / 1024 * 0.9)} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")

  def start(self, timeout_s: float = 60) -> "SlurmCluster":
    ensure_installed()
    self._start_munge()
    self._write_conf()
    for daemon in ("slurmctld", "slurmd"):
      log = open(os.path.join(self.scratch, "log", f"{daemon}.stderr"), "w")
      self.processes[daemon] = subprocess.Popen([daemon, "-D", "-f", self.conf], stdout=log, stderr=log,
                                                env=self.env(), start_new_session=True)
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
      for daemon, process in self.processes.items():
        if process.poll() is not None:
          self.stop()
          raise ClusterError(f"{daemon} exited with status {process.returncode}: see "
                             f"{self.scratch}/log/{daemon}.log and {daemon}.stderr")
      result = _run(["sinfo", "-h", "-o", "%T"], env=self.env(), timeout=30)
      state = result.stdout.strip()
      if result.returncode == 0 and state in ("idle", "mixed", "allocated"):
        return self
      time.sleep(0.3)
    self.stop()
    raise ClusterError(f"the node did not become idle within {timeout_s:.0f} s (sinfo says {state!r}); see "
                       f"{self.scratch}/log")

  def stop(self) -> None:
    """Stops the daemons this cluster started: slurmd, slurmctld, then munged (by PID)."""
    for daemon in ("slurmd", "slurmctld"):
      process = self.processes.pop(daemon, None)
      if process is None or process.poll() is not None:
        continue
      process.send_signal(signal.SIGTERM)
      try:
        process.wait(timeout=15)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if self.munged_pid and _alive(self.munged_pid):
      os.kill(self.munged_pid, signal.SIGTERM)
      self.munged_pid = None


if __name__ == "__main__":
  cluster = SlurmCluster(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kd-slurm").start()
  print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C stops the cluster", flush=True)
  try:
    while True:
      time.sleep(1)
  except KeyboardInterrupt:
    cluster.stop()
