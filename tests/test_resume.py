"""An interrupted and resumed stage ends exactly where an uninterrupted one does."""

import json
import os

import jax
import numpy as np

from kd import checkpoint
from kd import experiment
from kd import train

QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "quickstart.py")


def _config():
  config = experiment.load_config(QUICKSTART, "smoke")
  for stage in config.stages.values():
    stage.num_steps = 30
  config.checkpoint.every_steps = 10
  config.log_every_steps = 5
  return config


def _variables(stage_dir):
  return jax.tree.map(np.asarray, checkpoint.load_model(stage_dir).variables)


def _train_losses(stage_dir):
  with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path):
  config = _config()
  for run in ("straight", "interrupted"):
    os.makedirs(tmp_path / run)
  straight = train.train_stage(config, "teacher", str(tmp_path / "straight"), seed=0)
  assert straight is not None and straight["step"] == 30

  interrupted_dir = str(tmp_path / "interrupted")
  assert train.train_stage(config, "teacher", interrupted_dir, seed=0, stop_after_step=10) is None
  assert not train.is_finished(os.path.join(interrupted_dir, "teacher"))
  assert train.train_stage(config, "teacher", interrupted_dir, seed=0, stop_after_step=20) is None
  resumed = train.train_stage(config, "teacher", interrupted_dir, seed=0)
  assert resumed is not None and resumed["step"] == 30

  expected = _variables(str(tmp_path / "straight" / "teacher"))
  got = _variables(os.path.join(interrupted_dir, "teacher"))
  jax.tree.map(np.testing.assert_array_equal, expected, got)
  assert resumed["test/accuracy"] == straight["test/accuracy"]
  # The same losses at every logged step: the data iterator resumed at the right example.
  assert _train_losses(os.path.join(interrupted_dir, "teacher")) == _train_losses(
      str(tmp_path / "straight" / "teacher"))

  # The distilled student resumes too, against the same teacher.
  for run in ("straight", "interrupted"):
    run_dir = str(tmp_path / run)
    if run == "interrupted":
      train.train_stage(config, "student", run_dir, seed=0, stop_after_step=10)
    train.train_stage(config, "student", run_dir, seed=0)
  jax.tree.map(np.testing.assert_array_equal, _variables(str(tmp_path / "straight" / "student")),
               _variables(os.path.join(interrupted_dir, "student")))


def test_a_finished_stage_is_not_run_again(tmp_path):
  config = _config()
  first = train.train_stage(config, "teacher", str(tmp_path), seed=0)
  result_file = tmp_path / "teacher" / "result.json"
  modified = os.path.getmtime(result_file)
  again = train.train_stage(config, "teacher", str(tmp_path), seed=0)
  assert again == first
  assert os.path.getmtime(result_file) == modified
