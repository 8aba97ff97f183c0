"""Teachers and initial weights from anywhere: earlier stages, kd exports, checkpoints, memory.

A stage's teacher is, by its config:

    teacher = "<stage>"                        an earlier stage of this run (its export)
    teacher = "export:<dir>"                   a kd export from any workdir (or `python -m kd.convert`)
    teacher_model = {...}, teacher_checkpoint = "<path>"
                                               a checkpoint and the model that reads it
    teacher = "<name>"                         a model passed in memory: kd.run(..., teachers={name: ...})

and `init_from = "<path>"` (a checkpoint, or "export:<dir>") starts the stage's own model from those
weights instead of a random initialisation. Checkpoint formats (`read_checkpoint`): a kd export
folder; an Orbax checkpoint folder of variables or parameters; a Flax `.msgpack` file
(`flax.serialization`); a `.safetensors` / `.npz` file of Flax-layout arrays ("params/conv0/kernel")
or of a PyTorch state_dict, converted by the model family's converter (`kd.convert`); a `.pth` / `.pt`
file, read without unpickling anything but tensors; a Hugging Face checkpoint folder (config.json and
safetensors weights, `kd.convert.hf`). Shapes are checked against the model before anything is
compiled, and an error names every array that does not fit.

A Hugging Face folder describes its model: `teacher_checkpoint = "<folder>"` needs no `teacher_model`
(one given must agree with config.json; its `dtype` is kept), and the teacher's model config records
the folder's tokenizer.json as `tokenizer`. As `init_from`, the stage's model must be the one
config.json describes (`kd.convert.hf.read_config(folder)[0]`, with any dropout and dtype).

Inputs belong to the model: a kd export states its preprocessing; a language model's token ids need
none; any other checkpoint states none, so the config must (`teacher_model.preprocess`, or `model.preprocess` for `init_from`), or the stage
is refused: a teacher fed other inputs than it was trained on would distil garbage without a word.
"""

import dataclasses
import hashlib
import os
from typing import Any, Mapping

import flax
import flax.linen as nn
from flax import nnx
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from kd import checkpoint
from kd import models
from kd.config import init_stages
from kd.data import DatasetSpec
from kd.errors import ConfigError
from kd.errors import UserError
from kd.models import lora
from kd.models import nnx_bridge
from kd.models import preprocessing

EXPORT = "export:"
# teacher = "ema:<decay>": the exponential moving average of the student's own variables, updated after
# every step (kd.train.train_step); a self-distillation teacher that is never trained by gradient.
EMA = "ema:"


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A teacher ready for a stage: how to apply it, its variables, and where it came from.

  Attributes:
    source: {"kind": "stage" | "export" | "checkpoint" | "memory", "path" or "name": ...}.
    module: the Flax module (or kd NNXModel), or None for an apply function given in memory.
    variables: its variables.
    preprocess: its input preprocessing (`kd.models.preprocessing`).
    model_config: its model config, or None for an apply function.
    spec: the dataset spec it was exported with (kd exports), or None.
    raw_apply: an apply function given in memory, used when `module` is None.
  """

  source: dict[str, Any]
  module: Any
  variables: Any
  preprocess: str
  model_config: dict[str, Any] | None = None
  spec: DatasetSpec | None = None
  raw_apply: Any = None

  def make_apply(self, input_key: str, feature_paths=()) -> models.ApplyFn:
    """The teacher's apply function (kd's contract), returning the features at `feature_paths`."""
    if self.module is not None:
      return models.make_apply(self.module, input_key, feature_paths, preprocess=self.preprocess)
    raw_apply, preprocess = self.raw_apply, self.preprocess

    def apply(variables, batch, *, train: bool, rngs=None):
      inputs = preprocessing.apply(preprocess, batch[input_key])
      out = raw_apply(variables, {**batch, input_key: inputs}, train=train, rngs=rngs)
      return out if isinstance(out, dict) else {"logits": out, "features": {}}

    return apply

  def fingerprint(self) -> str:
    """SHA-256 of the teacher's variables (paths, dtypes, shapes and bytes): the same weights from any
    source have the same fingerprint."""
    return variables_sha256(self.variables)


def variables_sha256(variables) -> str:
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(_pure(variables))[0]:
    array = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


# Models passed in memory to kd.run(..., teachers=...), by name, for the duration of that call.
_MEMORY: dict[str, Any] = {}


class memory_teachers:  # pylint: disable=invalid-name  # Used as a context manager.
  """Makes `teachers` ({name: (module_or_apply, variables[, preprocess])}) nameable as stage teachers."""

  def __init__(self, teachers: Mapping[str, Any] | None):
    self.teachers = dict(teachers or {})

  def __enter__(self):
    for name, entry in self.teachers.items():
      if not isinstance(entry, tuple) or len(entry) not in (2, 3):
        raise ConfigError(f"teachers[{name!r}] must be (module_or_apply, variables) or (module_or_apply, "
                          f"variables, preprocess), got {type(entry).__name__}")
    self._previous = dict(_MEMORY)
    _MEMORY.update(self.teachers)
    return self

  def __exit__(self, *exc_info):
    _MEMORY.clear()
    _MEMORY.update(self._previous)


def memory_names() -> tuple[str, ...]:
  return tuple(_MEMORY)


def teacher_kind(config: ml_collections.ConfigDict, stage_name: str) -> str:
  """"" (no teacher), "stage", "export", "checkpoint", "memory" or "ema"."""
  stage = config.stages[stage_name]
  if stage.get("teacher_checkpoint", ""):
    return "checkpoint"
  teacher = stage.teacher
  if not teacher:
    return ""
  if teacher.startswith(EXPORT):
    return "export"
  if teacher.startswith(EMA):
    return "ema"
  if teacher in _MEMORY and teacher not in config.stages:
    return "memory"
  return "stage"


def ema_decay(config: ml_collections.ConfigDict, stage_name: str) -> float:
  """The decay of a stage's moving-average teacher (teacher = "ema:<decay>"); 0.0 for any other."""
  teacher = config.stages[stage_name].teacher
  return float(teacher[len(EMA):]) if teacher.startswith(EMA) else 0.0


def describe(config: ml_collections.ConfigDict, stage_name: str) -> str:
  """The teacher's source in a few words, for logs and errors."""
  stage, kind = config.stages[stage_name], teacher_kind(config, stage_name)
  return {"": "none", "stage": f"stage {stage.teacher!r}", "export": stage.teacher,
          "ema": f"the moving average of the student's variables (decay {ema_decay(config, stage_name)})",
          "checkpoint": f"checkpoint {stage.get('teacher_checkpoint', '')}",
          "memory": f"model {stage.teacher!r} given in memory"}[kind]


def _pure(tree):
  """Nested dicts of arrays (NNX State objects turned into plain dicts)."""
  if isinstance(tree, nnx.State):
    return nnx.to_pure_dict(tree)
  if isinstance(tree, Mapping):
    return {key: _pure(value) for key, value in tree.items()}
  return tree


def _restore_like(abstract, pure):
  """`pure` (nested dicts) in the structure of `abstract` (which may hold NNX State objects)."""
  if isinstance(abstract, nnx.State):
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, pure)
    return state
  if isinstance(abstract, Mapping):
    return {key: _restore_like(value, pure[key]) for key, value in abstract.items()}
  return pure


def abstract_variables(module, input_shape, input_dtype="float32"):
  """The shapes and dtypes of `module`'s variables for inputs of `input_shape` (nothing computed)."""
  example = jax.ShapeDtypeStruct((1,) + tuple(input_shape), input_dtype)
  return jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x), example)


def fit_variables(tree, abstract, where: str) -> Any:
  """`tree` (a checkpoint's arrays) as the model's variables, or one ConfigError naming what differs.

  A checkpoint of parameters alone fits a model whose only collection is "params".
  """
  tree, want = _pure(tree), _pure(abstract)
  if isinstance(tree, Mapping) and "params" not in tree and "params" in want:
    others = [name for name in want if name != "params"]
    if others:
      raise ConfigError(f"{where} holds parameters only, but the model also has {others} (e.g. BatchNorm "
                        "statistics): save the whole variable dict, or a kd export")
    tree = {"params": tree}
  problems = models.variable_mismatches(want, tree)
  if problems:
    listed = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
    raise ConfigError(f"{where} does not fit the model: {listed}")
  cast = jax.tree.map(lambda a, x: np.asarray(x, dtype=a.dtype), want, tree)
  return _restore_like(abstract, cast)


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def read_checkpoint(path: str, model_config: Mapping[str, Any], module, input_shape, where: str):
  """The variables of `module` stored at `path` in any format of the module docstring."""
  # Imported here: the converters import kd.checkpoint and the model zoo, which import this module's
  # callers; only stages that read other formats pay for them.
  from kd import convert  # pylint: disable=g-import-not-at-top

  abstract = abstract_variables(module, input_shape)
  where = f"{where}={path!r}"
  if not os.path.exists(path):
    raise ConfigError(f"{where}: no such file or folder")
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, checkpoint.MODEL_JSON)):
      exported = checkpoint.load_model(path)
      return fit_variables(exported.variables, abstract, where)
    if _is_hf_folder(path):
      from kd.convert import hf  # pylint: disable=g-import-not-at-top
      own = _matching_hf_config(path, model_config, where)
      return fit_variables(hf.load(path, where=where, model_config=own)[1], abstract, where)
    try:
      with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(os.path.abspath(path))
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types on foreign folders.
      raise ConfigError(f"{where} is a folder but neither a kd export (no {checkpoint.MODEL_JSON}) nor "
                        f"an Orbax checkpoint ({type(e).__name__}: {str(e)[:160]})") from None
    return fit_variables(tree, abstract, where)
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".msgpack":
    with open(path, "rb") as f:
      try:
        tree = flax.serialization.msgpack_restore(f.read())
      except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(f"{where} is not a Flax msgpack file ({type(e).__name__}: {e})") from None
    return fit_variables(tree, abstract, where)
  if suffix in convert.STATE_DICT_SUFFIXES:
    arrays = convert.read_state_dict(path)
    if all("/" in key for key in arrays):  # Flax paths, "params/conv0/kernel".
      return fit_variables(_unflatten(arrays), abstract, where)
    family = convert.family_converter(model_config["name"], where)
    return fit_variables(family(arrays, dict(model_config)), abstract, where)
  raise ConfigError(f"{where}: unknown checkpoint format {suffix!r}; kd reads kd exports, Orbax folders, "
                    f".msgpack and {convert.STATE_DICT_SUFFIXES}")


# Attributes of a decoder that a config may set otherwise than its Hugging Face checkpoint.
_FREE_HF_ATTRIBUTES = ("dropout", "dtype")


def _matching_hf_config(path: str, model_config: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
  """The model config of the HF folder at `path`, with `model_config`'s free attributes; a ConfigError if
  `model_config` (when it names a model) describes another architecture."""
  from kd.convert import hf  # pylint: disable=g-import-not-at-top

  stated, _ = hf.read_config(path, where)
  if not model_config or not model_config.get("name"):
    return stated
  plain = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  given = {k: tuple(v) if isinstance(v, list) else v for k, v in plain.items()}
  if given["name"] != stated["name"]:
    raise ConfigError(f"{where} is a Hugging Face {stated['name']!r} checkpoint, but the model is {given['name']!r}: "
                      f"use model name {stated['name']!r} (kd.convert.hf.read_config(path)[0] is its whole config)")
  full = models.model_config(**{k: v for k, v in given.items() if k not in models.CONFIG_KEYS or k == "name"})
  differing = [f"{key}={full[key]!r} (config.json: {stated[key]!r})" for key in stated
               if key not in models.CONFIG_KEYS and key not in _FREE_HF_ATTRIBUTES and full.get(key) != stated[key]]
  if differing:
    raise ConfigError(f"{where}: the model config differs from the checkpoint's config.json: {', '.join(differing[:4])}"
                      f"{f' and {len(differing) - 4} more' if len(differing) > 4 else ''}; leave those keys to the "
                      "checkpoint (kd.convert.hf.read_config(path)[0] is its model config)")
  return {**stated, **{key: full[key] for key in _FREE_HF_ATTRIBUTES if key in full}}


def _from_hf_folder(path: str, teacher_model: Mapping[str, Any] | None, spec: DatasetSpec, where: str,
                    placement=None) -> Teacher:
  """A teacher from a Hugging Face checkpoint folder: config.json says the model, the vocabulary its classes."""
  from kd.convert import hf  # pylint: disable=g-import-not-at-top

  model_config = _matching_hf_config(path, teacher_model, where)
  _, vocab_size = hf.read_config(path, where)
  if spec.num_classes > vocab_size:
    raise ConfigError(f"{where}={path!r} has a vocabulary of {vocab_size} tokens, but {spec.name} has token ids up "
                      f"to {spec.num_classes - 1}: tokenize the data with the checkpoint's tokenizer")
  module = models.build_model(model_config, vocab_size)
  shardings = (lambda _, shape: placement(shape)) if placement is not None else None
  _, variables = hf.load(path, where=f"{where}={path!r}", model_config=model_config, shardings=shardings)
  source = {"kind": "checkpoint", "path": os.path.abspath(path), "format": "huggingface"}
  return Teacher(source, module, variables, models.preprocess_of(model_config), model_config, None)


def _hf_module(path: str, teacher_model: Mapping[str, Any] | None, where: str):
  from kd.convert import hf  # pylint: disable=g-import-not-at-top

  model_config = _matching_hf_config(path, teacher_model, where)
  return models.build_model(model_config, hf.read_config(path, where)[1])


def _is_hf_folder(path: str) -> bool:
  from kd.convert import hf  # pylint: disable=g-import-not-at-top

  return hf.is_hf_folder(path)


def _model_from(model_config: Mapping[str, Any], num_classes: int, where: str):
  config = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items()}
  models.check_model_config(config, where)
  return config, models.build_model(config, num_classes)


def _stated_preprocess(model_config: Mapping[str, Any], where: str, source: str) -> str:
  text = dict(model_config).get("preprocess", "")
  if not text:
    raise ConfigError(f"{source} does not state the input preprocessing its model was trained with: set "
                      f"{where}.preprocess to one of {sorted(preprocessing.PRESETS)} or spell it out (e.g. "
                      "'range=0:1 mean=0.5,0.5,0.5 std=0.5,0.5,0.5'), or convert it with python -m kd.convert")
  preprocessing.check(text, f"{where}.preprocess")
  return text


def teacher_data_shape(spec: DatasetSpec) -> tuple[int, tuple[int, ...], bool]:
  """(classes, input shape, whether they are its own tokenization's) the teacher reads on a dataset: the
  student's, or on a dataset that carries the teacher's own tokenization (text_files' teacher_tokenizer)
  that tokenizer's ids and teacher_max_length."""
  from kd.data import text_files  # pylint: disable=g-import-not-at-top  # kd.data imports kd.lm, which imports this.
  teacher_vocab = text_files.teacher_vocab_size_of(spec.name)
  if not teacher_vocab:
    return spec.num_classes, tuple(spec.input_shape), False
  return teacher_vocab, (text_files.parse(spec.name.partition("/")[2]).teacher_length,), True


def _from_export(directory: str, spec: DatasetSpec, kind: str, where: str) -> Teacher:
  loaded = checkpoint.load_model(directory)
  num_classes, input_shape, cross_tokenizer = teacher_data_shape(spec)
  # Across tokenizers the teacher's vocabulary may be padded beyond its tokenizer (a HF embedding).
  classes_fit = loaded.spec.num_classes >= num_classes if cross_tokenizer else loaded.spec.num_classes == num_classes
  if not classes_fit or tuple(loaded.spec.input_shape) != input_shape:
    reads = "the teacher's tokenization of " if cross_tokenizer else ""
    raise UserError(
        f"{where}: the model in {directory} was trained on {loaded.spec.name} ({loaded.spec.num_classes} "
        f"classes, inputs {tuple(loaded.spec.input_shape)}) but the stage gives it {reads}{spec.name} "
        f"({num_classes} classes, inputs {input_shape}): use matching datasets")
  source = {"kind": kind, "path": os.path.abspath(directory)}
  return Teacher(source, loaded.module, loaded.variables, models.preprocess_of(loaded.model_config),
                 loaded.model_config, loaded.spec)


def _from_memory(name: str, config: ml_collections.ConfigDict, stage_name: str) -> Teacher:
  entry = _MEMORY[name]
  module_or_apply, variables = entry[0], entry[1]
  where = f"stages.{stage_name}.teacher_model"
  stated = entry[2] if len(entry) == 3 else config.stages[stage_name].get("teacher_model", {}).get("preprocess", "")
  preprocess = _stated_preprocess({"preprocess": stated}, where, f"teacher {name!r} given in memory")
  source = {"kind": "memory", "name": name}
  if isinstance(module_or_apply, nnx.Module):
    module = nnx_bridge.NNXModel.from_module(module_or_apply)
    variables = variables if variables is not None else module.variables_of(module_or_apply)
    return Teacher(source, module, variables, preprocess)
  if isinstance(module_or_apply, nn.Module):
    return Teacher(source, module_or_apply, dict(variables), preprocess)
  if callable(module_or_apply):
    return Teacher(source, None, variables, preprocess, raw_apply=module_or_apply)
  raise ConfigError(f"teachers[{name!r}][0] is a {type(module_or_apply).__name__}: give a flax.linen.Module, "
                    "a flax.nnx.Module, or an apply function apply(variables, batch, *, train, rngs=None)")


def load_teacher(config: ml_collections.ConfigDict, stage_name: str, run_dir: str,
                 spec: DatasetSpec, placement=None) -> Teacher | None:
  """The teacher of a stage, from whichever source its config names (see the module docstring).

  `placement(shape) -> jax.sharding.Sharding`, if given, is where each of a Hugging Face checkpoint's
  arrays goes as it is read: a teacher larger than one device loads sharded, never whole on the host.
  """
  stage, kind = config.stages[stage_name], teacher_kind(config, stage_name)
  where = f"stages.{stage_name}"
  if kind in ("", "ema"):  # The moving average lives in the student's train state (kd.train).
    return None
  if kind == "stage":
    return _from_export(os.path.join(run_dir, stage.teacher), spec, "stage", f"{where}.teacher")
  if kind == "export":
    return _from_export(stage.teacher[len(EXPORT):], spec, "export", f"{where}.teacher")
  if kind == "memory":
    return _from_memory(stage.teacher, config, stage_name)
  path = stage.teacher_checkpoint
  if os.path.exists(os.path.join(path, checkpoint.MODEL_JSON)):
    return _from_export(path, spec, "checkpoint", f"{where}.teacher_checkpoint")
  if _is_hf_folder(path):
    return _from_hf_folder(path, stage.get("teacher_model", None), spec, f"{where}.teacher_checkpoint", placement)
  model_config, module = _model_from(stage.teacher_model, spec.num_classes, f"{where}.teacher_model")
  preprocess = _stated_preprocess(model_config, f"{where}.teacher_model", f"{where}.teacher_checkpoint={path!r}")
  variables = read_checkpoint(path, model_config, module, spec.input_shape, f"{where}.teacher_checkpoint")
  return Teacher({"kind": "checkpoint", "path": os.path.abspath(path)}, module, variables, preprocess,
                 model_config, None)


def teacher_module(config: ml_collections.ConfigDict, stage_name: str, spec: DatasetSpec):
  """The teacher's module, for tracing its tap points without loading weights (None: no teacher)."""
  stage, kind = config.stages[stage_name], teacher_kind(config, stage_name)
  if kind == "":
    return None
  if kind == "stage":  # As its export holds it (a LoRA stage's merged into its base).
    return models.build_model(lora.exported_config(config.stages[stage.teacher].model), spec.num_classes)
  if kind == "ema":  # The student's own architecture.
    return models.build_model(stage.model, spec.num_classes)
  if kind == "memory":
    module = _MEMORY[stage.teacher][0]
    if isinstance(module, nnx.Module):
      return nnx_bridge.NNXModel.from_module(module)
    if not isinstance(module, nn.Module):
      raise ConfigError(f"stages.{stage_name}.method reads teacher features, but teacher {stage.teacher!r} was "
                        "given as an apply function: give its flax module instead, so its tap points can be read")
    return module
  directory = stage.teacher[len(EXPORT):] if kind == "export" else stage.teacher_checkpoint
  if os.path.exists(os.path.join(directory, checkpoint.MODEL_JSON)):
    description = checkpoint.read_model_description(directory)
    model_config = {k: tuple(v) if isinstance(v, list) else v for k, v in description["model"].items()}
    models.ensure_importable(model_config["name"], description.get("import_root"))
    return models.build_model(model_config, description["dataset"]["num_classes"])
  if kind == "checkpoint" and _is_hf_folder(directory):
    return _hf_module(directory, stage.get("teacher_model", None), f"stages.{stage_name}.teacher_checkpoint")
  if kind == "export":
    raise ConfigError(f"stages.{stage_name}.teacher={stage.teacher!r}: no kd export there (no "
                      f"{checkpoint.MODEL_JSON}): give the folder a stage or python -m kd.convert wrote")
  return _model_from(stage.teacher_model, spec.num_classes, f"stages.{stage_name}.teacher_model")[1]


def initial_variables(config: ml_collections.ConfigDict, stage_name: str, module, spec: DatasetSpec,
                      run_dir: str = ""):
  """The weights the stage's model starts from (`init_from`), fitted to it; None for a random start.

  `init_from = "stage:<name>"` reads `<run_dir>/<name>`'s export; "stage:a,b,c" (an ensemble,
  kd.config.ensemble_stage) puts each member stage's variables under `member_<i>` of every collection.
  """
  stage = config.stages[stage_name]
  path = stage.get("init_from", "")
  if not path:
    return None
  where = f"stages.{stage_name}.init_from"
  starts_from = init_stages(stage)
  if len(starts_from) > 1:
    return _ensemble_variables([os.path.join(run_dir, name) for name in starts_from], module, spec, where)
  if starts_from:
    path = os.path.join(run_dir, starts_from[0])
  if lora.is_lora(stage.model):  # init_from holds the base's weights; the factors keep their initialisation.
    base = stage.model.base
    base_variables = _read_initial(path, base, models.build_model(dict(base), spec.num_classes), spec, where,
                                   f"stages.{stage_name}.model.base")
    return lora.initial_variables_of_base(base_variables)
  return _read_initial(path, stage.model, module, spec, where, f"stages.{stage_name}.model")


def _read_initial(path: str, model_config, module, spec: DatasetSpec, where: str, model_where: str):
  """init_from's variables for `module` (the stage's model, or a LoRA model's base)."""
  if path.startswith(EXPORT):
    path = path[len(EXPORT):]
    if not os.path.exists(os.path.join(path, checkpoint.MODEL_JSON)):
      raise ConfigError(f"{where}: no kd export in {path} (no {checkpoint.MODEL_JSON})")
  if os.path.exists(os.path.join(path, checkpoint.MODEL_JSON)):
    exported = checkpoint.read_model_description(path)
    stated, own = models.preprocess_of(exported["model"]), models.preprocess_of(model_config)
    if stated != own:
      raise ConfigError(f"{where}={path!r} was trained on inputs preprocessed as {stated!r}, but "
                        f"{model_where}.preprocess is {own!r}: set it to {stated!r}")
  elif not _is_hf_folder(path):  # A Hugging Face decoder reads token ids: no preprocessing to state.
    _stated_preprocess(model_config, model_where, f"{where}={path!r}")
  return read_checkpoint(path, model_config, module, spec.input_shape, where)


def _ensemble_variables(member_dirs, module, spec: DatasetSpec, where: str):
  """An ensemble's variables from its members' exports: collection -> member_<i> -> that member's."""
  assembled: dict[str, dict[str, Any]] = {}
  for index, directory in enumerate(member_dirs):
    if not os.path.exists(os.path.join(directory, checkpoint.MODEL_JSON)):
      raise ConfigError(f"{where}: member {index} has no export in {directory} (no {checkpoint.MODEL_JSON}): "
                        "train that stage first")
    for collection, tree in _pure(checkpoint.load_model(directory).variables).items():
      assembled.setdefault(collection, {})[f"member_{index}"] = tree
  return fit_variables(assembled, abstract_variables(module, spec.input_shape), where)


def stage_dependencies(config: ml_collections.ConfigDict, stage_name: str) -> tuple[str, ...]:
  """The earlier stages of the run whose exports a stage reads: its teacher and its init_from stages."""
  teacher = (config.stages[stage_name].teacher,) if teacher_kind(config, stage_name) == "stage" else ()
  return teacher + tuple(name for name in init_stages(config.stages[stage_name]) if name not in teacher)
