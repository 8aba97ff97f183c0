"""What every converter provides: a published layout mapped onto a kd model."""

import dataclasses
from typing import Any, Callable

import numpy as np

StateDict = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Architecture:
  """How one architecture's published checkpoint layout maps onto a kd model.

  Attributes:
    model: the kd model config it converts into (name and attributes; no `preprocess`).
    preprocess: the inputs the reference implementation trains on (a `kd.models.preprocessing`
      string), recorded in the export so the model is always fed what it expects.
    input_shape: one example's shape (H, W, C) the architecture is built for.
    num_classes: `(state_dict) -> int`, read off the classifier's weights.
    convert: `(state_dict, model_config) -> variables` ({"params": ..., "batch_stats": ...} as the kd
      model's `init` makes them, numpy arrays); raises `kd.errors.UserError` naming any array that is
      missing or does not fit.
    reference: where the layout comes from (repository and file, or package and function).
  """

  model: dict[str, Any]
  preprocess: str
  input_shape: tuple[int, ...]
  num_classes: Callable[[StateDict], int]
  convert: Callable[[StateDict, dict[str, Any]], dict[str, Any]]
  reference: str
