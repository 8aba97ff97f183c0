"""A stage's identity (kd.fingerprint): a workdir never reuses or mixes in results of another config."""

import json
import os
import shutil

import pytest

import kd
from kd.errors import WorkdirError

from conftest import run_main

SMOKE = "--config=experiments/quickstart.py:smoke"


def _config(**overrides):
  return kd.load_config("experiments/quickstart.py", "smoke", **overrides)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished"))
  kd.run(_config(), workdir)
  return workdir


@pytest.fixture
def workdir(finished, tmp_path):
  shutil.copytree(finished, str(tmp_path / "run"))
  return str(tmp_path / "run")


def test_keys_that_cannot_change_a_result_do_not_count(workdir):
  result = run_main(SMOKE, f"--workdir={workdir}", "--config.log_every_steps=5", "--config.eval_every_steps=0",
                    "--config.checkpoint.every_steps=20", "--config.data.eval_batch_size=128")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count("already finished") == 3


def test_overwrite_moves_the_old_stage_aside_and_trains_it_again(workdir):
  with open(os.path.join(workdir, "seed_0", "student", "result.json")) as f:
    old_result = json.load(f)
  report = kd.run(_config(**{"stages.student.method.temperature": 2.0}), workdir, overwrite=["student"])
  superseded = os.listdir(os.path.join(workdir, "superseded"))
  assert len(superseded) == 1 and superseded[0].startswith("seed_0_student_")
  with open(os.path.join(workdir, "superseded", superseded[0], "result.json")) as f:
    assert json.load(f) == old_result  # Moved, never deleted.
  with open(os.path.join(workdir, "seed_0", "student", "fingerprint.json")) as f:
    assert json.load(f)["identity"]["stage"]["method"]["temperature"] == 2.0
  assert report is not None  # The report card is of the retrained student.


def test_a_changed_teacher_makes_its_students_results_another_runs(workdir):
  with pytest.raises(WorkdirError, match=r"stage 'teacher' .*stages.teacher.optimizer.learning_rate: 0.003 -> 0.01"):
    kd.run(_config(**{"stages.teacher.optimizer.learning_rate": 0.01}), workdir)
  # With the teacher retrained, the student's identity names its teacher as what changed.
  kd.run(_config(**{"stages.teacher.optimizer.learning_rate": 0.01}), workdir, stages=["teacher"],
         overwrite=["teacher"])
  with pytest.raises(WorkdirError, match=r"stage 'student' .*its teacher \(the teacher's config or weights changed\)"):
    kd.run(_config(**{"stages.teacher.optimizer.learning_rate": 0.01}), workdir)


def test_runs_in_other_workdirs_reuse_stages_of_the_same_identity_from_a_stage_store(tmp_path):
  store, first, second = str(tmp_path / "store"), str(tmp_path / "a"), str(tmp_path / "b")
  kd.run(_config(), first, stage_store=store)
  # Another workdir, another student temperature: teacher and baseline are the first run's.
  result = run_main(SMOKE, f"--workdir={second}", f"--stage_store={store}",
                    "--config.stages.student.method.temperature=2.0")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count("already finished") == 2  # teacher, baseline
  for stage in ("teacher", "baseline"):
    assert os.path.realpath(os.path.join(first, "seed_0", stage)) == os.path.realpath(
        os.path.join(second, "seed_0", stage))
  assert os.path.realpath(os.path.join(first, "seed_0", "student")) != os.path.realpath(
      os.path.join(second, "seed_0", "student"))
  assert len(os.listdir(store)) == 4  # teacher, baseline and two students: 4 stages trained, not 6.


def test_a_text_files_stage_is_identified_by_its_files_contents_not_their_paths(tmp_path):
  fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "text")
  source = tmp_path / "text.jsonl"
  shutil.copy(os.path.join(fixtures, "text.jsonl"), source)

  def stage_identity(path):
    config = _config(**{"data.name": f"text_files/train={path},tokenizer={os.path.join(fixtures, 'wordlevel')}"})
    return kd.fingerprint.identity(config, "teacher", 0)

  before = stage_identity(source)
  os.makedirs(tmp_path / "elsewhere")
  moved = tmp_path / "elsewhere" / "text.jsonl"  # Another folder: the same dataset.
  shutil.copy(source, moved)
  assert stage_identity(moved)["data"]["prepared_as"] == before["data"]["prepared_as"]
  source.write_text('{"text": "the dog sat"}\n')
  # The same path, other contents: another identity.
  assert stage_identity(source)["data"]["prepared_as"] != before["data"]["prepared_as"]
  assert kd.fingerprint.digest(stage_identity(source)) != kd.fingerprint.digest(before)
