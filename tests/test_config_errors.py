"""Bad flags and configs: one line naming the problem and the fix, exit status 2, nothing written."""

import os

import pytest

from conftest import run_main

SMOKE = "--config=experiments/quickstart.py:smoke"

# Bad flags and configs that README's table names are tried, with the rest of its rows, by the fault
# battery (tests/test_faults.py, BAD_INPUTS); these are the other values the config checks refuse.
CASES = [
    # (flags after --config and --workdir, words the message must contain)
    (["--config.stages.student.method.kd_weight=-0.5"], ["kd_weight=-0.5 must be >= 0"]),
    (["--config.data.train_split=validation"], ["split 'validation'", "available splits"]),
    (["--config.data.augment.crop_padding=-1"], ["crop_padding=-1 must be >= 0"]),
    (["--config.data.augment.teacher_view=other"], ["teacher_view='other'", "independent"]),
    (["--config.stages.student.model.dtype=bf16"], ["stages.student.model.dtype='bf16'", "bfloat16"]),
    (["--config.stages.teacher.model.channels=(32,-4)"], ["channels=(32, -4)", "each entry"]),
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


def test_a_missing_workdir_flag():
  no_workdir = run_main(SMOKE)
  assert no_workdir.returncode == 2 and "--workdir is required" in no_workdir.stderr


def test_a_bad_config_leaves_an_existing_workdir_untouched(smoke_workdir):
  before = {p: os.path.getmtime(os.path.join(root, p)) for root, _, files in os.walk(smoke_workdir)
            for p in files}
  result = run_main(SMOKE, f"--workdir={smoke_workdir}", "--config.stages.student.method.temperature=0.0")
  assert result.returncode == 2
  after = {p: os.path.getmtime(os.path.join(root, p)) for root, _, files in os.walk(smoke_workdir)
           for p in files}
  assert before == after


def test_a_config_that_is_a_folder_is_named_as_such(tmp_path):
  result = run_main("--config=experiments", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2 and "--config=experiments is a folder" in result.stderr
