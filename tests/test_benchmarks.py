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


def test_decode_benchmark_prints_kv_cache_speedup_and_gkd_split(tmp_path):
  out = tmp_path / "decode.json"
  result = subprocess.run(
      [sys.executable, "benchmarks/decode.py", "--small", "--length=32", "--gkd_batch_size=2", "--repeats=1",
       f"--json={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "full-prefix recompute" in result.stdout and "teacher scoring" in result.stdout
  with open(out) as f:
    figures = json.load(f)
  assert set(figures["decode"]) == {"b1", "b32"}
  assert figures["gkd_step"]["generation_ms"] > 0 and figures["gkd_step"]["teacher_scoring_ms"] > 0
