"""The benchmark scripts run (a few steps), so they cannot rot; their figures are not asserted."""

import json
import subprocess
import sys

from conftest import REPO


def test_train_step_benchmark_prints_its_table_and_json(tmp_path):
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "benchmarks/train_step.py", "--config=experiments/quickstart.py:smoke", "--steps=3",
       f"--json={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "online KD step / (student-only step + teacher forward)" in result.stdout
  with open(out) as f:
    figures = json.load(f)
  assert set(figures["step_ms"]) == {"student_only", "teacher_forward", "kd_step"}
  assert all(value > 0 for value in figures["step_ms"].values())
  assert figures["kd_over_student_plus_teacher"] > 0
