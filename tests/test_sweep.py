"""Sweeps: expansion of `sweep(add)` and grids, the local backend (skip, resume), and `python -m kd.report`."""

import csv
import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO
from kd import report as report_lib
from kd import sweep
from kd.errors import ConfigError

# A tiny experiment: one supervised stage of a small ConvNet, 6 steps, evaluated every 2.
TINY = textwrap.dedent("""
    from kd.config import base_config, stage_config
    from kd.methods import method_config

    REPORTED = {"lr_high": 90.0, "lr_low": {"accuracy": 50.0}}

    def get_config(arg=None):
      config = base_config()
      config.seeds = (0, 1)
      config.data.batch_size = 32
      cnn = {"name": "cnn", "channels": (8,), "hidden": 16}
      config.stages.teacher = stage_config(cnn, method_config("supervised"), num_steps=6,
                                           lr_scaling="sqrt", base_batch_size=128)
      config.stage_order = ("teacher",)
      config.report.baseline = config.report.student = "teacher"
      config.log_every_steps = 3
      config.eval_every_steps = 2
      config.checkpoint.every_steps = 3
      return config

    def sweep(add):
      add(name="lr_high", **{"stages.teacher.optimizer.learning_rate": 1e-2})
      add(name="lr_low", **{"stages.teacher.optimizer.learning_rate": 1e-4, "seeds": (0,)})
""")


def test_expand_methods_digits_with_a_grid():
  runs = sweep.expand("experiments/methods_digits.py:smoke", sweep.parse_grid(["data.batch_size=32,64"]))
  # 18 methods (FT with its paraphraser stage) + Hinton KD at 2 more temperatures, x 2 batch sizes,
  # x 1 seed (smoke).
  assert len(runs) == 20 * 2
  by_name = {run.name: run for run in runs}
  run = by_name["kd_t2,batch_size=32/seed_0"]
  assert run.base == "kd_t2" and run.arg == "smoke" and run.stages == ("teacher", "kd")
  assert run.overrides["stages.kd.method.temperature"] == 2.0 and run.overrides["data.batch_size"] == 32
  assert by_name["crd,batch_size=64/seed_0"].stages == ("teacher", "crd")


def test_variant_names_and_grid_parsing():
  assert sweep.parse_grid(["a.b=1,2.5,x", "c=(1,2);(3,4)"]) == [("a.b", [1, 2.5, "x"]), ("c", [(1, 2), (3, 4)])]
  assert sweep.variant_name(None, None, {"stages.kd.method.temperature": 4.0, "data.batch_size": 64}) == (
      "temperature=4,batch_size=64")
  # Keys that share their last part keep as many parts as tell them apart.
  assert sweep.variant_name("smoke", None, {"stages.a.num_steps": 5, "stages.b.num_steps": 7}) == (
      "smoke,a.num_steps=5,b.num_steps=7")
  assert sweep.variant_name("smoke", "smoke", {}) == "default"
  with pytest.raises(ConfigError, match="--grid"):
    sweep.parse_grid(["no_values"])


def test_bad_override_fails_before_running(tmp_path):
  with pytest.raises(ConfigError, match="sweep variant 'learning_rate=-1'"):
    sweep.expand("experiments/quickstart.py:smoke",
                 sweep.parse_grid(["stages.student.optimizer.learning_rate=-1"]))


def _sweep(*args):
  return subprocess.run([sys.executable, "-m", "kd.sweep", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=600)


def test_local_sweep_runs_skips_resumes_and_reports(tmp_path, capsys):
  config_path = tmp_path / "tiny.py"
  config_path.write_text(TINY)
  workdir = tmp_path / "sweep"
  result = _sweep(f"--config={config_path}", f"--workdir={workdir}", "--parallel=2")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  names = ["lr_high/seed_0", "lr_high/seed_1", "lr_low/seed_0"]
  for name in names:
    assert os.path.exists(workdir / name / "teacher" / "result.json"), name
    assert "finished: test accuracy" in (workdir / name / "run.log").read_text()
  # The rate is scaled to the batch of 32 (tuned at 128, sqrt rule): 1e-2 x 0.5; the rule is logged.
  result_high = json.loads((workdir / "lr_high/seed_0/teacher/result.json").read_text())
  assert result_high["peak_learning_rate"] == pytest.approx(5e-3)
  assert "peak learning rate 0.005 (optimizer.lr_scaling=sqrt: 0.01 tuned at batch 128, batch 32)" in (
      workdir / "lr_high/seed_0/run.log").read_text()
  manifest = json.loads((workdir / "sweep.json").read_text())
  assert [run["name"] for run in manifest["runs"]] == names

  # A run whose last stage lost its result resumes from its checkpoint (step 6); the others are skipped.
  os.remove(workdir / "lr_high/seed_1/teacher/result.json")
  result = _sweep(f"--config={config_path}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "lr_high/seed_0: finished, skipped" in result.stdout and "lr_low/seed_0: finished, skipped" in result.stdout
  assert "resuming from step 6" in (workdir / "lr_high/seed_1/run.log").read_text()

  # The table: mean ± std over seeds of the last step's test accuracy and of the test accuracy at the
  # step of best *validation* accuracy, next to REPORTED.
  assert report_lib.main([str(workdir)]) == 0  # What `python -m kd.report <workdir>` runs.
  last = [json.loads((workdir / f"lr_high/seed_{s}/teacher/result.json").read_text())["test/accuracy"]
          for s in (0, 1)]
  best, best_steps = [], []
  for s in (0, 1):
    rows = [json.loads(line) for line in (workdir / f"lr_high/seed_{s}/teacher/metrics.jsonl").open()]
    evals = [row for row in rows if "validation/accuracy" in row]
    assert sorted({row["step"] for row in evals}) == [2, 4, 6]  # The resumed run logs step 6 twice.
    top = max(evals, key=lambda row: (row["validation/accuracy"], -row["step"]))
    best.append(top["test/accuracy"])
    best_steps.append(top["step"])
  with open(workdir / "sweep_report.csv") as f:
    rows = {row["variant"]: row for row in csv.DictReader(f)}
  high = rows["lr_high"]
  assert high["seeds"] == "0 1" and high["stage"] == "teacher"
  np.testing.assert_allclose(float(high["last_accuracy"]), 100 * np.mean(last), atol=1e-3)
  np.testing.assert_allclose(float(high["last_accuracy_std"]), 100 * np.std(last, ddof=1), atol=1e-3)
  np.testing.assert_allclose(float(high["best_accuracy"]), 100 * np.mean(best), atol=1e-3)
  np.testing.assert_allclose(float(high["best_step"]), np.mean(best_steps))
  assert float(high["reported"]) == 90.0
  np.testing.assert_allclose(float(high["difference"]), 100 * np.mean(last) - 90.0, atol=1e-3)
  assert rows["lr_low"]["seeds"] == "0" and float(rows["lr_low"]["reported"]) == 50.0
  assert float(rows["lr_low"]["last_accuracy_std"]) == 0.0
  markdown = (workdir / "sweep_report.md").read_text()
  assert markdown in capsys.readouterr().out
  assert f"| lr_high | teacher | 2/2 [0, 1] | {100 * np.mean(last):.2f} ± {100 * np.std(last, ddof=1):.2f} |" in markdown


@pytest.mark.parametrize("path", sorted(os.path.join("experiments", f) for f in os.listdir(os.path.join(REPO, "experiments"))
                                        if f.endswith(".py")))
def test_every_sweep_point_of_every_experiment_file_builds(path):
  """Every variant of every experiment file's sweep(add) (one variant for a file without one) validates."""
  runs = sweep.expand(os.path.join(REPO, path))
  assert runs and len({run.name for run in runs}) == len(runs)


SHARED_TEACHER_SWEEP = '''
import importlib.util

_spec = importlib.util.spec_from_file_location("quickstart", {quickstart!r})
_quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_quickstart)
get_config = _quickstart.get_config


def sweep(add):
  for temperature in (2.0, 4.0):
    for kd_weight in (0.5, 0.9):
      add("smoke", name=f"t{{temperature}}_w{{kd_weight}}", **{{"stages.student.method.temperature": temperature,
                                                              "stages.student.method.kd_weight": kd_weight}})
'''


def test_variants_that_share_a_teacher_train_it_once(tmp_path):
  """A 2 x 2 sweep of the student's temperature and KD weight: 6 stages trained, not 12."""
  config_path = tmp_path / "shared_teacher.py"
  config_path.write_text(SHARED_TEACHER_SWEEP.format(quickstart=os.path.join(REPO, "experiments", "quickstart.py")))
  workdir = tmp_path / "sweep"
  result = subprocess.run([sys.executable, "-m", "kd.sweep", f"--config={config_path}", f"--workdir={workdir}",
                           "--parallel=2"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert len(os.listdir(workdir / "stages")) == 6  # teacher, baseline, four students
  logs = "".join(open(path).read() for path in glob.glob(str(workdir / "*" / "seed_0" / "run.log")))
  assert logs.count("[teacher] finished: test accuracy") == 1 and logs.count("[baseline] finished: test accuracy") == 1
  assert logs.count("[student] finished: test accuracy") == 4
  teachers = {os.path.realpath(path) for path in glob.glob(str(workdir / "*" / "seed_0" / "teacher"))}
  assert len(teachers) == 1  # Every variant's teacher folder is the one stage in the store.
