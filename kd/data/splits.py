"""The three splits of an experiment: train (fits), validation (selects), test (reports).

    data.train_split        a TFDS split or slice, e.g. "train" or "train[:90%]"
    data.validation_split   "holdout" (default): a fixed, stratified `data.validation_fraction` of
                            train_split, which training then leaves out; or a TFDS split or slice
                            ("validation", "train[90%:]"), with train_split used whole; or "" (none:
                            train on all of train_split, as papers that report the final epoch do)
    data.test_split         the report card's split, never used to select anything

The holdout is part of the dataset's definition, not of a run: it is drawn with a fixed seed, so every
seed, stage and process sees the same one. For datasets without labels (token windows) it is a fixed
random slice. Examples are numbered within the arrays a split yields, so the "index" of a training
example (CRD's memory bank, the teacher-output cache) counts the examples that remain after the
holdout.
"""

from typing import Any

import numpy as np

from kd.data import pipeline
from kd.data.digits import stratified_split  # (kept, held_out) indices, stratified by label.
from kd.errors import ConfigError

HOLDOUT = "holdout"
HOLDOUT_SEED = 0  # Part of the split's definition: never change it.
ROLES = ("train", "validation", "test")


def _random_split(num_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  order = np.random.default_rng(seed).permutation(num_examples)
  num_held_out = int(round(num_examples * fraction))
  return np.sort(order[num_held_out:]), np.sort(order[:num_held_out])


def holdout_indices(arrays: pipeline.Batch, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train_indices, validation_indices) of the holdout carved from `arrays` (a split in memory)."""
  if "label" in arrays:
    return stratified_split(arrays["label"], fraction, HOLDOUT_SEED)
  return _random_split(pipeline.num_examples(arrays), fraction, HOLDOUT_SEED)


def _take(arrays: pipeline.Batch, indices: np.ndarray) -> pipeline.Batch:
  return {key: value[indices] for key, value in arrays.items()}


def tfds_splits(data_config) -> list[str]:
  """The TFDS splits (or slices) the config reads."""
  validation = data_config.validation_split
  return [data_config.train_split, data_config.test_split] + (
      [validation] if validation and validation != HOLDOUT else [])


def load(data_config, *roles: str) -> dict[str, pipeline.Batch | None]:
  """The arrays of each role in `roles` ("train", "validation", "test"); validation is None without one.

  With the holdout, "train" is train_split minus the held-out examples and "validation" is those.
  """
  name, data_dir, image_size = data_config.name, data_config.data_dir, data_config.image_size
  validation = data_config.validation_split
  out: dict[str, Any] = {}
  if validation == HOLDOUT and ({"train", "validation"} & set(roles)):
    whole = pipeline.load_arrays(name, data_config.train_split, data_dir, image_size)
    train_indices, validation_indices = holdout_indices(whole, data_config.validation_fraction)
    if not len(validation_indices) or not len(train_indices):
      raise ConfigError(f"data.validation_fraction={data_config.validation_fraction} of "
                        f"{data_config.train_split!r} ({pipeline.num_examples(whole)} examples) leaves "
                        "an empty train or validation split: choose another fraction")
    held = {"train": _take(whole, train_indices), "validation": _take(whole, validation_indices)}
    out.update({role: held[role] for role in ("train", "validation") if role in roles})
  for role in roles:
    if role in out:
      continue
    split = {"train": data_config.train_split, "validation": validation, "test": data_config.test_split}[role]
    out[role] = pipeline.load_arrays(name, split, data_dir, image_size) if split else None
  return out


def describe(data_config, role: str) -> str:
  """Where a role's examples come from, in words (logs, the report card, cache keys)."""
  validation = data_config.validation_split
  if role == "train":
    if validation == HOLDOUT:
      return f"{data_config.train_split} minus its {data_config.validation_fraction:.0%} validation holdout"
    return data_config.train_split
  if role == "validation":
    if validation == HOLDOUT:
      return f"{data_config.validation_fraction:.0%} holdout of {data_config.train_split}"
    return validation or "none"
  return data_config.test_split
