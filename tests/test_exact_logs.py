"""The logs of a stage trained on for more steps equal those of a run of the new length: metrics.jsonl
row for row, and the scalars TensorBoard reads from the event files (purges applied). The logs of
interrupted runs (kills, signals, a kill during the export) are compared by the fault battery,
tests/test_faults.py."""

import glob
import json
import os
import struct

from tensorboardX.proto import event_pb2

from conftest import run_main


def _stage(workdir) -> str:
  return os.path.join(str(workdir), "seed_0", "teacher")


def _rows(workdir) -> list[dict]:
  with open(os.path.join(_stage(workdir), "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _tensorboard_scalars(workdir) -> list[tuple[str, int, float]]:
  """(tag, step, value) as TensorBoard shows them: files in order, a purge drops earlier events from its step."""
  scalars = []
  for path in sorted(glob.glob(os.path.join(_stage(workdir), "tensorboard", "events.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # TFRecord: length, its CRC, the record, its CRC.
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        scalars = [s for s in scalars if s[1] < event.step]
      for value in event.summary.value:
        scalars.append((value.tag, event.step, round(float(value.simple_value), 6)))
  return sorted(scalars)


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
