"""Every experiment file's sweep builds and validates, and every smoke variant trains, so none can rot.

For each `experiments/*.py` with `sweep(add)`: every sweep point builds, passes `kd.config.validate`,
and its methods' feature patterns resolve to tap points of its models with shapes the methods
accept (the checks `kd.main` makes before compiling, on shapes only). Then each file's smoke variant
runs through `kd.main` on `tfds.testing.mock_data` (random examples with the real dataset's shapes
and classes), training and exporting every stage but the baseline, op by op (`jax.disable_jit`).
"""

import contextlib
import functools
import glob
import importlib.util
import json
import os
import re

from absl import flags
import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

from conftest import REPO
from kd import config as config_lib
from kd import data
from kd import features
from kd import external
from kd import methods
from kd import models

EXPERIMENTS = sorted(glob.glob(os.path.join(REPO, "experiments", "*.py")))
# Smoke variants already run end to end by other tests.
SMOKE_RUN_ELSEWHERE = {"quickstart.py": "tests/test_end_to_end.py and conftest.smoke_workdir",
                       "methods_digits.py": "tests/test_end_to_end.py (with the methods notebook)",
                       "methods_mnist1d.py": "tests/test_end_to_end.py (the methods notebook runs it)",
                       "lm_stdlib.py": "tests/test_lm_end_to_end.py (with the language-model notebook)",
                       # Their smoke variants read a tokenizer and a Hugging Face teacher made by an earlier
                       # step (not a stage), on real text: mock data cannot stand in.
                       "qwen3_stdlib.py": "tests/test_lm_students.py (every step of the experiment)",
                       "hf_distill.py": "tests/test_lm_students.py (on the qwen3 fixture checkpoint)",
                       # Their stages' paths (an ensemble stage and a student of it; a pruned stage resumed)
                       # run end to end in tests/test_ensembles.py and tests/test_compression.py.
                       "ensemble_mnist1d.py": "tests/test_ensembles.py", "zhu2017_prune.py": "tests/test_compression.py",
                       # Generations chained by teacher= with their ensemble, a mutual-learning cohort, a LoRA
                       # stage from init_from: the notebook test runs each (tests/test_notebook_beyond_one_teacher.py).
                       "furlanello2018_ban.py": "tests/test_notebook_beyond_one_teacher.py",
                       "zhang2018_dml.py": "tests/test_notebook_beyond_one_teacher.py",
                       "hu2022_lora.py": "tests/test_notebook_beyond_one_teacher.py",
                       # Both runs (bytes, then BPE from the bytes run's export) through run_all, on real text.
                       "boizard2024_uld.py": "tests/test_notebook_cross_tokenizer.py"}
MOCK_EXAMPLES = 24  # Per split: enough for batches of 8 and CRD's negatives.


def _module(path):
  spec = importlib.util.spec_from_file_location(f"experiment_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _sweep_points(module) -> list:
  """(arg, overrides) of each `add(arg, name=..., **overrides)` call, as `python -m kd.sweep` reads them."""
  points = []

  def add(arg=None, *, name=None, **overrides):
    del name
    points.append((arg, overrides))

  module.sweep(add)
  return points


def _build(module, arg, overrides):
  config = module.get_config(arg) if arg is not None else module.get_config()
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.replace("__", ".").split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@functools.lru_cache(maxsize=None)
def _spec(name: str, image_size: int = 0) -> data.DatasetSpec:
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    return data.load_spec(name, image_size=image_size)


@functools.lru_cache(maxsize=None)
def _taps(model_json: str, input_shape: tuple, num_classes: int) -> dict:
  model = models.build_model(json.loads(model_json), num_classes)
  return features.tap_points(model, jax.ShapeDtypeStruct((2,) + input_shape, jnp.float32))


def _check_features(config, stage_name: str) -> None:
  """What kd.train.resolve_stage_features checks, with tap points cached per model."""
  stage = config.stages[stage_name]
  student_patterns, teacher_patterns = methods.feature_patterns(stage.method)
  if not student_patterns and not teacher_patterns:
    return
  spec = _spec(config.data.name, config.data.image_size)
  where = f"stages.{stage_name}.method"

  def resolve(model_config, patterns, key):
    if not patterns:
      return {}
    taps = _taps(json.dumps(model_config.to_dict(), sort_keys=True), spec.input_shape, spec.num_classes)
    return {path: taps[path] for path in features.select(patterns, list(taps), f"{where}.{key}")}

  student_shapes = resolve(stage.model, student_patterns, "student_features")
  teacher_model = config.stages[stage.teacher].model if stage.teacher else None
  teacher_shapes = resolve(teacher_model, teacher_patterns, "teacher_features")
  methods.check_feature_shapes(stage.method, student_shapes, teacher_shapes, where)


SWEEPS = [path for path in EXPERIMENTS if hasattr(_module(path), "sweep")]


@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_every_sweep_point_builds_validates_and_resolves_its_features(path):
  module = _module(path)
  points = _sweep_points(module)
  assert points, f"{path}: sweep() added no runs"
  assert len(set(map(str, points))) == len(points), f"{path}: sweep() repeats a run"
  for arg, overrides in points:
    config = _build(module, arg, overrides)
    config_lib.validate(config)
    for stage_name in config.stage_order:
      _check_features(config, stage_name)


def _is_language_model(path) -> bool:
  return _module(path).get_config("smoke").data.name == "stdlib_text"


# Paper files of image classifiers hold the paper's top-1 accuracies; the language-model papers report
# perplexities, ROUGE or win rates of models that cannot be run here, so their files state the findings.
PAPERS = [path for path in SWEEPS
          if re.match(r"[a-z]+\d{4}_?", os.path.basename(path)) and not _is_language_model(path)]


@pytest.mark.parametrize("path", PAPERS, ids=os.path.basename)
def test_reported_numbers_cover_the_sweep(path):
  """Each paper file holds the paper's numbers as data: every swept run has a number to compare to."""
  module = _module(path)
  reported = getattr(module, "REPORTED", None)
  assert isinstance(reported, dict) and reported, f"{path} has no REPORTED dict"
  for value in _flatten(reported):
    assert isinstance(value, (int, float)) and 0 <= value <= 100


def _flatten(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _flatten(value)
  else:
    yield tree


def test_arguments_are_parsed_and_bad_ones_named():
  module = _module(os.path.join(REPO, "experiments", "tian2020_crd.py"))
  config = module.get_config("pair=resnet56_resnet20,method=fitnet")
  assert config.stage_order == ("teacher", "baseline", "fitnet")
  assert config.stages.fitnet.model.depth == 20 and config.stages.teacher.model.depth == 56
  # The published recipe: 240 epochs of batch 64 on 50,000 images, decays at 150/180/210.
  optimizer = config.stages.fitnet.optimizer
  assert config.stages.fitnet.num_steps == 187_500
  assert tuple(optimizer.decay_boundaries) == (117_188, 140_625, 164_062)
  assert (optimizer.name, optimizer.learning_rate, optimizer.weight_decay, optimizer.nesterov) == (
      "sgd", 0.05, 5e-4, False)
  assert config.data.augment.crop_padding == 4 and config.data.augment.flip
  light = module.get_config("pair=resnet32x4_ShuffleV1,method=kd")
  assert light.stages.kd.optimizer.learning_rate == 0.01  # MobileNet/ShuffleNet students.
  every = module.get_config("pair=vgg13_vgg8,method=all")
  assert set(every.report.compare) - {"baseline"} == set(module.REPORTED["vgg13_vgg8"]) - {"teacher", "baseline"}
  assert every.stage_order.index("paraphraser") == every.stage_order.index("ft") - 1
  assert every.stages.paraphraser.method.name == "ft_paraphraser"
  with pytest.raises(ValueError, match="unknown pair"):
    module.get_config("pair=resnet9_resnet1")
  with pytest.raises(ValueError, match="cannot run here"):
    module.get_config("pair=ResNet50_vgg8")
  with pytest.raises(ValueError, match="not in the table"):
    module.get_config("pair=wrn_40_2_wrn_40_1,method=fsp")  # N/A in the paper: channels differ.
  with pytest.raises(ValueError, match="unknown keys"):
    module.get_config("pair=vgg13_vgg8,methd=kd")


def _run_main(argv: list[str]) -> None:
  """`python -m kd.main ARGV` in this process (so that mock_data applies)."""
  from kd import main as kd_main  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  kd_main.parse_flags(["kd.main", *argv])
  kd_main.main([])


SMOKES = [path for path in EXPERIMENTS if os.path.basename(path) not in SMOKE_RUN_ELSEWHERE]


@pytest.mark.parametrize("path", SMOKES, ids=os.path.basename)
def test_smoke_variant_trains_every_stage_through_kd_main(path, tmp_path):
  module = _module(path)
  config = module.get_config("smoke")
  assert all(stage.num_steps <= 5 for stage in config.stages.values()), "smoke must run in seconds"
  # Every stage but the baseline: the baseline trains like the teacher (labels only), and without it
  # no report card is built, whose latency measurements at batch 256 would take most of the time
  # (the report card is tested on the quickstart).
  # (Unless a later stage starts from or distils from it, as born-again generations do.)
  needed = {dependency for name in config.stage_order for dependency in external.stage_dependencies(config, name)}
  stages = [name for name in config.stage_order if name != config.report.baseline or name in needed]
  workdir = str(tmp_path / "run")
  # Without jit: two steps of the CIFAR models run op by op in seconds, where compiling each stage's
  # fused step takes ~30 s of CPU; the compiled step is tested elsewhere (tests/test_train_step.py,
  # the method tests, the quickstart), and ops compiled once here serve every later file.
  # Language models generate with lax.scan, which op by op is slower than compiling their tiny models.
  op_by_op = contextlib.nullcontext() if _is_language_model(path) else jax.disable_jit()
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES), op_by_op:
    _run_main([f"--config={path}:smoke", f"--workdir={workdir}", f"--stages={','.join(stages)}"])
  for seed in config.seeds:
    for stage_name in stages:
      with open(os.path.join(workdir, f"seed_{seed}", stage_name, "result.json")) as f:
        result = json.load(f)
      assert result["step"] == config.stages[stage_name].num_steps
      assert 0.0 <= result["test/accuracy"] <= 1.0
      assert os.path.exists(os.path.join(workdir, f"seed_{seed}", stage_name, "model.json"))
