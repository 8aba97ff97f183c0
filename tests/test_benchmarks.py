"""The benchmark scripts run (a few steps), so they cannot rot; their figures are not asserted."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from kd import config as config_lib
from kd import methods
from kd import models
from kd import perf
from kd import train
import method_harness


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
  gkd = figures["gkd_step"]
  assert gkd["generation_ms"] > 0 and gkd["teacher_scoring_ms"] > 0
  assert "off-policy lm_kd" in result.stdout
  # Both rates count the same trained tokens (2 windows x 127 targets) over their own step times.
  assert gkd["tokens_per_s"] * gkd["step_ms"] / 1e3 == pytest.approx(2 * 127)
  assert gkd["off_policy_tokens_per_s"] * gkd["off_policy_step_ms"] / 1e3 == pytest.approx(2 * 127)


def test_performance_benchmark_emits_every_figure_and_checks_its_targets(tmp_path):
  out = tmp_path / "performance.json"
  result = subprocess.run(
      [sys.executable, "benchmarks/performance.py", "--pairs=quickstart,lm", "--batch=8", "--steps=2",
       "--precisions=float32", "--min_round_ms=0", "--warmup=1", "--matmul_size=128", f"--json={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "online_kd / (student_only + teacher_forward)" in result.stdout
  with open(out) as f:
    figures = json.load(f)
  assert figures["matmul_flops_per_second"]["float32"] > 0
  assert figures["host"]["cpu_count"] >= 1
  if "transformer_lm" not in models.MODELS:
    assert "transformer_lm" in figures["skipped"]["lm"]
  quickstart = [r for r in figures["results"] if r["pair"] == "quickstart"]
  assert [r["precision"] for r in quickstart] == ["float32"]
  variants = quickstart[0]["variants"]
  assert set(variants) == {"student_only", "student_only_resident", "teacher_forward", "online_kd", "cached_kd",
                           "fitnets", "crd"}
  for name, v in variants.items():
    assert v["step_ms"] > 0 and v["examples_per_second"] > 0, name
    assert v["rounds"] == 2 and v["compiles_in_loop"] == 0, name
    assert v["program_bytes"] > 0, name  # The CPU reports the compiled program's memory.
  for name in ("student_only", "teacher_forward", "online_kd", "cached_kd", "fitnets", "crd"):
    assert variants[name]["compiles_first_step"] >= 1 and variants[name]["compile_seconds"] > 0, name
  # XLA's FLOP counts: the KD step runs the teacher (the cached one does not) and the student.
  assert variants["online_kd"]["flops_per_step"] > variants["student_only"]["flops_per_step"] + \
      0.9 * variants["teacher_forward"]["flops_per_step"]
  assert variants["cached_kd"]["flops_per_step"] < variants["online_kd"]["flops_per_step"]
  targets = quickstart[0]["targets"]
  assert set(targets) == {"online_kd_over_student_plus_teacher", "cached_kd_over_student_only",
                          "compiles_in_loop", "transfers_beyond_batch", "data_wait_fraction"}
  assert targets["compiles_in_loop"]["pass"] and targets["transfers_beyond_batch"]["pass"]
  assert all(isinstance(t["pass"], bool) for t in targets.values())


def test_lm_memory_benchmark_prints_chunked_against_unchunked_memory_and_time(tmp_path):
  out = tmp_path / "lm_memory.json"
  result = subprocess.run(
      [sys.executable, "benchmarks/lm_memory.py", "--vocab_sizes=512,4096", "--timed_vocab_sizes=512",
       "--length=64", "--width=32", "--chunk_size=16", "--repeats=1", f"--json={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "memory x = unchunked / chunked memory" in result.stdout and "V=4096 not timed" in result.stdout
  with open(out) as f:
    figures = json.load(f)
  small, large = figures["results"]
  for name in ("unchunked", "chunked"):
    assert small[name]["total_bytes"] == sum(small[name][k] for k in ("temp_bytes", "argument_bytes", "output_bytes"))
    assert small[name]["step_ms"] > 0 and large[name]["step_ms"] is None  # 4096 is compiled, not run.
  # Both heads' weights are arguments of both steps; the logits' memory is what differs.
  assert large["unchunked"]["argument_bytes"] == large["chunked"]["argument_bytes"]
  assert large["unchunked"]["temp_bytes"] > 2 * 64 * 4096 * 4 > large["chunked"]["temp_bytes"]
  assert large["memory_ratio"] > 1 and small["time_ratio"] > 0 and large["time_ratio"] is None


def test_cached_teacher_step_equals_the_online_step():
  """The KD step fed precomputed teacher logits makes exactly the online step's update."""
  method = methods.method_config("hinton_kd")
  state, teacher_variables, batch, online_step = method_harness.build_method_step(method)
  teacher_apply = models.make_apply(method_harness.module(method_harness.TEACHER), "image")
  student_apply = models.make_apply(method_harness.module(method_harness.STUDENT), "image")
  logits = jax.jit(lambda v, b: teacher_apply(v, b, train=False)["logits"])(teacher_variables, batch)
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(learning_rate=3e-3), 100)
  cached_step = jax.jit(functools.partial(
      train.train_step, student_apply=student_apply, teacher_apply=perf.cached_teacher_apply,
      loss_fn=methods.build_loss(method), optimizer=optimizer, learning_rate=schedule))
  online_state, online_metrics = online_step(state, teacher_variables, batch)
  cached_state, cached_metrics = cached_step(state, {}, {**batch, perf.TEACHER_LOGITS: logits})
  np.testing.assert_allclose(cached_metrics["loss"], online_metrics["loss"], rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               cached_state.params, online_state.params)
  assert float(online_metrics["kd"]) > 0
