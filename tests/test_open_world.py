"""Models and teachers from outside kd: import paths, exports from other workdirs, checkpoints in other
formats, models in memory, initial weights, and the input preprocessing that travels with a model."""

import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy

import kd
from kd import checkpoint
from kd import config as config_lib
from kd import external
from kd import models
from kd.errors import ConfigError
from kd.methods import method_config

from conftest import REPO
from conftest import run_main

USER_PROJECT = os.path.join(REPO, "tests", "user_project")
STUDENT = {"name": "cnn", "channels": (32,), "hidden": 32}


def _config(**student_stage) -> "config_lib.ml_collections.ConfigDict":
  """A student distilled on digits for a few steps, its teacher from elsewhere; the report card's
  baseline row is the student itself (one stage to train)."""
  config = config_lib.base_config()
  config.stages.student = config_lib.stage_config(STUDENT, method_config("hinton_kd"), num_steps=6,
                                                  **student_stage)
  config.stage_order = ("student",)
  config.report.baseline = "student"
  config.log_every_steps = 3
  return config


def _provenance(workdir, stage="student"):
  with open(os.path.join(workdir, "seed_0", stage, "provenance.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def teacher(smoke_workdir):
  return kd.load_model(os.path.join(smoke_workdir, "seed_0", "teacher"))


def test_a_model_by_import_path_trains_exports_and_loads_in_a_process_that_never_imported_it(tmp_path):
  # The config imports tiny_models.py from its own folder: no PYTHONPATH.
  from test_end_to_end import _unoptimised_xla  # pylint: disable=g-import-not-at-top
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = run_main("--config=tests/user_project/mixer_digits.py:smoke", f"--workdir={tmp_path}",
                    env={"PYTHONPATH": "", **_unoptimised_xla()})
  assert result.returncode == 0, result.stderr[-3000:]
  description = checkpoint.read_model_description(str(tmp_path / "seed_0" / "student"))
  assert description["model"]["name"] == "tiny_models:TinyMixer"
  assert description["import_root"] == USER_PROJECT
  # A fresh interpreter elsewhere, with nothing on its path, loads the export and runs it.
  script = ("import kd, numpy as np; m = kd.load_model({!r}); "
            "print(type(m.module).__module__, m.apply(m.variables, {{'image': np.zeros((2, 8, 8, 1), np.uint8)}},"
            " train=False)['logits'].shape)").format(str(tmp_path / "seed_0" / "student"))
  loaded = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=300)
  assert loaded.returncode == 0, loaded.stderr[-3000:]
  assert loaded.stdout.split() == ["tiny_models", "(2,", "10)"]


def test_an_error_in_the_users_model_is_one_line_naming_its_file_and_line_before_training(tmp_path):
  result = run_main("--config=tests/user_project/mixer_digits.py:broken", f"--workdir={tmp_path}")
  assert result.returncode == 2
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1 and "Traceback" not in result.stderr
  assert "NameError: name 'undefined_layer' is not defined" in error_lines[0]
  assert f"{os.path.join(USER_PROJECT, 'tiny_models.py')}:59" in error_lines[0]
  assert not os.path.exists(tmp_path / "seed_0")  # Checked before any stage trained.
  shown = run_main("--config=tests/user_project/mixer_digits.py:broken", f"--workdir={tmp_path}",
                   "--traceback")
  assert "Traceback (most recent call last)" in shown.stderr and "undefined_layer(images)" in shown.stderr


@pytest.mark.parametrize("source,words", [
    ("import my_linen\n", ["ModuleNotFoundError: No module named 'my_linen'", "bad_config.py:1"]),
    ("def get_config(arg=None):\n  return TinyVit\n", ["NameError: name 'TinyVit' is not defined",
                                                       "bad_config.py:2, in get_config"]),
    ("X = 1\n", ["defines no get_config"]),
])
def test_an_error_in_the_config_file_is_one_line_naming_its_line(tmp_path, source, words):
  path = tmp_path / "bad_config.py"
  path.write_text(source)
  result = run_main(f"--config={path}", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith("error: ") and all(word in line for word in words), line


@pytest.mark.parametrize("name,words", [
    ("no_such_module:Model", ["no module named 'no_such_module'", "next to the config file"]),
    ("tiny_models:Nope", ["has no 'Nope'", "TinyMixer"]),
    ("tiny_models:jnp", ["is a module, not a flax.linen.Module or flax.nnx.Module class"]),
])
def test_a_wrong_import_path_is_one_line(tmp_path, name, words):
  result = run_main("--config=tests/user_project/mixer_digits.py:smoke", f"--workdir={tmp_path}",
                    f"--config.stages.student.model.name={name}")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert all(word in result.stderr for word in words), result.stderr[-2000:]


def test_model_attributes_without_defaults_must_be_set():
  sys.path.insert(0, USER_PROJECT)
  with pytest.raises(ConfigError, match=r"does not set \['width'\]"):
    models.check_model_config(models.model_config("tiny_models:NeedsWidth"), "stages.student.model")
  models.check_model_config(models.model_config("tiny_models:NeedsWidth", width=8), "stages.student.model")


def test_an_nnx_model_by_import_path_and_its_tap_points():
  sys.path.insert(0, USER_PROJECT)
  import tiny_models  # pylint: disable=g-import-not-at-top
  config = models.model_config(tiny_models.NNXMLP, hidden=8)
  assert config == {"name": "tiny_models:NNXMLP", "hidden": 8, "in_features": 64}
  module = models.build_model(config, 10)
  taps = kd.features.tap_points(module, jax.ShapeDtypeStruct((2, 8, 8, 1), np.float32))
  assert taps == {"hidden": (2, 8), "head": (2, 10)}


def test_tap_points_of_linen_and_nnx_token_models_are_token_features():
  sys.path.insert(0, USER_PROJECT)
  example = jax.ShapeDtypeStruct((2, 8, 8, 1), np.float32)
  nnx_taps = kd.features.tap_points(models.build_model(models.model_config("tiny_models:NNXTokenMixer"), 10), example)
  assert nnx_taps["embed"] == (2, 16, 16) and nnx_taps["blocks/0"] == (2, 16, 16) and nnx_taps["blocks/1"] == (2, 16, 16)
  linen_taps = kd.features.tap_points(models.build_model(models.zoo_model_config("deit_tiny_distilled_patch16_224"), 10),
                                      jax.ShapeDtypeStruct((2, 224, 224, 3), np.float32))
  assert linen_taps["blocks_11"] == (2, 198, 192) and linen_taps["head_dist"] == (2, 10)


def test_the_same_teacher_from_an_export_a_checkpoint_or_memory_gives_the_same_report(tmp_path, teacher):
  exported = os.path.join(tmp_path, "exported")
  checkpoint.export_model(exported, teacher.model_config, teacher.spec, teacher.variables)
  msgpack_path = tmp_path / "teacher.msgpack"
  msgpack_path.write_bytes(flax.serialization.msgpack_serialize(jax.device_get(teacher.variables)))
  flat = {"/".join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(teacher.variables))[0]}
  safetensors.numpy.save_file(flat, str(tmp_path / "teacher.safetensors"))
  orbax_dir = str(tmp_path / "orbax_teacher")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(orbax_dir, jax.device_get(teacher.variables))
  with_model = {"teacher_model": {**teacher.model_config, "preprocess": "unit"}}

  runs = {
      "export": kd.run(_config(teacher=f"export:{exported}"), str(tmp_path / "a")),
      "msgpack": kd.run(_config(teacher_checkpoint=str(msgpack_path), **with_model), str(tmp_path / "b")),
      "safetensors": kd.run(_config(teacher_checkpoint=str(tmp_path / "teacher.safetensors"), **with_model),
                            str(tmp_path / "c")),
      "orbax": kd.run(_config(teacher_checkpoint=orbax_dir, **with_model), str(tmp_path / "d")),
      "memory": kd.run(_config(teacher="mine"), str(tmp_path / "e"),
                       teachers={"mine": (teacher.module, teacher.variables, "unit")}),
  }
  reference = runs["export"]
  for name, report in runs.items():
    assert report["teacher"]["accuracy"] == reference["teacher"]["accuracy"], name
    assert report["student"]["accuracy"] == reference["student"]["accuracy"], name
    assert report["kl"] == pytest.approx(reference["kl"], abs=1e-6), name
  assert runs["msgpack"]["teacher"]["stage"] == f"checkpoint {msgpack_path}"
  # Provenance names the source and the hash of the teacher's variables, the same for all.
  sources = {name: _provenance(str(tmp_path / d))["sources"]["teacher"] for name, d in
             zip(runs, "abcde")}
  assert sources["export"]["kind"] == "export" and sources["msgpack"]["path"] == str(msgpack_path)
  assert sources["memory"] == {"kind": "memory", "name": "mine", "variables_sha256": sources["memory"]["variables_sha256"],
                               "preprocess": "unit"}
  assert len({s["variables_sha256"] for s in sources.values()}) == 1


def test_a_teacher_given_as_an_apply_function(tmp_path, teacher, smoke_workdir):
  calls = []

  def apply(variables, batch, *, train, rngs=None):
    del rngs
    calls.append(batch["image"].dtype)  # The apply sees the preprocessed inputs, floats.
    return teacher.module.apply(variables, batch["image"], train=train)

  report = kd.run(_config(teacher="fn"), str(tmp_path / "fn"), teachers={"fn": (apply, teacher.variables, "unit")})
  assert calls and all(dtype == np.float32 for dtype in calls)
  with open(os.path.join(smoke_workdir, "seed_0", "teacher", "result.json")) as f:
    assert report["teacher"]["accuracy"] == pytest.approx(json.load(f)["test/accuracy"])
  with pytest.raises(ConfigError, match="states no input preprocessing|does not state the input preprocessing"):
    kd.run(_config(teacher="fn"), str(tmp_path / "unstated"), teachers={"fn": (apply, teacher.variables)})


def test_checkpoints_that_state_no_preprocessing_or_do_not_fit_are_refused_before_training(tmp_path, teacher):
  path = tmp_path / "teacher.msgpack"
  path.write_bytes(flax.serialization.msgpack_serialize(jax.device_get(teacher.variables)))
  with pytest.raises(ConfigError, match="does not state the input preprocessing"):
    kd.run(_config(teacher_checkpoint=str(path), teacher_model=dict(teacher.model_config)), str(tmp_path / "a"))
  wrong = {**teacher.model_config, "channels": (16, 64), "preprocess": "unit"}
  with pytest.raises(ConfigError, match=r"does not fit the model: \['batch_stats'\]\['norm0'\]\['mean'\] is \(32,\), "
                                        r"expected \(16,\)"):
    kd.run(_config(teacher_checkpoint=str(path), teacher_model=wrong), str(tmp_path / "b"))
  with pytest.raises(ConfigError, match="needs the model that reads it"):
    config_lib.validate(_config(teacher_checkpoint=str(path)))
  with pytest.raises(ConfigError, match="no such file or folder"):
    kd.run(_config(teacher_checkpoint=str(tmp_path / "missing.msgpack"),
                   teacher_model={**teacher.model_config, "preprocess": "unit"}), str(tmp_path / "c"))
  assert not os.path.exists(tmp_path / "a" / "seed_0") and not os.path.exists(tmp_path / "b" / "seed_0")


def test_init_from_starts_a_stage_from_a_checkpoint_and_zero_steps_import_it(tmp_path, smoke_workdir):
  baseline_dir = os.path.join(smoke_workdir, "seed_0", "baseline")
  baseline = kd.load_model(baseline_dir)
  config = _config(teacher=f"export:{os.path.join(smoke_workdir, 'seed_0', 'teacher')}")
  config.stages.baseline = config_lib.stage_config(STUDENT, method_config("supervised"))
  config.stage_order = ("baseline", "student")
  config.report.baseline = "baseline"
  config.stages.baseline.init_from = f"export:{baseline_dir}"
  config.stages.baseline.num_steps = 0  # Import only: evaluate and export the checkpoint as it is.
  config.stages.student.init_from = f"export:{baseline_dir}"
  report = kd.run(config, str(tmp_path))
  imported = kd.load_model(str(tmp_path / "seed_0" / "baseline"))
  assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(imported.variables),
                                   jax.device_get(baseline.variables)))
  with open(os.path.join(baseline_dir, "result.json")) as f:
    assert report["baseline"]["accuracy"] == pytest.approx(json.load(f)["test/accuracy"])
  assert _provenance(str(tmp_path))["sources"]["init_from"]["path"] == f"export:{baseline_dir}"
  # A student started from the baseline's weights differs from both a random start and its start.
  student = kd.load_model(str(tmp_path / "seed_0" / "student"))
  assert not np.array_equal(student.variables["params"]["head"]["kernel"], baseline.variables["params"]["head"]["kernel"])
  with pytest.raises(ConfigError, match="num_steps=0 must be > 0 .0 only with init_from"):
    config.stages.baseline.init_from = ""
    config_lib.validate(config)


def test_each_model_gets_the_inputs_it_was_trained_on(tmp_path, teacher):
  """A teacher exported with a normalisation is fed normalised inputs; the student its own."""
  normalised = {**teacher.model_config, "preprocess": "range=0:1 mean=0.5 std=0.25"}
  checkpoint.export_model(str(tmp_path / "t"), normalised, teacher.spec, teacher.variables)
  loaded = kd.load_model(str(tmp_path / "t"))
  images = np.random.RandomState(0).randint(0, 256, (4, 8, 8, 1)).astype(np.uint8)
  by_hand = teacher.module.apply(teacher.variables, (images / 255.0 - 0.5) / 0.25, train=False)
  np.testing.assert_allclose(loaded.apply(loaded.variables, {"image": images}, train=False)["logits"], by_hand,
                             atol=1e-5)
  unit = teacher.apply(teacher.variables, {"image": images}, train=False)["logits"]
  assert not np.allclose(unit, by_hand, atol=1e-3)  # The statement changes what the model sees.
  assert external.load_teacher(_config(teacher=f"export:{tmp_path / 't'}"), "student", "",
                               teacher.spec).preprocess == "range=0:1 mean=0.5 std=0.25"


def test_a_paper_config_distils_a_released_repdistiller_teacher_from_its_pth(tmp_path):
  """tian2020_crd with `teacher_checkpoint=` on RepDistiller's own resnet8 (random weights, saved with
  torch.save as its train_teacher.py does): the teacher stage imports it with CIFAR-100 normalisation."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  fixtures = os.path.join(REPO, "tests", "fixtures", "repdistiller")
  pth = os.path.join(fixtures, "resnet8.pth")
  workdir = str(tmp_path / "run")
  # RepDistiller's resnet8 stands in for the pair's teacher (a full-size one is over a megabyte).
  config = kd.load_config(os.path.join(REPO, "experiments", "tian2020_crd.py"),
                          f"pair=resnet56_resnet20,method=kd,smoke=1,teacher_checkpoint={pth}",
                          **{"stages.teacher.model.depth": 8})
  with tfds.testing.mock_data(num_examples=16), jax.disable_jit():  # Op by op: seconds, not a compile.
    kd.run(config, workdir, ["teacher", "kd"])
  teacher_dir = os.path.join(workdir, "seed_0", "teacher")
  with open(os.path.join(teacher_dir, "result.json")) as f:
    assert json.load(f)["step"] == 0  # Imported, not trained.
  teacher = kd.load_model(teacher_dir)
  assert teacher.model_config["preprocess"] == "cifar100"
  images = np.load(os.path.join(fixtures, "images.npy"))
  with np.load(os.path.join(fixtures, "logits.npz")) as reference:
    expected = reference["resnet8"]
  logits = teacher.apply(teacher.variables, {"image": images}, train=False)["logits"]
  assert float(np.max(np.abs(np.asarray(logits) - expected))) < 1e-4
  assert _provenance(workdir, "teacher")["sources"]["init_from"]["path"] == pth
  with open(os.path.join(workdir, "seed_0", "kd", "result.json")) as f:
    assert json.load(f)["step"] == 2
  assert _provenance(workdir, "kd")["sources"]["teacher"]["preprocess"] == "cifar100"


def test_the_bring_your_own_notebook_runs_headless(tmp_path):
  from test_end_to_end import _run_notebook, _unoptimised_xla  # pylint: disable=g-import-not-at-top
  outputs = _run_notebook("bring_your_own.ipynb", str(tmp_path), env=_unoptimised_xla())
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "in memory  teacher" in text and "from file  teacher" in text
  assert os.path.exists(tmp_path / "from_file" / "seed_0" / "student" / "model.json")


def test_an_nnx_model_built_in_memory_is_a_teacher_whose_tokens_a_student_distils(tmp_path):
  sys.path.insert(0, USER_PROJECT)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import tiny_models  # pylint: disable=g-import-not-at-top
  teacher = tiny_models.NNXTokenMixer(10, rngs=nnx.Rngs(0))
  fitnets = method_config("fitnets", student_features=("block1",), teacher_features=("blocks/1",), hint_weight=1.0)
  config = _config(teacher="nnx")
  config.stages.student = config_lib.stage_config({"name": "tiny_models:TinyMixer"}, fitnets, teacher="nnx",
                                                  num_steps=4)
  report = kd.run(config, str(tmp_path), teachers={"nnx": (teacher, None, "unit")})  # None: its own variables.
  assert report["teacher"]["params"] == models.count_params(nnx.state(teacher, nnx.Param))
  with open(tmp_path / "seed_0" / "student" / "metrics.jsonl") as f:
    hints = [json.loads(line)["train/hint"] for line in f if "train/hint" in line]
  assert hints and all(np.isfinite(hints)) and hints[0] > 0
