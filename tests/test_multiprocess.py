"""Two processes over loopback (JAX's CPU collectives) train like one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

from conftest import REPO
from kd import checkpoint
from kd import data

TINY = textwrap.dedent("""
    from kd.config import base_config, stage_config
    from kd.methods import method_config

    def get_config(arg=None):
      config = base_config()
      config.data.batch_size = 32
      config.data.eval_batch_size = 64
      teacher, student = {"name": "cnn", "channels": (), "hidden": 64}, {"name": "cnn", "channels": (8,), "hidden": 16}
      config.stages.teacher = stage_config(teacher, method_config("supervised"), num_steps=6)
      config.stages.student = stage_config(student, method_config("hinton_kd"), teacher="teacher", num_steps=6)
      config.stage_order = ("teacher", "student")
      # Never run: no report card at the end (its latency measurements would double this test's time).
      config.stages.baseline = stage_config(student, method_config("supervised"), num_steps=6)
      config.log_every_steps = 1
      config.checkpoint.every_steps = 3
      return config
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _main_command(config_path, workdir):
  # `timeout -k`: a process stuck at exit must not hang the test suite.
  return ["timeout", "-k", "5", "300", sys.executable, "-m", "kd.main", f"--config={config_path}",
          f"--workdir={workdir}"]


def test_two_processes_match_one(tmp_path):
  config_path = tmp_path / "tiny.py"
  config_path.write_text(TINY)
  data.load_spec("digits")  # Prepared once here (in the tests' TFDS folder), not by three processes at once.
  # One CPU device per process. Three processes compile on two cores: LLVM's optimisations would take
  # most of this test's time and buy nothing for six steps (the values are the same up to rounding).
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
         "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  address = f"127.0.0.1:{_free_port()}"
  processes = [subprocess.Popen(_main_command(config_path, tmp_path / "two"), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env={**env, "KD_COORDINATOR_ADDRESS": address, "KD_NUM_PROCESSES": "2",
                                     "KD_PROCESS_ID": str(i)}) for i in range(2)]
  single = subprocess.run(_main_command(config_path, tmp_path / "one"), cwd=REPO, capture_output=True, text=True,
                          env=env)
  outputs = [process.communicate()[0] for process in processes]
  assert single.returncode == 0, single.stderr[-3000:]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  assert "process 0 of 2, 1 local of 2 devices" in outputs[0] and "process 1 of 2" in outputs[1]
  for stage in ("teacher", "student"):
    curves = []
    for run in ("one", "two"):
      rows = [json.loads(line) for line in open(tmp_path / run / "seed_0" / stage / "metrics.jsonl")]
      curves.append([row["train/loss"] for row in rows if "train/loss" in row])
    assert len(curves[0]) == 6
    np.testing.assert_allclose(curves[1], curves[0], atol=1e-5)
    one, two = (jax.tree.map(np.asarray, checkpoint.load_model(str(tmp_path / run / "seed_0" / stage)).variables)
                for run in ("one", "two"))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
      np.testing.assert_allclose(b, a, atol=1e-5)
    # Orbax wrote the multi-process checkpoints (steps 3 and 6) in the shared workdir.
    assert sorted(os.listdir(tmp_path / "two" / "seed_0" / stage / "checkpoints")) == ["3", "6"]
