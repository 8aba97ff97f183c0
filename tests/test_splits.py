"""Train fits, validation selects, test reports: the holdout, the split keys, and selection by validation."""

import json

import numpy as np
import pytest

from kd import config as config_lib
from kd import data
from kd import selection
from kd.errors import ConfigError


def _data_config(**overrides):
  data_config = config_lib.base_config().data
  data_config.update(overrides)
  return data_config


def test_the_holdout_is_a_fixed_stratified_slice_of_train_that_training_leaves_out():
  loaded = data.splits.load(_data_config(), "train", "validation", "test")
  whole = data.load_arrays("digits", "train")
  train, validation = loaded["train"], loaded["validation"]
  assert len(train["label"]) + len(validation["label"]) == len(whole["label"]) == 1438
  assert len(validation["label"]) == 143
  # Disjoint, and together every training example once (images as bytes identify examples here).
  keys = lambda arrays: [image.tobytes() + bytes([label]) for image, label in zip(arrays["image"], arrays["label"])]
  assert sorted(keys(train) + keys(validation)) == sorted(keys(whole))
  # Stratified: each class keeps round(10%) of its examples aside.
  for label in range(10):
    assert np.sum(validation["label"] == label) == round(0.1 * np.sum(whole["label"] == label))
  # Fixed: the same examples every time (no run seed involved), and the test split untouched.
  again = data.splits.load(_data_config(), "validation")["validation"]
  np.testing.assert_array_equal(again["image"], validation["image"])
  np.testing.assert_array_equal(loaded["test"]["label"], data.load_arrays("digits", "test")["label"])


def test_a_named_validation_split_or_none_leaves_train_whole():
  named = data.splits.load(_data_config(train_split="train[:90%]", validation_split="train[90%:]"),
                           "train", "validation")
  assert len(named["train"]["label"]) + len(named["validation"]["label"]) == 1438
  none = data.splits.load(_data_config(validation_split=""), "train", "validation")
  assert none["validation"] is None and len(none["train"]["label"]) == 1438
  assert data.splits.describe(_data_config(validation_split=""), "validation") == "none"


def test_token_datasets_hold_out_a_fixed_random_slice():
  arrays = {"tokens": np.arange(200).reshape(100, 2), "mask": np.ones((100, 2), bool)}
  train, validation = data.splits.holdout_indices(arrays, 0.2)
  assert len(validation) == 20 and not set(train) & set(validation) and len(train) + len(validation) == 100
  np.testing.assert_array_equal(validation, data.splits.holdout_indices(arrays, 0.2)[1])


@pytest.mark.parametrize("overrides, message", [
    ({"data.eval_split": "test"}, "data.eval_split is now data.validation_split"),
    ({"data.validation_split": "test"}, "selection on the test split"),
    ({"data.validation_fraction": 1.0}, "must lie in (0, 1)"),
    ({"data.validation_fraction": 0.0}, "must lie in (0, 1)"),
    ({"report.headline": "best", "data.validation_split": ""}, "needs data.validation_split"),
    ({"report.headline": "top"}, "choose one of ('last', 'best')"),
])
def test_split_keys_that_cannot_work_are_one_line_errors(overrides, message):
  config = config_lib.base_config()
  config.stages.teacher = config_lib.stage_config({"name": "mlp"}, {"name": "supervised"}, num_steps=1)
  config.stage_order = ("teacher",)
  config.report.update(teacher="teacher", baseline="teacher", student="teacher")
  config.eval_every_steps = 1
  for dotted, value in overrides.items():
    group, key = dotted.split(".")
    config[group][key] = value  # eval_split too: a key the schema no longer has.
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config)
  assert message in str(error.value)


def _write_rows(stage_dir, rows):
  with open(stage_dir / selection.METRICS, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def test_best_is_the_test_accuracy_at_the_step_of_best_validation_accuracy(tmp_path):
  _write_rows(tmp_path, [
      {"step": 5, "train/loss": 1.0},
      {"step": 10, "validation/accuracy": 0.80, "test/accuracy": 0.70},
      {"step": 20, "validation/accuracy": 0.90, "test/accuracy": 0.60},  # Best on validation.
      {"step": 30, "validation/accuracy": 0.85, "test/accuracy": 0.95},  # Best on test: never chosen.
      {"step": 40, "validation/accuracy": 0.90, "test/accuracy": 0.99},  # A tie: the earlier step wins.
  ])
  assert selection.best_on_validation(str(tmp_path)) == {"step": 20, "validation_accuracy": 0.90,
                                                         "test_accuracy": 0.60}


def test_without_validation_rows_nothing_is_selected(tmp_path):
  _write_rows(tmp_path, [{"step": 10, "test/accuracy": 0.7}])
  assert selection.best_on_validation(str(tmp_path)) is None
  assert selection.best_on_validation(str(tmp_path / "missing")) is None
