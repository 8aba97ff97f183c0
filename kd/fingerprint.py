"""A stage's identity: everything that determines its result, so a workdir never mixes two configs.

`identity(config, stage_name, seed)` is the resolved stage block (model, method, teacher source,
init_from, num_steps, optimizer), the data it trains on (name, folder, splits, batch size, image size,
augmentation), the seed, the non-finite policy, the teacher-cache settings, and its teacher's own
identity: an earlier stage's identity (recursively, from the config), or the SHA-256 of an external
teacher's variables. Keys that cannot change a result are left out: logging, evaluation and
checkpoint intervals, the data pipeline's workers and prefetch, the evaluation batch size, the mesh
(which changes reductions only up to float rounding), the report, the stage order, and a NaN injected
under `nonfinite.policy=stop` (no checkpoint ever holds its step, so a run resumed without it is exact).

`<stage>/fingerprint.json` records the identity when the stage starts. A later run with the same
identity reuses a finished stage or resumes an unfinished one; another identity is refused, naming the
keys that changed (old -> new) and the fixes: another --workdir, or `--overwrite=<stage>`, which moves
the old folder to `<workdir>/superseded/` (never deleting it). A stage folder without fingerprint.json
(written by an earlier kd) is not checked. One change is not refused: a larger `num_steps` under a
schedule that does not depend on it (constant, multistep) trains the finished stage on from its last
checkpoint, exactly as a run of the new length would have (`extension`); its old result and export are
moved to `superseded/` first.
"""

import contextlib
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping

import ml_collections

from kd import config as config_lib
from kd.data import text_files
from kd.errors import WorkdirError

FINGERPRINT_JSON = "fingerprint.json"
SUPERSEDED = "superseded"
_DATA_KEYS_WITHOUT_EFFECT = ("workers", "prefetch", "eval_batch_size")
EXTENDABLE_SCHEDULES = ("constant", "multistep")


def _plain(value):
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return json.loads(json.dumps(value, sort_keys=True, default=str))


# Keys added to the stage block after stages were first fingerprinted, with the value that does what kd did
# before them: left out of the identity at that value, so stages recorded earlier keep their identity.
_ADDED_KEYS = {("optimizer", "reset_momentum_at_decays"): lambda value: value is False,
               ("prune",): lambda block: not block.get("sparsity"),
               ("method", "top_k_cache"): lambda value: value == "dense"}


def _without_neutral_added_keys(stage: dict[str, Any]) -> dict[str, Any]:
  for (*parents, key), is_neutral in _ADDED_KEYS.items():
    node = stage
    for parent in parents:
      node = node.get(parent) if isinstance(node, dict) else None
    if isinstance(node, dict) and key in node and is_neutral(node[key]):
      node.pop(key)
  return stage


def identity(config: ml_collections.ConfigDict, stage_name: str, seed: int,
             external_teacher: Callable[[str], str] | None = None) -> dict[str, Any]:
  """The stage's identity (see the module docstring) as plain JSON.

  `external_teacher(stage_name) -> sha256` gives the variables hash of a teacher from outside the run;
  without it such a teacher is identified by its source alone.
  """
  stage = config.stages[stage_name]
  data = {k: v for k, v in _plain(config.data).items() if k not in _DATA_KEYS_WITHOUT_EFFECT}
  if data["name"].startswith(text_files.FAMILY + "/"):  # Its name holds paths: add what they hold.
    data["prepared_as"] = text_files.prepared_name(data["name"])
  nonfinite = _plain(config.nonfinite)
  if nonfinite["policy"] == "stop":  # An injected NaN then never reaches a checkpoint: resuming without it is exact.
    nonfinite["inject_at_step"] = 0
  result = {"stage": _without_neutral_added_keys(_plain(stage)), "data": data, "seed": seed, "nonfinite": nonfinite}
  teacher = stage.get("teacher", "")
  if teacher and teacher in config.stages and not stage.get("teacher_checkpoint", ""):
    result["teacher_identity"] = digest(identity(config, teacher, seed, external_teacher))
    result["teacher_cache"] = _plain(config.teacher_cache)
  elif (teacher and not teacher.startswith("ema:")) or stage.get("teacher_checkpoint", ""):  # The moving
    # average of the student is the stage's own: its decay, in the stage block, is all there is to it.
    result["teacher_identity"] = external_teacher(stage_name) if external_teacher else "external"
    result["teacher_cache"] = _plain(config.teacher_cache)
  starts_from = config_lib.init_stages(stage)  # Weights from earlier stages: identified by theirs.
  if starts_from:
    result["init_identity"] = [digest(identity(config, name, seed, external_teacher)) for name in starts_from]
  return result


def digest(resolved: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()


def _flatten(tree, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """"key: old -> new" for every leaf that differs (the stage block's keys as the config names them)."""
  before, after = _flatten(dict(old)), _flatten(dict(new))
  lines = []
  for key in sorted(set(before) | set(after)):
    if before.get(key, "<absent>") != after.get(key, "<absent>"):
      lines.append(f"{key}: {before.get(key, '<absent>')!r} -> {after.get(key, '<absent>')!r}")
  return lines


def recorded(stage_dir: str) -> dict | None:
  """The identity a stage folder was made with (its fingerprint.json); None if it has none."""
  try:
    with open(os.path.join(stage_dir, FINGERPRINT_JSON)) as f:
      return json.load(f)["identity"]
  except (OSError, ValueError, KeyError, TypeError):
    return None  # None yet, or cut short by a kill before the stage wrote anything else.


def has_results(stage_dir: str) -> bool:
  """Whether the folder holds anything a run made (a checkpoint or a finished result)."""
  return (os.path.exists(os.path.join(stage_dir, "result.json"))
          or os.path.isdir(os.path.join(stage_dir, "checkpoints")))


def extension(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> int | None:
  """The old `num_steps` when `new` only trains `old`'s stage for longer, else None.

  That is exact (the same parameters, and logs, as a run of the new length from the start) when the
  learning-rate schedule does not depend on `num_steps`: "constant" and "multistep" (whose boundaries
  are absolute steps), but not "cosine".
  """
  if old is None:
    return None
  before, after = _flatten(dict(old)), _flatten(dict(new))
  differing = {key for key in set(before) | set(after) if before.get(key) != after.get(key)}
  if differing != {"stage.num_steps"} or after.get("stage.optimizer.schedule") not in EXTENDABLE_SCHEDULES:
    return None
  return before["stage.num_steps"] if after["stage.num_steps"] > before["stage.num_steps"] else None


def reopen(stage_dir: str, workdir: str, seed: int, old_steps: int) -> str:
  """Makes a finished stage unfinished, to train it on from its last checkpoint: moves its result, export
  and a copy of its log to `<workdir>/superseded/` (never deletes); returns that folder."""
  target = os.path.join(workdir, SUPERSEDED, f"seed_{seed}_{os.path.basename(stage_dir)}_{old_steps}_steps_"
                        f"{time.strftime('%Y%m%d-%H%M%S')}")
  os.makedirs(target, exist_ok=True)
  if os.path.exists(os.path.join(stage_dir, "metrics.jsonl")):
    shutil.copy2(os.path.join(stage_dir, "metrics.jsonl"), target)
  for name in ("model", "model.json", "connector", "result.json"):  # result.json last: unfinished only then.
    if os.path.lexists(os.path.join(stage_dir, name)):
      os.rename(os.path.join(stage_dir, name), os.path.join(target, name))
  return target


def check(stage_dir: str, stage_name: str, resolved: dict, old: dict | None, workdir: str, *,
          allow_extension: bool = False) -> None:
  """Raises WorkdirError if the folder holds results of another identity (see the module docstring).

  With `allow_extension`, a stage that only trains longer (see `extension`) passes: it resumes.
  """
  if old is None or not has_results(stage_dir) or digest(old) == digest(resolved):
    return
  if allow_extension and extension(old, resolved) is not None:
    return
  changed = ["its teacher (the teacher's config or weights changed)" if line.startswith("teacher_identity:") else
             "the stages it starts from (init_from; their config or weights changed)"
             if line.startswith("init_identity") else
             line.replace("stage.", f"stages.{stage_name}.", 1) if line.startswith("stage.") else line
             for line in changes(old, resolved)]
  listed = "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
  finished = "finished" if os.path.exists(os.path.join(stage_dir, "result.json")) else "unfinished"
  raise WorkdirError(
      f"stage {stage_name!r} in {stage_dir} is a {finished} run of another config ({listed}): its results "
      f"would be reused or mixed with this one's. Use another --workdir, or --overwrite={stage_name} to "
      f"move the old folder to {os.path.join(workdir, SUPERSEDED)}/ and train it again")


def write(stage_dir: str, resolved: dict) -> None:
  """Writes `<stage_dir>/fingerprint.json`; a write that fails (full or read-only disk) raises WorkdirError."""
  path = os.path.join(stage_dir, FINGERPRINT_JSON)
  try:
    os.makedirs(stage_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump({"digest": digest(resolved), "identity": resolved}, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(path + ".tmp")
    raise WorkdirError.from_os_error(e, stage_dir) from e


def supersede(stage_dir: str, workdir: str, seed: int) -> str | None:
  """Moves a stage folder to `<workdir>/superseded/<seed>_<stage>_<time>` (never deletes); its new path."""
  if not os.path.exists(stage_dir):
    return None
  if os.path.exists(os.path.join(stage_dir, ".lock")):
    raise WorkdirError(f"--overwrite: {stage_dir} is being trained by another process (it holds "
                       f"{os.path.join(stage_dir, '.lock')}): wait for it to end")
  target = os.path.join(workdir, SUPERSEDED,
                        f"seed_{seed}_{os.path.basename(stage_dir)}_{time.strftime('%Y%m%d-%H%M%S')}")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.rename(stage_dir, target)
  return target
