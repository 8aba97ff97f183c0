"""Bad flags and configs: one line naming the problem and the fix, exit status 2, nothing written."""

import os
import shutil

import pytest

from conftest import run_main

SMOKE = "--config=experiments/quickstart.py:smoke"

CASES = [
    # (flags after --config and --workdir, words the message must contain)
    (["--config.stages.student.methd.name=x"], ["unknown config key stages.student.methd",
                                                "did you mean stages.student.method"]),
    (["--config.stages.student.model.depth=3"], ["unknown config key stages.student.model.depth",
                                                 "channels"]),
    (["--config.data.batch_size=abc"], ["config.data.batch_size", "abc"]),
    (["--config.stages.student.method.name=fitnetz"], ["is not a method", "hinton_kd"]),
    (["--config.stages.student.model.name=resnet99"], ["is not a model", "cnn"]),
    (["--config.stages.student.method.temperature=-1.0"], ["temperature=-1.0 must be > 0"]),
    (["--config.stages.student.method.kd_weight=-0.5"], ["kd_weight=-0.5 must be >= 0"]),
    (["--config.stages.teacher.optimizer.learning_rate=0.0"], ["learning_rate=0.0 must be > 0"]),
    (["--config.stages.student.teacher=baseline2"], ["teacher='baseline2'", "earlier stages"]),
    (["--config.data.name=no_such_dataset"], ["unknown dataset 'no_such_dataset'", "digits"]),
    (["--config.data.train_split=validation"], ["split 'validation'", "available splits"]),
    (["--config.data.test_split=test[:0]"], ["empty"]),
    (["--config.seeds=()"], ["seeds=()", "non-empty"]),
    (["--stages=student"], ["needs teacher stage 'teacher'", "no finished run"]),
    (["--stages=pupil"], ["'pupil'", "not a stage"]),
    (["--config.data.augment.crop_padding=-1"], ["crop_padding=-1 must be >= 0"]),
    (["--config.data.augment.teacher_view=other"], ["teacher_view='other'", "independent"]),
    (["--config.stages.student.model.dtype=bf16"], ["stages.student.model.dtype='bf16'", "bfloat16"]),
    # Model attributes are validated against the ranges each model declares, numbers must be finite.
    (["--config.stages.student.model.dropout=1.5"], ["stages.student.model.dropout=1.5", "in [0, 1)"]),
    (["--config.stages.student.model.hidden=0"], ["stages.student.model.hidden=0", "integer >= 1"]),
    (["--config.stages.teacher.model.channels=(32,-4)"], ["channels=(32, -4)", "each entry"]),
    (["--config.stages.student.method.temperature=inf"], ["temperature=inf must be finite"]),
]


@pytest.mark.parametrize("extra,words", CASES, ids=[c[0][0] for c in CASES])
def test_bad_config_is_one_clear_line_and_exit_2(tmp_path, extra, words):
  workdir = tmp_path / "run"
  result = run_main(SMOKE, f"--workdir={workdir}", *extra)
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  for word in words:
    assert word in errors[0], errors[0]
  assert "Traceback" not in result.stderr
  assert not workdir.exists(), "nothing may be written for a bad config"


def test_batch_that_does_not_divide_over_devices(tmp_path):
  result = run_main(SMOKE, f"--workdir={tmp_path / 'run'}", "--config.data.batch_size=30",
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert result.returncode == 2
  assert "error: data.batch_size=30 does not divide over 4 devices: use a multiple of 4" in result.stderr


def test_missing_and_unknown_flags(tmp_path):
  missing_file = run_main("--config=experiments/no_such_file.py", f"--workdir={tmp_path}")
  assert missing_file.returncode == 2
  assert "config file experiments/no_such_file.py does not exist" in missing_file.stderr
  no_workdir = run_main(SMOKE)
  assert no_workdir.returncode == 2 and "--workdir is required" in no_workdir.stderr
  bad_variant = run_main("--config=experiments/quickstart.py:bogus", f"--workdir={tmp_path}")
  assert bad_variant.returncode == 2 and "unknown variant 'bogus'" in bad_variant.stderr
  assert "Traceback" not in bad_variant.stderr


def test_a_bad_config_leaves_an_existing_workdir_untouched(smoke_workdir):
  before = {p: os.path.getmtime(os.path.join(root, p)) for root, _, files in os.walk(smoke_workdir)
            for p in files}
  result = run_main(SMOKE, f"--workdir={smoke_workdir}", "--config.stages.student.method.temperature=0.0")
  assert result.returncode == 2
  after = {p: os.path.getmtime(os.path.join(root, p)) for root, _, files in os.walk(smoke_workdir)
           for p in files}
  assert before == after


def _copy_of(workdir, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  return copy


def test_teacher_checkpoint_of_another_architecture(smoke_workdir, tmp_path):
  workdir = _copy_of(smoke_workdir, tmp_path)
  result = run_main(SMOKE, f"--workdir={workdir}", "--stages=student",
                    "--config.stages.teacher.model.hidden=64")
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "but stages.teacher.model is" in errors[0] and "'hidden': 64" in errors[0]


def test_teacher_and_dataset_disagree_on_the_number_of_classes(smoke_workdir, tmp_path):
  workdir = _copy_of(smoke_workdir, tmp_path)
  result = run_main(SMOKE, f"--workdir={workdir}", "--stages=student",
                    "--config.data.name=synthetic/8x8x1_5_64")
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "predicts 10 classes of digits" in errors[0] and "has 5" in errors[0]


def test_an_unprepared_catalog_dataset_fails_in_seconds_saying_how_to_prepare_it(tmp_path):
  from kd.data import pipeline  # pylint: disable=g-import-not-at-top
  if pipeline._can_reach(pipeline.DOWNLOAD_PROBE_HOST):  # pylint: disable=protected-access
    pytest.skip("this machine can download datasets: the offline path is not exercised")
  result = run_main(SMOKE, f"--workdir={tmp_path / 'run'}", "--config.data.name=mnist",
                    env={"TFDS_DATA_DIR": str(tmp_path / "empty_tfds")}, timeout=60)
  assert result.returncode == 2
  assert "dataset 'mnist' is not prepared" in result.stderr and "tfds build mnist --file_format=array_record" in result.stderr


def test_a_config_that_is_a_folder_is_named_as_such(tmp_path):
  result = run_main("--config=experiments", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2 and "--config=experiments is a folder" in result.stderr
