"""notebooks/beyond_one_teacher.ipynb, executed headless: each capability's cell prints a figure that holds.

The ensemble is the mean of its members' distributions and trains nothing; the moving-average teacher is no
parameter of the optimizer and lags the student; the mutual-learning peer is a network of its own that learnt;
the pruned export has exactly the configured fraction of zeros in every kernel, with the teacher's shapes; the
LoRA export is the teacher's architecture, its base weights bitwise the teacher's and each kernel's update of
rank at most r; the report card is built once, at the end, with the ensemble as its teacher.
"""

import json
import math
import os
import re
import shutil

import numpy as np

import kd

SPARSITY = 0.8  # The notebook's pruning and LoRA settings.
RANK = 4


def _figure(text: str, pattern: str) -> re.Match:
  match = re.search(pattern, text)
  assert match, f"the notebook printed no line matching {pattern!r}"
  return match


def _percent(value: str) -> float:
  return float(value.rstrip("%")) / 100


def test_the_beyond_one_teacher_notebook_runs_headless_and_its_figures_hold(smoke_workdir, tmp_path):
  from test_end_to_end import _run_notebook  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "beyond")
  # The quickstart's smoke teacher and baseline, trained once for the session, are the notebook's first
  # two stages (same config, seed and data): the notebook finds them finished and trains the rest.
  for stage in ("teacher", "baseline"):
    shutil.copytree(os.path.join(smoke_workdir, "seed_0", stage), os.path.join(workdir, "seed_0", stage))
  outputs = _run_notebook("beyond_one_teacher.ipynb", workdir)  # Its first cell sets XLA's fast-compile flag.
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.get("name") == "stdout")
  run = os.path.join(workdir, "seed_0")

  def result(stage):
    with open(os.path.join(run, stage, "result.json")) as f:
      return json.load(f)

  # 1. Ensemble: assembled at step 0, its distribution the members' mean.
  assert "ensemble step 0:" in text and result("ensemble")["step"] == 0
  assert float(_figure(text, r"max \|p_ensemble - mean of the members' p\| = (\S+)")[1]) < 1e-5
  ensemble_accuracy = _percent(_figure(text, r"ensemble +test accuracy (\S+)")[1])
  assert math.isclose(ensemble_accuracy, result("ensemble")["test/accuracy"], abs_tol=5e-5)

  # 2. Moving-average teacher: not trained by the optimizer, and behind the student.
  assert "trained by the optimizer: ['connector', 'student']; the EMA teacher among them: False" in text
  assert float(_figure(text, r"max \|θ_EMA - θ_student\| (\S+)")[1]) > 0
  assert 0 < _percent(_figure(text, r"top-1 agreement student / EMA teacher (\S+)")[1]) <= 1

  # 3. Mutual learning: the peer is a network of its own, and it learnt (10 classes: chance is 10%).
  assert "the peer's weights are the student's: False" in text
  assert _percent(_figure(text, r"peer +test accuracy (\S+)")[1]) > 0.15

  # 4. Born-again generations and their ensemble, assembled without training.
  for generation in range(3):
    _figure(text, rf"generation {generation} \(\w+\) test accuracy")
  assert "(step 0)" in _figure(text, r"BAN ensemble of generations 1-2 .*")[0]
  assert result("ban_ensemble")["step"] == 0

  # 5. Pruning: exactly floor(sparsity * size) zeros in each kernel, the teacher's shapes, the count in the result.
  teacher = kd.load_model(os.path.join(run, "teacher"))
  kernels = re.findall(r"^(\S+/kernel) +\(([\d, ]+)\) +fraction of zeros (\S+)", text, re.M)
  teacher_kernels = {f"{layer}/kernel": np.shape(p["kernel"]) for layer, p in teacher.variables["params"].items()
                     if "kernel" in p}
  assert {path: tuple(int(n) for n in shape.split(",") if n.strip()) for path, shape, _ in kernels} == teacher_kernels
  for _, shape, zeros in kernels:
    size = math.prod(int(n) for n in shape.split(",") if n.strip())
    assert math.isclose(float(zeros), math.floor(SPARSITY * size) / size, abs_tol=5e-5)
  exported = kd.load_model(os.path.join(run, "pruned")).variables["params"]
  total = sum(np.size(leaf) for layer in exported.values() for leaf in layer.values())
  nonzero = sum(int(np.count_nonzero(leaf)) for layer in exported.values() for leaf in layer.values())
  kept = sum(math.prod(shape) - math.floor(SPARSITY * math.prod(shape)) for shape in teacher_kernels.values())
  # Besides the pruned kernels, a bias can be exactly zero too (a hidden unit that never activated).
  assert result("pruned")["nonzero_params"] == nonzero
  assert (f"non-zero parameters {nonzero:,} of {total:,} (counted in the export: {nonzero:,}; in its kernels: "
          f"{kept:,} of {sum(math.prod(shape) for shape in teacher_kernels.values()):,})") in text
  assert "pruned model cnn (32, 64): the teacher's architecture: True" in text

  # 6. LoRA: merged into the teacher's architecture, the base frozen, each kernel's update of rank <= r.
  assert "export cnn (32, 64): the teacher's architecture: True" in text
  assert f"base weights after {result('lora')['step']} steps bitwise the teacher's: True" in text
  ranks = re.findall(r"^(\S+/kernel) +rank of W' - W (\d+) \(r = (\d+)\)", text, re.M)
  assert sorted(path for path, _, _ in ranks) == sorted(teacher_kernels)
  assert all(1 <= int(rank) <= RANK and int(r) == RANK for _, rank, r in ranks)  # Trained, and low rank.
  others = re.findall(r"^(\S+) +the teacher's, bitwise: (\w+)", text, re.M)
  assert others and all(bitwise == "True" for _, bitwise in others)
  assert len(others) + len(ranks) == sum(len(p) for p in teacher.variables["params"].values())  # Every parameter.

  # 7. The student distilled from the ensemble, and the report card built on it.
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["teacher"]["stage"] == "ensemble" and report["student"]["stage"] == "student"
  assert [row["stage"] for row in report["comparison"]][-1] == "student"
  with open(os.path.join(run, "student", "provenance.json")) as f:
    assert "ensemble" in json.dumps(json.load(f))
  assert any("text/markdown" in o.get("data", {}) for o in outputs)  # The report card, displayed.
