"""The quickstart through `python -m kd.main`, as a user runs it, and the notebook on its workdir."""

import json
import os

import nbclient
import nbformat

from conftest import REPO
from conftest import run_main

ROLE_KEYS = {"accuracy", "params", "bytes", "latency_ms_b1", "latency_ms_b256"}
SUMMARY_KEYS = {"retention", "compression", "speedup", "agreement", "kl", "ece"}


def test_quickstart_smoke_writes_the_report_card(smoke_workdir):
  with open(os.path.join(smoke_workdir, "report.json")) as f:
    report = json.load(f)
  for role in ("teacher", "baseline", "student"):
    assert ROLE_KEYS <= set(report[role]), report[role]
    assert 0.0 <= report[role]["accuracy"] <= 1.0
    assert report[role]["latency_ms_b1"] > 0 and report[role]["latency_ms_b256"] > 0
  assert SUMMARY_KEYS <= set(report)
  teacher, student = report["teacher"], report["student"]
  assert report["retention"] == student["accuracy"] / teacher["accuracy"]
  assert report["compression"] == teacher["params"] / student["params"] > 4
  assert report["baseline"]["params"] == student["params"]
  assert report["kl"] >= 0 and 0 <= report["ece"] <= 1 and 0 <= report["agreement"] <= 1
  with open(os.path.join(smoke_workdir, "report.md")) as f:
    markdown = f.read()
  assert "| student |" in markdown
  # Which split each number comes from: train minus the validation holdout, validation, test.
  assert report["splits"]["train"]["examples"] + report["splits"]["validation"]["examples"] == 1438
  assert report["splits"]["test"]["examples"] == 359 == report["examples"]
  assert ("Splits: train: train minus its 10% validation holdout (1,295 examples); validation: 10% holdout "
          "of train (143 examples)") in markdown
  for role in ("teacher", "baseline", "student"):  # Selected on validation, scored on test.
    with open(os.path.join(smoke_workdir, "seed_0", role, "metrics.jsonl")) as f:
      evaluations = [row for row in map(json.loads, f) if "validation/accuracy" in row]
    best = max(evaluations, key=lambda row: (row["validation/accuracy"], -row["step"]))
    assert report[role]["at_best_validation"] == {"step": best["step"], "test_accuracy": best["test/accuracy"],
                                                  "validation_accuracy": best["validation/accuracy"]}
  # Every stage left its logs, checkpoints, exported model and provenance.
  for stage in ("teacher", "baseline", "student"):
    stage_dir = os.path.join(smoke_workdir, "seed_0", stage)
    for name in ("metrics.jsonl", "model.json", "result.json", "provenance.json", "checkpoints", "model"):
      assert os.path.exists(os.path.join(stage_dir, name)), (stage, name)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(stage_dir, "tensorboard")))
    with open(os.path.join(stage_dir, "provenance.json")) as f:
      provenance = json.load(f)
    assert provenance["seed"] == 0
    assert provenance["config"]["stages"][stage]["num_steps"] == 20
    assert provenance["packages"]["jax"] and provenance["devices"]["count"] >= 1


def test_rerunning_a_finished_experiment_skips_its_stages(smoke_workdir):
  result_file = os.path.join(smoke_workdir, "seed_0", "student", "result.json")
  modified = os.path.getmtime(result_file)
  result = run_main("--config=experiments/quickstart.py:smoke", f"--workdir={smoke_workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "already finished" in result.stderr
  assert "Report card" in result.stdout
  assert os.path.getmtime(result_file) == modified


def _run_notebook(name: str, workdir: str, env: dict[str, str] | None = None) -> list:
  """Executes notebooks/<name> headless on `workdir` (smoke variant), its kernel's environment updated
  with `env`; returns its outputs."""
  with open(os.path.join(REPO, "notebooks", name)) as f:
    notebook = nbformat.read(f, as_version=4)
  env = {"KD_WORKDIR": workdir, "KD_VARIANT": "smoke", **(env or {})}
  saved = {key: os.environ.get(key) for key in env}
  os.environ.update(env)
  try:
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
  finally:
    for key, value in saved.items():
      if value is None:
        del os.environ[key]
      else:
        os.environ[key] = value
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  return outputs


def _unoptimised_xla() -> dict[str, str]:
  """XLA_FLAGS that skip LLVM's optimisations: a smoke stage's compile takes 3-4x less, and its five
  steps do not need fast code. The programs compute the same values, up to floating-point rounding."""
  return {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()}


def test_quickstart_notebook_runs_headless(smoke_workdir):
  outputs = _run_notebook("quickstart.ipynb", smoke_workdir)
  text = "".join(o.get("text", "") for o in outputs)
  assert "top-1 agreement" in text
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # Soft targets and the bar chart.


def test_methods_notebook_runs_headless_on_a_smoke_comparison(tmp_path):
  workdir = str(tmp_path / "methods")
  # 36 smoke stages (18 methods on digits, 13 on MNIST-1D, teachers and baselines), each compiling its
  # own programs: compile time is nearly all of this test's time.
  result = run_main("--config=experiments/methods_digits.py:smoke", f"--workdir={workdir}",
                    env=_unoptimised_xla())
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  stages = [row["stage"] for row in report["comparison"]]
  assert stages[0] == "baseline" and "kd" in stages and "fitnets" in stages and len(stages) >= 10
  outputs = _run_notebook("methods.ipynb", workdir, env=_unoptimised_xla())
  assert any("image/png" in o.get("data", {}) for o in outputs)
