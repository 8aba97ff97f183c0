"""benchmarks/pipeline.py runs (tiny shapes, in-process) and reports consistent figures; they are not asserted
against goals, which depend on the machine."""

import importlib.util
import os

from conftest import REPO


def test_pipeline_benchmark_measures_every_figure():
  spec = importlib.util.spec_from_file_location("pipeline_benchmark", os.path.join(REPO, "benchmarks", "pipeline.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  result = module.measure("tiny", batch_size=16, steps=2, workers=0)
  rates = result["examples_per_second"]
  assert set(rates) == {"pipeline", "pipeline_and_copy", "kd_step", "student_only_step", "cached_teacher_step"}
  assert all(rate > 0 for rate in rates.values())
  assert 0 <= result["data_wait_fraction"] < 1
  ratio = result["step_ms"]["cached_teacher_step"] / result["step_ms"]["student_only_step"]
  assert abs(result["cached_over_student_only"] - ratio) < 1e-9
  assert abs(rates["kd_step"] - 16 / (result["step_ms"]["kd_step"] / 1e3)) < 1e-6 * rates["kd_step"]
