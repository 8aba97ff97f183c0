"""Manifests of checkpoints and exports: bytes that changed on disk are found before they are used."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

import kd
from conftest import REPO
from kd import checkpoint
from kd import experiment
from kd import train
from kd.errors import UserError


def _config():
  config = experiment.load_config(os.path.join(REPO, "experiments", "quickstart.py"), "smoke")
  config.stages.teacher.num_steps = 20
  config.checkpoint.every_steps = 10
  config.log_every_steps = 10
  config.eval_every_steps = 0
  return config


@pytest.fixture(scope="module")
def finished_teacher(tmp_path_factory):
  """A finished teacher stage (checkpoints at steps 10 and 20, and its export), copied by each test."""
  run_dir = str(tmp_path_factory.mktemp("template") / "seed_0")
  assert train.train_stage(_config(), "teacher", run_dir, seed=0)["step"] == 20
  return os.path.join(run_dir, "teacher")


def _copy(stage_dir, tmp_path):
  copy = str(tmp_path / "seed_0" / "teacher")
  shutil.copytree(stage_dir, copy)
  return copy


def _unfinish(stage_dir):
  """The stage as a run stopped after its last checkpoint leaves it: no result, no export."""
  os.remove(os.path.join(stage_dir, train.RESULT_JSON))
  os.remove(os.path.join(stage_dir, checkpoint.MODEL_JSON))
  shutil.rmtree(os.path.join(stage_dir, checkpoint.MODEL_DIR))


def _flip_bytes(folder) -> str:
  """Inverts 16 bytes in the middle of the largest file under `folder` (same size); its relative path."""
  files = [os.path.join(parent, name) for parent, _, names in os.walk(folder) for name in names
           if name != checkpoint.MANIFEST]
  path = max(files, key=os.path.getsize)
  with open(path, "rb") as f:
    content = bytearray(f.read())
  middle = len(content) // 2
  content[middle:middle + 16] = bytes(b ^ 0xFF for b in content[middle:middle + 16])
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.write(content)
  assert os.path.getsize(path) == size
  return path


def _variables(stage_dir):
  return jax.tree.map(np.asarray, checkpoint.load_model(stage_dir).variables)


def _warnings(caplog):
  return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_every_checkpoint_and_export_has_a_manifest_of_all_its_files(finished_teacher):
  for folder, root in [(os.path.join(finished_teacher, "checkpoints", "10"), None),
                       (os.path.join(finished_teacher, "checkpoints", "20"), None),
                       (os.path.join(finished_teacher, checkpoint.MODEL_DIR), finished_teacher)]:
    root = root or folder
    with open(os.path.join(folder, checkpoint.MANIFEST)) as f:
      manifest = json.load(f)
    assert manifest["format"] == checkpoint.MANIFEST_FORMAT
    on_disk = {os.path.relpath(os.path.join(parent, name), root)
               for parent, _, names in os.walk(folder) for name in names if name != checkpoint.MANIFEST}
    if root == finished_teacher:
      on_disk.add(checkpoint.MODEL_JSON)
    assert set(manifest["files"]) == on_disk
    assert checkpoint.verify_manifest(os.path.join(folder, checkpoint.MANIFEST), root) == ("ok", "")


def test_an_unfinished_orbax_folder_is_never_hashed(tmp_path):
  half_written = tmp_path / "35.orbax-checkpoint-tmp-1234567"
  (half_written / "state").mkdir(parents=True)
  (half_written / "state" / "data").write_bytes(b"partial")
  checkpoint.write_checkpoint_manifest(str(half_written))
  assert not (half_written / checkpoint.MANIFEST).exists()


def test_a_checkpoint_without_manifest_is_restored_with_a_warning(finished_teacher, tmp_path, caplog):
  stage_dir = _copy(finished_teacher, tmp_path)
  _unfinish(stage_dir)
  os.remove(os.path.join(stage_dir, "checkpoints", "20", checkpoint.MANIFEST))
  caplog.set_level(logging.INFO, logger="absl")
  result = train.train_stage(_config(), "teacher", os.path.dirname(stage_dir), seed=0)
  assert result["step"] == 20
  assert any("step 20" in line and "unverified" in line for line in _warnings(caplog))
  assert any("resuming from step 20" in record.getMessage() for record in caplog.records)
  assert not os.path.exists(os.path.join(stage_dir, "corrupt_checkpoints"))


def test_a_truncated_manifest_is_a_mismatch(finished_teacher, tmp_path):
  step_dir = os.path.join(_copy(finished_teacher, tmp_path), "checkpoints", "20")
  manifest_path = os.path.join(step_dir, checkpoint.MANIFEST)
  with open(manifest_path, "r+") as f:
    f.truncate(os.path.getsize(manifest_path) // 2)
  status, detail = checkpoint.verify_manifest(manifest_path, step_dir)
  assert status == "mismatch" and "manifest.json is unreadable" in detail


def test_flipped_bytes_in_an_export_are_one_error_naming_the_file(finished_teacher, tmp_path):
  stage_dir = _copy(finished_teacher, tmp_path)
  flipped = _flip_bytes(os.path.join(stage_dir, checkpoint.MODEL_DIR))
  with open(flipped, "rb") as f:
    before = f.read()
  with pytest.raises(UserError) as raised:
    kd.load_model(stage_dir)
  message = str(raised.value)
  assert "\n" not in message
  assert os.path.join(stage_dir, checkpoint.MODEL_DIR) in message
  assert os.path.relpath(flipped, stage_dir) in message
  assert "re-export or retrain that stage in a fresh workdir; nothing was changed" in message
  with open(flipped, "rb") as f:
    assert f.read() == before


def test_an_export_without_manifest_loads_with_a_warning_and_a_truncated_one_is_an_error(
    finished_teacher, tmp_path, caplog):
  stage_dir = _copy(finished_teacher, tmp_path)
  manifest_path = os.path.join(stage_dir, checkpoint.MODEL_DIR, checkpoint.MANIFEST)
  with open(manifest_path) as f:
    manifest_text = f.read()
  os.remove(manifest_path)
  caplog.set_level(logging.WARNING)
  jax.tree.map(np.testing.assert_array_equal, _variables(finished_teacher), _variables(stage_dir))
  assert any("unverified" in line for line in _warnings(caplog))
  with open(manifest_path, "w") as f:
    f.write(manifest_text[:len(manifest_text) // 2])
  with pytest.raises(UserError, match="manifest.json is unreadable"):
    kd.load_model(stage_dir)


def test_flipped_bytes_in_an_exported_connector_are_one_error(tmp_path):
  variables = {"params": {"kernel": np.arange(4096, dtype=np.float32).reshape(64, 64)}}
  checkpoint.export_connector(str(tmp_path), variables)
  abstract = jax.eval_shape(lambda x: x, variables)
  np.testing.assert_array_equal(checkpoint.load_connector(str(tmp_path), abstract)["params"]["kernel"],
                                variables["params"]["kernel"])
  flipped = _flip_bytes(os.path.join(tmp_path, checkpoint.CONNECTOR_DIR))
  with pytest.raises(UserError, match="connector exported in .* is corrupt") as raised:
    checkpoint.load_connector(str(tmp_path), abstract)
  assert os.path.relpath(flipped, tmp_path) in str(raised.value)
