"""Checkpoints (Orbax): the train state with the data iterator's position, and exported models.

Layout of a stage's folder:

    <stage>/checkpoints/<step>/state      the TrainState (params, BatchNorm stats, optimizer state)
    <stage>/checkpoints/<step>/data       the data iterator's state (JSON)
    <stage>/model/                        the exported variables (params and BatchNorm stats only)
    <stage>/model.json                    what rebuilds the model: its config and the dataset spec
    <stage>/connector/                    the method's connector variables, for methods that export
                                          them for a later stage (FT's paraphraser)

Nothing is pickled: Orbax writes arrays with TensorStore and JSON beside them.
"""

import dataclasses
import json
import os
import time
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from kd import models
from kd.data import DatasetSpec
from kd.errors import UserError

MODEL_DIR = "model"
MODEL_JSON = "model.json"
CONNECTOR_DIR = "connector"


def train_manager(stage_dir: str, *, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(stage_dir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=("state", "data"),
  )


def save_train_state(manager: ocp.CheckpointManager, step: int, state, data_state: dict) -> None:
  """Saves asynchronously; the previous checkpoints stay until this one is complete."""
  # force: Orbax's default policy silently skips a save while the previous one is still being
  # written, and a checkpoint asked for (e.g. on SIGTERM) must exist.
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))


def restore_train_state(manager: ocp.CheckpointManager, abstract_state):
  """Returns (state, data_state) of the latest readable checkpoint, or None when there is none.

  `abstract_state` (from `jax.eval_shape`, with shardings) gives the structure, dtypes and
  placement of the restored arrays. A checkpoint that cannot be read (corrupted, or cut short by a
  crash) is moved to `<stage>/corrupt_checkpoints/` with a warning, never deleted, and the one before
  it is tried.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      if not isinstance(restored.data, dict):
        raise ValueError(f"data iterator state is {type(restored.data).__name__}, not a dict")
      return restored.state, restored.data
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types on bad files.
      checkpoints = str(manager.directory)
      aside = os.path.join(os.path.dirname(checkpoints), "corrupt_checkpoints", f"{step}-{int(time.time())}")
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      os.rename(os.path.join(checkpoints, str(step)), aside)
      manager.reload()
      logging.warning("checkpoint at step %d in %s cannot be read (%s: %s); moved it to %s and trying "
                      "the previous one", step, checkpoints, type(e).__name__, str(e)[:200], aside)
  return None


def export_model(stage_dir: str, model_config: dict, spec: DatasetSpec, variables,
                 source: dict[str, Any] | None = None) -> None:
  """Writes the model's variables and what is needed to rebuild it (see the module docstring).

  `source` (optional) says where the variables came from (a converted checkpoint, an external teacher).
  """
  path = os.path.abspath(os.path.join(stage_dir, MODEL_DIR))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, variables, force=True)
  description = {"model": dict(model_config), "dataset": dataclasses.asdict(spec)}
  root = models.import_root(model_config["name"])
  if root:  # A model of the user's own: where its module imports from, for any later process.
    description["import_root"] = root
  if source:
    description["source"] = source
  with open(os.path.join(stage_dir, MODEL_JSON), "w") as f:
    json.dump(description, f, indent=2)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """An exported model, ready to apply: `apply(variables, batch, train=False)["logits"]`."""

  model_config: dict[str, Any]
  spec: DatasetSpec
  module: Any
  apply: models.ApplyFn
  variables: Any


def read_model_description(stage_dir: str) -> dict[str, Any]:
  """The `model.json` of an exported model: {"model": model config, "dataset": DatasetSpec fields}."""
  description_path = os.path.join(stage_dir, MODEL_JSON)
  if not os.path.exists(description_path):
    raise UserError(f"no exported model in {stage_dir} (no {MODEL_JSON}): run that stage to the end "
                    "first, or point the config at the right workdir")
  with open(description_path) as f:
    return json.load(f)


def load_model(stage_dir: str) -> LoadedModel:
  """Loads the model a stage exported (`<workdir>/<stage>`), e.g. a teacher for a later stage."""
  description = read_model_description(stage_dir)
  spec_dict = description["dataset"]
  spec = DatasetSpec(**{**spec_dict, "input_shape": tuple(spec_dict["input_shape"])})
  model_config = description["model"]
  model_config = {k: tuple(v) if isinstance(v, list) else v for k, v in model_config.items()}
  models.ensure_importable(model_config["name"], description.get("import_root"))
  module = models.build_model(model_config, spec.num_classes)
  example = jax.ShapeDtypeStruct((1,) + spec.input_shape, spec.input_dtype)
  abstract = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x), example)
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      variables = checkpointer.restore(os.path.abspath(os.path.join(stage_dir, MODEL_DIR)), abstract)
    except (ValueError, KeyError) as e:
      raise UserError(f"the model in {stage_dir} does not match its {MODEL_JSON} ({e}); "
                      "retrain that stage in a fresh workdir") from e
  apply = models.make_apply(module, spec.input_key, preprocess=models.preprocess_of(model_config))
  return LoadedModel(model_config, spec, module, apply, dict(variables))


def export_connector(stage_dir: str, variables) -> None:
  """Writes a method's connector variables ({"params": ..., other collections}) for a later stage."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.abspath(os.path.join(stage_dir, CONNECTOR_DIR)), variables, force=True)


def load_connector(stage_dir: str, abstract_variables):
  """The connector variables a stage exported, restored into the structure of `abstract_variables`."""
  path = os.path.abspath(os.path.join(stage_dir, CONNECTOR_DIR))
  if not os.path.isdir(path):
    raise UserError(f"no exported connector in {stage_dir}: run that stage to the end first")
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      return checkpointer.restore(path, abstract_variables)
    except (ValueError, KeyError) as e:
      raise UserError(f"the connector exported in {stage_dir} does not fit this stage's ({e}): the two "
                      "stages must read the same teacher feature with the same method parameters") from e
