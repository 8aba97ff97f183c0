"""RepDistiller / mdistiller CIFAR-100 checkpoints convert into kd models with the reference's logits.

The golden fixtures (`tests/fixtures/repdistiller/`, written by `make_repdistiller_fixtures.py` with
RepDistiller's own PyTorch models) hold state_dicts, a few images and the logits PyTorch computed on
them; nothing here needs torch.
"""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

import kd
from kd import convert
from kd import models
from kd.convert import repdistiller
from kd.convert import torch_pickle
from kd.errors import UserError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "repdistiller")
LISTING = json.load(open(os.path.join(FIXTURES, "fixtures.json"), encoding="utf-8"))["fixtures"]
TOLERANCE = 1e-4
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixture_path(name: str) -> str:
  return os.path.join(FIXTURES, name)


def images() -> np.ndarray:
  return np.load(fixture_path("images.npy"))


def reference_logits(fixture: str) -> np.ndarray:
  with np.load(fixture_path("logits.npz")) as logits:
    return logits[fixture]


def kd_logits(model_config: dict, num_classes: int, variables) -> np.ndarray:
  """Logits of the kd model on the fixture images, preprocessed as RepDistiller trained it."""
  module = models.build_model(model_config, num_classes)
  apply = models.make_apply(module, "image", preprocess="cifar100")
  return np.asarray(jax.jit(lambda v, b: apply(v, b, train=False)["logits"])(variables, {"image": images()}))


def convert_fixture(fixture: str, source: str | None = None):
  entry = LISTING[fixture]
  model_config = models.model_config(**entry["model"])
  state_dict = convert.read_state_dict(source or fixture_path(f"{fixture}.safetensors"))
  return model_config, repdistiller.ARCHITECTURES[entry["arch"]].convert(state_dict, model_config)


def max_logit_difference(fixture: str, source: str | None = None) -> float:
  model_config, variables = convert_fixture(fixture, source)
  logits = kd_logits(model_config, LISTING[fixture]["num_classes"], variables)
  return float(np.abs(logits - reference_logits(fixture)).max())


def parity_table() -> list[tuple[str, str, float]]:
  """(fixture and its RepDistiller architecture, kd model config, max abs logit difference) rows."""
  rows = []
  for fixture, entry in LISTING.items():
    attributes = ", ".join(f"{k}={v}" for k, v in entry["model"].items() if k != "name")
    rows.append((f"{fixture} ({entry['arch']} converter)", f"{entry['model']['name']}({attributes})",
                 max_logit_difference(fixture)))
  return rows


@pytest.mark.parametrize("fixture", sorted(LISTING))
def test_converted_logits_match_the_reference(fixture):
  difference = max_logit_difference(fixture)
  print(f"{fixture}: max abs logit difference {difference:.3g}")
  assert difference < TOLERANCE


def test_the_fixtures_test_batch_norm_statistics():
  # With the statistics at their initial values (mean 0, variance 1) the logits must be far off,
  # or the parity above would not show that running_mean and running_var are converted.
  model_config, variables = convert_fixture("resnet_narrow")
  initial = jax.tree_util.tree_map_with_path(
      lambda path, stat: np.ones_like(stat) if path[-1].key == "var" else np.zeros_like(stat),
      variables["batch_stats"])
  variables = {**variables, "batch_stats": initial}
  logits = kd_logits(model_config, LISTING["resnet_narrow"]["num_classes"], variables)
  assert np.abs(logits - reference_logits("resnet_narrow")).max() > 1e-2


def test_every_zoo_architecture_fits_the_reference_layout():
  layouts = json.load(open(fixture_path("zoo_layouts.json"), encoding="utf-8"))
  # RepDistiller's CIFAR ResNet50 (models/resnetv2.py) has no kd model; everything else converts.
  assert set(layouts) - set(repdistiller.ARCHITECTURES) == {"ResNet50"}
  assert set(repdistiller.ARCHITECTURES) <= set(layouts)
  for arch, layout in repdistiller.ARCHITECTURES.items():
    # Zeros broadcast from one value: the full-size layout without its memory.
    state_dict = {name: np.broadcast_to(np.float32(0), shape) for name, shape in layouts[arch].items()}
    model_config = {**models.model_config(**layout.model), "preprocess": layout.preprocess}
    assert layout.num_classes(state_dict) == 100, arch
    # convert raises unless every kd variable is found with its shape and nothing is left over.
    layout.convert(state_dict, model_config)


def test_torch_save_checkpoint_reads_as_its_state_dict():
  # resnet8.pth is saved as train_teacher.py saves: {"epoch", "model", "accuracy", "optimizer"}.
  saved = torch_pickle.load(fixture_path("resnet8.pth"))
  assert saved["epoch"] == 240 and float(saved["accuracy"]) == pytest.approx(72.5)
  assert {"state", "param_groups"} <= set(saved["optimizer"])
  from_pth = convert.read_state_dict(fixture_path("resnet8.pth"))
  from_safetensors = convert.read_state_dict(fixture_path("resnet8.safetensors"))
  assert sorted(from_pth) == sorted(from_safetensors)
  for name, array in from_safetensors.items():
    np.testing.assert_array_equal(from_pth[name], array, err_msg=name)
  assert max_logit_difference("resnet8", fixture_path("resnet8.pth")) < TOLERANCE


def test_legacy_torch_save_checkpoint_converts():
  # train_teacher.py's final checkpoint, {"opt": Namespace, "model", "optimizer"}, in the pre-1.6
  # non-zip format of the released teachers.
  saved = torch_pickle.load(fixture_path("resnet_narrow_last.pth"))
  assert saved["opt"].model == "resnet8x4"
  assert max_logit_difference("resnet_narrow", fixture_path("resnet_narrow_last.pth")) < TOLERANCE


def run_convert(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "kd.convert", *args], capture_output=True, text=True,
                        cwd=REPO_ROOT, timeout=120, check=False)


def test_command_line_export_loads_with_the_reference_logits(tmp_path):
  export = str(tmp_path / "export")
  result = run_convert(fixture_path("resnet8.safetensors"), export, "--arch=resnet8")
  assert result.returncode == 0, result.stderr
  loaded = kd.load_model(export)
  assert loaded.model_config["preprocess"] == "cifar100"
  logits = np.asarray(loaded.apply(loaded.variables, {"image": images()}, train=False)["logits"])
  assert np.abs(logits - reference_logits("resnet8")).max() < TOLERANCE


def assert_one_error_line(returncode: int, stderr: str, *words: str) -> None:
  assert returncode == 2, (returncode, stderr)
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  for word in words:
    assert word in lines[0], (word, lines[0])


def convert_in_process(capsys, *args: str) -> tuple[int, str]:
  """(exit status, stderr) of `python -m kd.convert args`, run here: a subprocess costs seconds of imports."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    convert.main(list(args))
  return exit_info.value.code, capsys.readouterr().err


def test_unknown_arch_is_one_error_line(tmp_path):
  result = run_convert(fixture_path("resnet8.safetensors"), str(tmp_path / "export"), "--arch=resnet9")
  assert_one_error_line(result.returncode, result.stderr, "resnet9", "resnet8x4")


def test_state_dict_of_another_architecture_is_one_error_line(tmp_path, capsys):
  status, stderr = convert_in_process(capsys, fixture_path("resnet8.safetensors"), str(tmp_path / "export"),
                                      "--arch=wrn_16_1")
  assert_one_error_line(status, stderr, "missing: block1.layer.0.bn1.", "not in the model: layer1.0.bn1.")
  assert not os.path.exists(tmp_path / "export")


def test_state_dict_of_another_width_is_one_error_line(tmp_path, capsys):
  status, stderr = convert_in_process(capsys, fixture_path("resnet8.safetensors"), str(tmp_path / "export"),
                                      "--arch=resnet8x4")
  assert_one_error_line(status, stderr, "missing: layer1.0.downsample.0.weight",
                        "of the wrong shape: bn1.bias (16,) gives stem/bn/bias (16,), expected (32,)")


def test_pickle_naming_code_is_refused_not_run(tmp_path, capsys):
  marker = tmp_path / "ran"

  class RunsACommand:

    def __reduce__(self):
      return os.system, (f"touch {marker}",)

  payload = pickle.dumps({"model": RunsACommand()}, protocol=2)
  legacy = tmp_path / "legacy.pth"
  legacy.write_bytes(payload)
  as_zip = tmp_path / "zip.pth"  # The same pickle where torch's zip format keeps it.
  with zipfile.ZipFile(as_zip, "w") as archive:
    archive.writestr("teacher/data.pkl", payload)
  for malicious in (legacy, as_zip):
    with pytest.raises(UserError, match="global (os|posix).system"):
      torch_pickle.load(str(malicious))
    status, stderr = convert_in_process(capsys, str(malicious), str(tmp_path / "export"), "--arch=resnet8")
    assert_one_error_line(status, stderr, "system", "does not load")
  assert not marker.exists()


@pytest.mark.parametrize("file", ["tensors.pth", "tensors_legacy.pth"])
def test_tensors_of_every_dtype_and_layout_read_back(file):
  loaded = torch_pickle.load(fixture_path(file))
  with np.load(fixture_path("tensors.npz")) as expected:
    assert sorted(loaded) == sorted(expected.files)
    for name in expected.files:
      assert loaded[name].shape == expected[name].shape, name
      np.testing.assert_array_equal(loaded[name].astype(expected[name].dtype), expected[name], err_msg=name)
  assert loaded["bfloat16"].dtype.name == "bfloat16" and loaded["float16"].dtype == np.float16
  assert loaded["bool"].dtype == np.bool_ and loaded["uint8"].dtype == np.uint8


def test_malformed_tensor_records_are_refused(tmp_path):
  # A tensor whose strides reach past its storage would read other memory through as_strided.
  storage = torch_pickle.StorageRef("0", np.dtype(np.float32), 4)
  pending = torch_pickle.PendingTensor(storage, 0, (4, 4), (4, 1))
  with pytest.raises(UserError, match="reaches past its storage"):
    torch_pickle._materialize(pending, {"0": np.zeros(4, np.float32)}, "test")  # pylint: disable=protected-access


if __name__ == "__main__":
  print("architecture | kd model | max abs logit diff")
  print("--- | --- | ---")
  for architecture, model, difference in parity_table():
    print(f"{architecture} | {model} | {difference:.2g}")
