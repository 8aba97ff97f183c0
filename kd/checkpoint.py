"""Checkpoints (Orbax): the train state with the data iterator's position, and exported models.

Layout of a stage's folder:

    <stage>/checkpoints/<step>/state      the TrainState (params, BatchNorm stats, optimizer state)
    <stage>/checkpoints/<step>/data       the data iterator's state (JSON)
    <stage>/model/                        the exported variables (params and BatchNorm stats only)
    <stage>/model.json                    what rebuilds the model: its config and the dataset spec
    <stage>/connector/                    the method's connector variables, for methods that export
                                          them for a later stage (FT's paraphraser)

Nothing is pickled: Orbax writes arrays with TensorStore and JSON beside them.

Every checkpoint and export carries a manifest, written last, once its data is complete: the size and
SHA-256 of each of its files, `{"format": 1, "files": {path: {"size": ..., "sha256": ...}}}`.

    <stage>/checkpoints/<step>/manifest.json   paths relative to the step's folder
    <stage>/model/manifest.json                paths relative to the stage's folder (model/..., model.json)
    <stage>/connector/manifest.json            paths relative to the stage's folder (connector/...)

Bytes that changed on disk (a bad disk, a copy cut short and resumed) are found before they are read:
a corrupt checkpoint is set aside and the one before it restored; a corrupt export is an error.
"""

import dataclasses
import errno
import hashlib
import json
import logging as std_logging
import os
import re
import shutil
import sys
import threading
import time
import traceback
import warnings
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
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# Orbax writes a step into `<step>.orbax-checkpoint-tmp...` and renames it when complete.
_ORBAX_TMP = ".orbax-checkpoint-tmp"


# Manifests.

def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _files_under(root: str, folder: str) -> list[str]:
  """The files under `root/folder`, as paths relative to `root`, without any manifest."""
  found = []
  for parent, dirs, files in os.walk(os.path.join(root, folder)):
    dirs.sort()
    for name in sorted(files):
      if name != MANIFEST and not name.startswith(MANIFEST + ".tmp"):
        found.append(os.path.relpath(os.path.join(parent, name), root))
  return found


def write_manifest(manifest_path: str, root: str, relative_paths: list[str]) -> None:
  """Writes the sizes and SHA-256 of `root/<path>` for each path, atomically (a temporary file, renamed)."""
  files = {}
  for relative in relative_paths:
    path = os.path.join(root, relative)
    files[relative.replace(os.sep, "/")] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
  temporary = f"{manifest_path}.tmp-{os.getpid()}"
  with open(temporary, "w") as f:
    json.dump({"format": MANIFEST_FORMAT, "files": files}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, manifest_path)


def verify_manifest(manifest_path: str, root: str) -> tuple[str, str]:
  """Compares the files under `root` with the manifest at `manifest_path`.

  Returns:
    ("ok", ""), every file listed has its size and hash; ("unverified", why), no manifest or one of a
    newer format; ("mismatch", what), naming the first file (in sorted order) that is missing or
    differs, or the manifest itself when it cannot be read.
  """
  name = os.path.basename(manifest_path)
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    return "unverified", f"no {name}"
  except (OSError, ValueError) as e:  # Truncated or garbled: its files cannot be trusted either.
    return "mismatch", f"{name} is unreadable ({type(e).__name__}: {str(e)[:80]})"
  if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
    return "mismatch", f"{name} is unreadable (no files listed)"
  if manifest.get("format") != MANIFEST_FORMAT:
    return "unverified", f"{name} has format {manifest.get('format')!r}, this kd reads {MANIFEST_FORMAT}"
  for relative in sorted(manifest["files"]):
    expected = manifest["files"][relative]
    path = os.path.join(root, *relative.split("/"))
    if not os.path.isfile(path):
      return "mismatch", f"{relative} is missing"
    size = os.path.getsize(path)
    if size != expected.get("size"):
      return "mismatch", f"{relative} has {size} bytes, {name} says {expected.get('size')}"
    if _sha256(path) != expected.get("sha256"):
      return "mismatch", f"{relative} has other contents than {name} records (SHA-256 differs)"
  return "ok", ""


def _is_primary() -> bool:
  # With several processes (kd.distributed), one writes the shared files.
  return jax.process_index() == 0


# Train checkpoints.

class _ManifestCheckpointManager(ocp.CheckpointManager):
  """A CheckpointManager that writes each step's manifest once Orbax has finished that step.

  Orbax saves in a background thread and only then renames `<step>.orbax-checkpoint-tmp...` to
  `<step>`; its `AsyncOptions.post_finalization_callback` runs in that thread *before* the rename
  and is not told the folder, so it would hash a folder that is not final yet, and an error there
  would fail the save. Instead, the manifests of the steps this manager saved are written in
  `wait_until_finished`, which Orbax calls at the start of every `save` (so the previous step is
  complete and renamed by then) and which kd calls before it stops or raises. Hashing runs on the
  training thread, once per checkpoint, at about a tenth of a save's time (benchmarks/checksum.py).
  A crash after Orbax's rename and before the manifest leaves a complete step without one, which
  `restore_train_state` accepts with a warning.
  """

  def __init__(self, *args, **kwargs):
    self._unsealed_steps = []  # Saved by this manager, manifest not yet written.
    super().__init__(*args, **kwargs)

  def save(self, step, *args, **kwargs):
    saved = super().save(step, *args, **kwargs)
    if saved:
      self._unsealed_steps.append(step)
    return saved

  def wait_until_finished(self):
    super().wait_until_finished()
    steps, self._unsealed_steps = self._unsealed_steps, []
    for step in steps:
      write_checkpoint_manifest(os.path.join(str(self.directory), str(step)))


def write_checkpoint_manifest(step_dir: str) -> None:
  """Writes the manifest of a finished step folder (`<stage>/checkpoints/<step>`).

  Does nothing for a folder Orbax has not renamed yet (`*.orbax-checkpoint-tmp*`), or that is gone
  (removed by `max_to_keep`), or on processes other than the primary one.
  """
  if _ORBAX_TMP in os.path.basename(step_dir) or not os.path.isdir(step_dir) or not _is_primary():
    return
  write_manifest(os.path.join(step_dir, MANIFEST), step_dir, _files_under(step_dir, ""))


def train_manager(stage_dir: str, *, keep: int) -> ocp.CheckpointManager:
  """The stage's checkpoint manager; close it however the stage ends (kd.train does)."""
  _quiet_failed_write_callbacks()
  return _ManifestCheckpointManager(
      os.path.abspath(os.path.join(stage_dir, "checkpoints")),
      # Folders are created in `save`, on the calling thread: a full or read-only disk fails the save
      # there, at once. Created in the background, a failure leaves Orbax's other save threads waiting
      # for the folder for its 20-minute timeout, and the process cannot exit until then.
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True,
          async_options=ocp.AsyncOptions(create_directories_asynchronously=False)),
      item_names=("state", "data"),
  )


def _quiet_failed_write_callbacks() -> None:
  """Drops the "Event loop is closed" errors that a failed save or restore leaves behind.

  When one read or write of a save or restore fails (a full disk, a file cut short), Orbax closes its
  event loop while TensorStore still completes the other reads and writes; each completion then calls
  back into the closed loop and Python prints that error, as unraisable, once per array. The failure
  itself is raised by Orbax (and reported by kd as one line); these add nothing. Other unraisable
  errors pass through.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_kd_quiet_closed_loop", False):
    return

  def hook(unraisable):
    if (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
        and any(frame.name == "call_soon_threadsafe" for frame in traceback.extract_tb(unraisable.exc_traceback))):
      return
    previous(unraisable)

  hook._kd_quiet_closed_loop = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
  # The same writes' errors, once their tasks are garbage-collected, are logged by asyncio.
  std_logging.getLogger("asyncio").addFilter(_not_a_failed_save_task)


def _not_a_failed_save_task(record: std_logging.LogRecord) -> bool:
  """False for asyncio's "exception was never retrieved" of an Orbax or TensorStore write (see above)."""
  if "exception was never retrieved" not in str(record.msg) or not record.exc_info:
    return True
  _, error, error_traceback = record.exc_info
  frames = traceback.extract_tb(error_traceback)
  return not ("tensorstore_spec=" in str(error)
              or any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames))


def save_train_state(manager: ocp.CheckpointManager, step: int, state, data_state: dict) -> None:
  """Saves asynchronously; the previous checkpoints stay until this one is complete."""
  # force: Orbax's default policy silently skips a save while the previous one is still being
  # written, and a checkpoint asked for (e.g. on SIGTERM) must exist.
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))


def remove_partial_checkpoints(checkpoints_dir: str, *, failed: bool = False) -> list[str]:
  """Removes the `<step>.orbax-checkpoint-tmp*` folders of saves that did not complete; their names.

  Orbax renames a step's folder to `<step>` only once it is complete, so these are never a checkpoint:
  what a save cut short by a full disk or a crash leaves. Call it only while no save is in flight (after
  the manager is closed, or before restoring). On processes other than the primary one, does nothing.
  With `failed` (a save of this process failed), the warnings that Python would print at exit for that
  save's coroutines, abandoned by Orbax, are silenced too: the failure is reported once, by the caller.
  """
  if failed:
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    _join_save_threads()
  if not _is_primary() or not os.path.isdir(checkpoints_dir):
    return []
  removed = []
  for name in sorted(os.listdir(checkpoints_dir)):
    if _ORBAX_TMP in name:
      shutil.rmtree(os.path.join(checkpoints_dir, name), ignore_errors=True)  # A read-only disk keeps it.
      removed.append(name)
  return removed


def vanished_path(error: BaseException | None, stage_dir: str,
                  manager: ocp.CheckpointManager) -> OSError | None:
  """An ENOENT OSError when `error` came from files of the stage removed while it ran; else None.

  Orbax and TensorStore report a file that vanished under a save in many ways (TensorStore's NOT_FOUND,
  Orbax's "No ArrayMetadata found", ...), so the folder is looked at: the stage's `fingerprint.json`
  (written when the stage started) or the latest checkpoint the manager committed is gone.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    found = re.match(r'NOT_FOUND: .*? local file "([^"]+)"', str(error))
    if found:
      return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), found.group(1))
    error = error.__cause__ or error.__context__
  latest = manager.latest_step()
  expected = [os.path.join(stage_dir, "fingerprint.json")]
  if latest is not None:
    expected.append(os.path.join(str(manager.directory), str(latest)))
  for path in expected:
    if not os.path.exists(path):
      return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
  return None


def _join_save_threads(timeout_seconds: float = 30.0) -> None:
  """Waits (a bounded time) for the background threads of Orbax's saves to end.

  When one part of a save fails, the manager reports it while the save's other threads may still be
  writing their files (`_sharding`, metadata) into the partial folder: they must end before it is removed.
  """
  deadline = time.monotonic() + timeout_seconds
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax."):
      # The base class's join: Orbax's re-raises the thread's error, which the manager has reported.
      threading.Thread.join(thread, max(deadline - time.monotonic(), 0.0))


def restore_train_state(manager: ocp.CheckpointManager, abstract_state):
  """Returns (state, data_state) of the latest sound checkpoint, or None when there is none.

  `abstract_state` (from `jax.eval_shape`, with shardings) gives the structure, dtypes and
  placement of the restored arrays. A checkpoint whose files do not match its manifest (bytes changed
  on disk), or that cannot be read (cut short by a crash), is moved to `<stage>/corrupt_checkpoints/`
  with a warning, never deleted, and the one before it is tried. A checkpoint without a manifest
  (written before kd wrote them, or by a run that stopped between Orbax finishing the step and its
  manifest) is restored with a logged warning: Orbax's commit is atomic (a step folder gets its name
  only once complete), so it is whole, only unverified. The partial folders of saves that never
  completed are removed first, with a warning (`remove_partial_checkpoints`).
  """
  for name in remove_partial_checkpoints(str(manager.directory)):
    logging.warning("removed %s from %s: a save that did not complete (never a checkpoint)", name,
                    manager.directory)
  for step in sorted(manager.all_steps(), reverse=True):
    checkpoints = str(manager.directory)
    step_dir = os.path.join(checkpoints, str(step))
    status, detail = verify_manifest(os.path.join(step_dir, MANIFEST), step_dir)
    if status == "mismatch":
      _set_aside(manager, step, f"is corrupt: {detail}")
      continue
    if status == "unverified":
      logging.warning("checkpoint at step %d in %s is unverified (%s); Orbax commits a step atomically, "
                      "so restoring it as it is", step, checkpoints, detail)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      if not isinstance(restored.data, dict):
        raise ValueError(f"data iterator state is {type(restored.data).__name__}, not a dict")
      return restored.state, restored.data
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types on bad files.
      _set_aside(manager, step, f"cannot be read ({type(e).__name__}: {str(e)[:200]})")
  return None


def _set_aside(manager: ocp.CheckpointManager, step: int, problem: str) -> None:
  """Moves a bad step to `<stage>/corrupt_checkpoints/<step>-<time>`, for inspection, and warns."""
  checkpoints = str(manager.directory)
  aside = os.path.join(os.path.dirname(checkpoints), "corrupt_checkpoints", f"{step}-{int(time.time())}")
  if _is_primary():  # Every process reaches the same verdict; one moves the folder.
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    os.rename(os.path.join(checkpoints, str(step)), aside)
  manager.reload()
  logging.warning("checkpoint at step %d in %s %s; moved it to %s and trying the previous one",
                  step, checkpoints, problem, aside)


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
  # Renamed into place: with several processes, each writes the same file, and the primary hashes it.
  temporary = os.path.join(stage_dir, f"{MODEL_JSON}.tmp-{os.getpid()}")
  with open(temporary, "w") as f:
    json.dump(description, f, indent=2)
  os.replace(temporary, os.path.join(stage_dir, MODEL_JSON))
  if _is_primary():  # Last: the manifest vouches for a complete export.
    write_manifest(os.path.join(path, MANIFEST), stage_dir, _files_under(stage_dir, MODEL_DIR) + [MODEL_JSON])


def _check_export(stage_dir: str, folder: str, what: str) -> None:
  """Raises UserError when the export in `<stage_dir>/<folder>` does not match its manifest."""
  export_dir = os.path.join(stage_dir, folder)
  status, detail = verify_manifest(os.path.join(export_dir, MANIFEST), stage_dir)
  if status == "mismatch":
    raise UserError(f"the {what} exported in {export_dir} is corrupt: {detail}; re-export or retrain that "
                    "stage in a fresh workdir; nothing was changed")
  if status == "unverified":
    logging.warning("the %s exported in %s is unverified (%s: exported by an older kd); loading it as it is",
                    what, export_dir, detail)


def _unreadable_export(error: Exception, export_dir: str, what: str) -> UserError | None:
  """The error for an export whose files are missing or cut short (Orbax's OSError, or TensorStore's
  status text: `NOT_FOUND: ...`, `FAILED_PRECONDITION: ...`); None for other errors."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  if not isinstance(error, OSError) and not re.match(r"[A-Z_]+: ", text):
    return None
  text = text.split(" [", 1)[0]  # TensorStore appends its spec and source locations.
  return UserError(f"the {what} exported in {export_dir} is incomplete or unreadable ({text[:300]}): re-export "
                   "or retrain that stage in a fresh workdir; nothing was changed")


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
    try:
      return json.load(f)
    except ValueError as e:
      raise UserError(f"{description_path} is unreadable ({e}): re-export or retrain that stage in a fresh "
                      "workdir; nothing was changed") from e


def load_model(stage_dir: str) -> LoadedModel:
  """Loads the model a stage exported (`<workdir>/<stage>`), e.g. a teacher for a later stage.

  Raises UserError when a file of the export does not match its manifest; an export without one
  (older kd) is loaded with a logged warning.
  """
  description = read_model_description(stage_dir)  # A missing export is named as such, first.
  model_dir = os.path.join(stage_dir, MODEL_DIR)
  if not os.path.isdir(model_dir):
    raise UserError(f"the model exported in {stage_dir} is incomplete: {MODEL_DIR}/ is missing (its {MODEL_JSON} "
                    "is there); re-export or retrain that stage in a fresh workdir; nothing was changed")
  _check_export(stage_dir, MODEL_DIR, "model")
  spec_dict = description["dataset"]
  spec = DatasetSpec(**{**spec_dict, "input_shape": tuple(spec_dict["input_shape"])})
  model_config = description["model"]
  model_config = {k: tuple(v) if isinstance(v, list) else v for k, v in model_config.items()}
  models.ensure_importable(model_config["name"], description.get("import_root"))
  module = models.build_model(model_config, spec.num_classes)
  example = jax.ShapeDtypeStruct((1,) + spec.input_shape, spec.input_dtype)
  abstract = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x), example)
  _quiet_failed_write_callbacks()
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      variables = checkpointer.restore(os.path.abspath(model_dir), abstract)
    except (OSError, ValueError, KeyError) as e:
      unreadable = _unreadable_export(e, model_dir, "model")
      if unreadable:
        raise unreadable from e
      raise UserError(f"the model in {stage_dir} does not match its {MODEL_JSON} ({e}); "
                      "retrain that stage in a fresh workdir") from e
  apply = models.make_apply(module, spec.input_key, preprocess=models.preprocess_of(model_config))
  return LoadedModel(model_config, spec, module, apply, dict(variables))


def export_connector(stage_dir: str, variables) -> None:
  """Writes a method's connector variables ({"params": ..., other collections}) for a later stage."""
  path = os.path.abspath(os.path.join(stage_dir, CONNECTOR_DIR))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, variables, force=True)
  if _is_primary():
    write_manifest(os.path.join(path, MANIFEST), stage_dir, _files_under(stage_dir, CONNECTOR_DIR))


def load_connector(stage_dir: str, abstract_variables):
  """The connector variables a stage exported, restored into the structure of `abstract_variables`."""
  path = os.path.abspath(os.path.join(stage_dir, CONNECTOR_DIR))
  if not os.path.isdir(path):
    raise UserError(f"no exported connector in {stage_dir}: run that stage to the end first")
  _check_export(stage_dir, CONNECTOR_DIR, "connector")
  _quiet_failed_write_callbacks()
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      return checkpointer.restore(path, abstract_variables)
    except (OSError, ValueError, KeyError) as e:
      unreadable = _unreadable_export(e, path, "connector")
      if unreadable:
        raise unreadable from e
      raise UserError(f"the connector exported in {stage_dir} does not fit this stage's ({e}): the two "
                      "stages must read the same teacher feature with the same method parameters") from e
