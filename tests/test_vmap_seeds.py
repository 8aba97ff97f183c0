"""S seeds x a temperature grid in one vmapped program match separate runs of the same stage."""

import os
import shutil

import jax
import numpy as np
import pytest

from kd import checkpoint
from kd import train
from kd import vmap_seeds
from kd.config import base_config
from kd.config import stage_config
from kd.errors import ConfigError
from kd.methods import method_config


TINY = """
from kd.config import base_config, stage_config
from kd.methods import method_config

def get_config():
  config = base_config()
  teacher, student = {"name": "cnn", "channels": (), "hidden": 16}, {"name": "cnn", "channels": (), "hidden": 8}
  config.stages.teacher = stage_config(teacher, method_config("supervised"), num_steps=2)
  config.stages.student = stage_config(student, method_config("hinton_kd"), teacher="teacher", num_steps=2)
  config.stage_order = ("teacher", "student")
  config.report.baseline = "teacher"
  return config
"""


def _config():
  config = base_config()
  config.data.batch_size = 32
  teacher, student = {"name": "cnn", "channels": (), "hidden": 64}, {"name": "cnn", "channels": (8,), "hidden": 16}
  config.stages.teacher = stage_config(teacher, method_config("supervised"), num_steps=6)
  config.stages.student = stage_config(student, method_config("hinton_kd", temperature=4.0), teacher="teacher",
                                       num_steps=6)
  config.stage_order = ("teacher", "student")
  config.report.baseline = "teacher"
  config.log_every_steps = 6
  config.checkpoint.every_steps = 6
  return config


def test_vmapped_members_match_separate_runs(tmp_path):
  config = _config()
  # One teacher, shared by the separate runs (seeds 0 and 1) and by every vmapped member.
  train.train_stage(config, "teacher", str(tmp_path / "seed_0"), seed=0)
  shutil.copytree(tmp_path / "seed_0" / "teacher", tmp_path / "seed_1" / "teacher")
  for seed in (0, 1):
    train.train_stage(config, "student", str(tmp_path / f"seed_{seed}"), seed=seed)
  result = vmap_seeds.train_members(config, "student", str(tmp_path / "seed_0"), seeds=(0, 1),
                                    grid={"temperature": (4.0, 2.0)})
  assert [(m["seed"], m["temperature"]) for m in result["members"]] == [(0, 4.0), (0, 2.0), (1, 4.0), (1, 2.0)]
  for index, member in enumerate(result["members"]):
    separate = jax.tree.map(np.asarray, checkpoint.load_model(str(tmp_path / f"seed_{member['seed']}" /
                                                                  "student")).variables)
    vmapped = jax.tree.map(lambda x, i=index: np.asarray(x)[i], result["variables"])
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(separate), jax.tree.leaves(vmapped)))
    if member["temperature"] == 4.0:  # The separate runs' temperature: the same computation.
      assert difference < 1e-5, (member, difference)
    else:  # Another temperature, traced into the same program: other parameters.
      assert difference > 1e-4, (member, difference)
  # Mean and std over the seeds, per temperature.
  for group in result["groups"]:
    accuracies = [m["accuracy"] for m in result["members"] if m["temperature"] == group["temperature"]]
    assert group["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert group["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))


def test_grid_key_must_be_a_numeric_method_parameter(tmp_path):
  with pytest.raises(ConfigError, match=r"grid key 'temprature' is not a parameter of stages.student.method"):
    vmap_seeds.train_members(_config(), "student", str(tmp_path), seeds=(0,), grid={"temprature": (1.0,)})
  with pytest.raises(ConfigError, match=r"temperature=-1.0 must be > 0"):
    vmap_seeds.train_members(_config(), "student", str(tmp_path), seeds=(0,), grid={"temperature": (-1.0,)})


def test_benchmark_runs(tmp_path):
  """The benchmark script runs (2 seeds, 2 steps), so it cannot rot; its figures are not asserted."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top

  config_path = tmp_path / "tiny.py"
  config_path.write_text(TINY)
  out = tmp_path / "bench.json"
  result = subprocess.run([sys.executable, "benchmarks/vmap_seeds.py", f"--config={config_path}",
                           "--seeds=2", "--steps=2", f"--json={out}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2 separate runs:" in result.stdout and "one vmapped run:" in result.stdout
  figures = json.loads(out.read_text())
  assert figures["seeds"] == 2 and figures["separate_seconds"] > 0 and figures["vmapped_seconds"] > 0
