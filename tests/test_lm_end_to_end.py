"""The language-model experiment's smoke run through `python -m kd.main`, and its notebook on that run."""

import json
import os

from conftest import run_main
from test_end_to_end import _run_notebook


def test_lm_smoke_run_writes_the_perplexity_report_and_the_notebook_runs(tmp_path):
  workdir = str(tmp_path / "lm")
  result = run_main("--config=experiments/lm_stdlib.py:smoke", f"--workdir={workdir}", timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["kind"] == "language_model"
  for role in ("teacher", "baseline", "student"):
    # A few steps train nothing much: the figures are only finite and of the right kind.
    assert 1 < report[role]["perplexity"] < float("inf") and report[role]["decode_tokens_per_s_b32"] > 0
  assert report["teacher"]["params"] > report["student"]["params"]
  assert 0 <= report["agreement"] <= 1 and report["kl"] >= 0
  assert [row["stage"] for row in report["comparison"]] == ["baseline", "student"]
  outputs = _run_notebook("lm_distillation.ipynb", workdir)
  text = "".join(o.get("text", "") for o in outputs)
  assert "===== teacher" in text and "===== baseline" in text and "===== student" in text
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
