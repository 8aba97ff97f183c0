"""The logs of a stage trained on for more steps equal those of a run of the new length: metrics.jsonl
row for row, and the scalars TensorBoard reads from the event files (purges applied). The logs of
interrupted runs (kills, signals, a kill during the export) are compared by the fault battery,
tests/test_faults.py."""

import json
import os

from conftest import run_main
from test_faults import _rows  # metrics.jsonl and TensorBoard's scalars, wall-clock fields aside.
from test_faults import _stage
from test_faults import _tensorboard_scalars


def _assert_same_logs(expected, got):
  assert _rows(got) == _rows(expected)
  assert _tensorboard_scalars(got) == _tensorboard_scalars(expected)


# Training a finished stage for longer: under a schedule that does not depend on num_steps, the stage
# trains on from its last checkpoint and ends as a run of the new length from the start would.
CONSTANT = ["--config=experiments/quickstart.py:smoke", "--stages=teacher", "--config.log_every_steps=4",
            "--config.checkpoint.every_steps=5", "--config.eval_every_steps=6",
            "--config.stages.teacher.optimizer.schedule=constant"]


def _exported_variables(workdir):
  import kd  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(kd.load_model(_stage(workdir)).variables)


def test_more_steps_under_a_constant_schedule_train_on_to_the_same_parameters_and_logs(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  longer, extended = tmp_path / "longer", tmp_path / "extended"
  assert run_main(*CONSTANT, "--config.stages.teacher.num_steps=24", f"--workdir={longer}").returncode == 0
  assert run_main(*CONSTANT, "--config.stages.teacher.num_steps=12", f"--workdir={extended}").returncode == 0
  result = run_main(*CONSTANT, "--config.stages.teacher.num_steps=24", f"--workdir={extended}")
  assert result.returncode == 0 and "num_steps 12 -> 24: training on from step 12" in result.stderr, (
      result.stderr[-3000:])
  assert "resuming from step 12" in result.stderr
  # Step 12 is an eval step of the longer run: its evaluation (the short run's final one) is logged once.
  _assert_same_logs(longer, extended)
  for a, b in zip(_exported_variables(longer), _exported_variables(extended)):
    np.testing.assert_array_equal(a, b)
  superseded = os.listdir(extended / "superseded")  # The 12-step result and export, kept.
  assert len(superseded) == 1 and superseded[0].startswith("seed_0_teacher_12_steps_")
  with open(extended / "superseded" / superseded[0] / "result.json") as f:
    assert json.load(f)["step"] == 12
  # A cosine schedule depends on num_steps: more steps there are another config, refused.
  result = run_main("--config=experiments/quickstart.py:smoke", "--stages=teacher",
                    "--config.stages.teacher.num_steps=30", f"--workdir={longer}")
  assert result.returncode == 2 and "stages.teacher.num_steps: 24 -> 30" in result.stderr.splitlines()[-1]
