"""Models, and the pure apply functions the trainer sees.

The trainer never touches a Flax module. It sees

    apply(variables, batch, *, train, rngs) -> {"logits": [B, C], "features": {name: array}, ...}

where `variables` is the model's whole variable dict ({"params": ..., "batch_stats": ...}) and
`batch` the batch dict from the data pipeline. With `train=True`, a model that has mutable
collections (BatchNorm statistics) also returns `"state"`: those collections, updated. The apply
function first turns the batch's inputs into what the model was trained on (its `preprocess`, see
`kd.models.preprocessing`), inside the compiled program.

A model config is `{"name": ..., "preprocess": ..., **attributes}`. `name` is a key of `MODELS` or an
import path, "package.module:Class", of a Linen or NNX class of the user's own (see README, "Extending
kd"):
  - Linen: a `flax.linen.Module` with attributes `num_classes` and any others (the config's keys), and
    `__call__(inputs, train) -> logits`;
  - NNX: an `nnx.Module` whose constructor is `(num_classes, <attributes with defaults>, *, rngs)` and
    whose `__call__(inputs) -> logits` takes no `train` (kd calls `model.train()` / `model.eval()`).
"""

import dataclasses
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax

from kd import features
from kd.models import attributes as model_attributes
from kd.errors import ConfigError
from kd.models import cifar_resnet
from kd.models import ensemble
from kd.models import hf_decoders
from kd.models import imagenet_resnet
from kd.models import lora
from kd.models import mobilenetv2
from kd.models import nnx_bridge
from kd.models import nnx_cnn
from kd.models import preprocessing
from kd.models import shufflenetv1
from kd.models import shufflenetv2
from kd.models import transformer_lm
from kd.models import vgg
from kd.models import vit
from kd.models import wrn
from kd.models.cnn import ConvNet
from kd.models.cnn import ConvNet1D
from kd.models.cnn import MLP

MODELS: dict[str, type[nn.Module]] = {
    "cnn": ConvNet,
    "mlp": MLP,
    "cnn1d": ConvNet1D,
    "cifar_resnet": cifar_resnet.CifarResNet,  # depth, widths
    "wrn": wrn.WideResNet,  # depth, widen_factor, dropout
    "vgg": vgg.VGG,  # depth in {8, 11, 13, 16, 19}
    "mobilenetv2": mobilenetv2.MobileNetV2,  # width_multiplier, expansion
    "shufflenetv1": shufflenetv1.ShuffleNetV1,
    "shufflenetv2": shufflenetv2.ShuffleNetV2,
    "imagenet_resnet": imagenet_resnet.ImageNetResNet,  # stage_sizes, widths
    "nnx_cnn": nnx_cnn.NNXConvNet,  # A Flax NNX model, through kd.models.nnx_bridge.
    "transformer_lm": transformer_lm.TransformerLM,  # Decoder-only LM: logits [B, L, vocabulary].
    "vit": vit.VisionTransformer,  # ViT and DeiT (distilled=True), timm's layout.
    # Hugging Face decoders, transformers' layouts and config fields (kd.convert.hf reads their folders).
    "gpt2": hf_decoders.GPT2,
    "llama": hf_decoders.Llama,  # Llama 2 and 3.
    "qwen2": hf_decoders.Qwen2,
    "qwen3": hf_decoders.Qwen3,
    # Trained classifiers combined (kd.config.ensemble_stage assembles one from earlier stages).
    "ensemble": ensemble.Ensemble,
    # A frozen base plus trained low-rank updates of its kernels, merged at export (kd.models.lora).
    "lora": lora.LoRA,
}

# The CIFAR-100 zoo of the CRD benchmark (Tian et al. 2020) and ImageNet ResNets, by their usual
# names: name -> (class, attributes). `zoo_model_config("resnet32x4")` is a model config.
ZOO = {**cifar_resnet.ZOO, **wrn.ZOO, **vgg.ZOO, **mobilenetv2.ZOO, **shufflenetv1.ZOO,
       **shufflenetv2.ZOO, **imagenet_resnet.ZOO, **vit.ZOO}
_NAME_OF_CLASS = {module_class: name for name, module_class in MODELS.items()}

ApplyFn = Callable[..., dict[str, Any]]

# Values of a model's `dtype` attribute (its computation's dtype; parameters stay float32).
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


# Keys of a model config that are not attributes of the module (`tokenizer`: the tokenizer.json that
# came with a Hugging Face checkpoint, kept for the tokenizer's users).
CONFIG_KEYS = ("name", "preprocess", "tokenizer")


def model_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The module's attributes from a model config (everything but the CONFIG_KEYS)."""
  return {key: value for key, value in dict(model_config).items() if key not in CONFIG_KEYS}


def import_path(model_class: type) -> str:
  """The "package.module:Class" path that `model_class` is imported by."""
  return f"{model_class.__module__}:{model_class.__qualname__}"


def _is_model_class(value) -> bool:
  return isinstance(value, type) and (issubclass(value, nn.Module) or nnx_bridge.is_nnx_class(value))


def resolve_model_class(name: str, where: str = "model") -> type:
  """The class a model name stands for: a key of MODELS, or an import path "package.module:Class".

  A module that cannot be imported, or a name that is not a Linen or NNX class, is a ConfigError;
  an exception raised inside the user's module while it imports propagates as it is (it is the
  user's code: `python -m kd.main` names the file and line).
  """
  if isinstance(name, str) and name in MODELS:
    return MODELS[name]
  if not isinstance(name, str) or ":" not in name:
    raise ConfigError(f"{where}.name={name!r} is not a model: use one of {sorted(MODELS)}, or the import "
                      "path of your own Linen or NNX class, 'package.module:Class'")
  module_name, _, qualname = name.partition(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
      raise  # The user's module imports something that is missing: its own error, with its line.
    raise ConfigError(f"{where}.name={name!r}: no module named {e.name!r} on the Python path: put the file "
                      "next to the config file (its folder is importable), install its package, or add "
                      "its folder to PYTHONPATH") from None
  target = module
  for part in qualname.split("."):
    if not hasattr(target, part):
      found = sorted(k for k, v in vars(module).items() if _is_model_class(v))
      raise ConfigError(f"{where}.name={name!r}: module {module_name!r} has no {qualname!r}; its Linen and "
                        f"NNX classes: {found}")
    target = getattr(target, part)
  if not _is_model_class(target):
    raise ConfigError(f"{where}.name={name!r} is a {type(target).__name__}, not a flax.linen.Module or "
                      "flax.nnx.Module class")
  return target


def import_root(name: str) -> str | None:
  """The folder that must be on sys.path for an import-path model to import (None for MODELS)."""
  if name in MODELS or ":" not in name:
    return None
  module_name = name.partition(":")[0]
  module = sys.modules.get(module_name)
  path = getattr(module, "__file__", None)
  if not path:
    return None
  root = os.path.dirname(os.path.abspath(path))
  levels = module_name.count(".") + (1 if os.path.basename(path) == "__init__.py" else 0)
  for _ in range(levels):
    root = os.path.dirname(root)
  return root


def ensure_importable(name: str, root: str | None) -> None:
  """Puts `root` (recorded in an export) on sys.path if the model's module is not importable without."""
  if not root or name in MODELS or ":" not in name:
    return
  module_name = name.partition(":")[0]
  if module_name in sys.modules or importlib.util.find_spec(module_name.split(".")[0]) is not None:
    return
  if os.path.isdir(root) and root not in sys.path:
    sys.path.append(root)


_MISSING = object()


def _attributes(module_class) -> dict[str, Any]:
  """The configurable attributes of a model class with their defaults (_MISSING if required)."""
  if nnx_bridge.is_nnx_class(module_class):
    return nnx_bridge.constructor_attributes(module_class)
  fields = {}
  for f in dataclasses.fields(module_class):
    if f.name in ("parent", "name", "num_classes") or not f.init:
      continue
    if f.default is not dataclasses.MISSING:
      fields[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      fields[f.name] = f.default_factory()
    else:
      fields[f.name] = _MISSING
  return fields


def model_config(name, **attributes) -> dict[str, Any]:
  """A full model config: every attribute of model `name` with its default, overridden by `attributes`.

  `name` is a key of MODELS, an import path "package.module:Class", or the class itself (recorded by
  its import path). Listing every attribute lets `--config.stages.<stage>.model.<attribute>=...`
  override any of them. `preprocess` (a `kd.models.preprocessing` string) is kept if given; a model
  trained by kd without one is fed its inputs as "unit" ([0, 1] images).
  """
  if _is_model_class(name):
    name = import_path(name)
  module_class = resolve_model_class(name)
  defaults = {k: v for k, v in _attributes(module_class).items() if v is not _MISSING}
  return {"name": name, **defaults, **attributes}


def zoo_model_config(zoo_name: str, **attributes) -> dict[str, Any]:
  """The model config of a zoo model ("resnet8x4", "wrn_40_2", "ShuffleV1", ...)."""
  if zoo_name not in ZOO:
    raise ConfigError(f"{zoo_name!r} is not in the model zoo; available: {sorted(ZOO)}")
  module_class, zoo_attributes = ZOO[zoo_name]
  return model_config(_NAME_OF_CLASS[module_class], **{**zoo_attributes, **attributes})


def preprocess_of(model_config: Mapping[str, Any]) -> str:
  """The model's input preprocessing ("unit" when its config states none: kd's own default)."""
  return model_config.get("preprocess") or preprocessing.DEFAULT


def check_model_config(model_config: Mapping[str, Any], where: str) -> None:
  """Raises ConfigError naming the key and the fix if the model config cannot build a model."""
  name = model_config.get("name", "")
  module_class = resolve_model_class(name, where)
  attributes = _attributes(module_class)  # num_classes comes from the dataset.
  for key in model_kwargs(model_config):
    if key not in attributes:
      raise ConfigError(f"{where}.{key} is not an attribute of model {name!r}; "
                        f"its attributes are {sorted(attributes)}")
  required = [key for key, value in attributes.items() if value is _MISSING and key not in model_config]
  if required:
    raise ConfigError(f"{where} does not set {required}, attributes of model {name!r} without a default: "
                      f"set them, e.g. --config.{where}.{required[0]}=...")
  defaults = {key: value for key, value in attributes.items() if value is not _MISSING}
  model_attributes.check(module_class, {**defaults, **model_kwargs(model_config)}, where)
  if "dtype" in attributes and model_config.get("dtype", "float32") not in COMPUTE_DTYPES:
    raise ConfigError(f"{where}.dtype={model_config['dtype']!r} is not a compute dtype: choose one of "
                      f"{COMPUTE_DTYPES} (parameters stay float32)")
  if "preprocess" in model_config:
    preprocessing.check(model_config["preprocess"], f"{where}.preprocess")


def build_model(model_config: Mapping[str, Any], num_classes: int) -> nn.Module:
  """Instantiates the Flax module a model config names."""
  check_model_config(model_config, "model")
  kwargs = model_kwargs(model_config)
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  model_class = resolve_model_class(model_config["name"])
  if nnx_bridge.is_nnx_class(model_class):
    return nnx_bridge.NNXModel(model_class, num_classes, **kwargs)
  return model_class(num_classes=num_classes, **kwargs)


def model_inputs(module, inputs: jax.Array, preprocess: str = preprocessing.DEFAULT) -> jax.Array:
  # Images travel as uint8 (4x less host-to-device traffic) and become the model's inputs on the
  # device; token ids (a language model's `integer_inputs`) stay integers.
  if getattr(module, "integer_inputs", False) or getattr(module, "raw_inputs", False):
    return inputs
  return preprocessing.apply(preprocess, inputs)


def make_apply(module: nn.Module, input_key: str = "image", feature_paths: Sequence[str] = (),
               preprocess: str = preprocessing.DEFAULT) -> ApplyFn:
  """The pure apply function of a classifier module (see the module docstring).

  Args:
    module: a Flax module, `__call__(inputs, train) -> logits`.
    input_key: the batch entry the model reads.
    feature_paths: exact module paths (see `kd.features`) whose outputs are returned, in this
      order, as `features`; captured with `capture_intermediates`, so the model is not edited.
    preprocess: how the batch's inputs become the model's (`kd.models.preprocessing`; the model
      config's `preprocess_of`).
  """
  wanted = tuple(feature_paths)
  preprocessing.parse(preprocess)  # Malformed strings fail here, not inside a trace.
  if isinstance(module, nnx_bridge.NNXModel):
    return _make_nnx_apply(module, input_key, wanted, preprocess)

  def capture(submodule, method_name) -> bool:
    return method_name == "__call__" and features.module_path(submodule) in wanted

  def apply(variables, batch, *, train: bool, rngs=None) -> dict[str, Any]:
    inputs = model_inputs(module, batch[input_key], preprocess)
    mutable = [name for name in variables if name != "params"] if train else []
    if not mutable and not wanted:
      return {"logits": module.apply(variables, inputs, train=train, rngs=rngs), "features": {}}
    logits, state = module.apply(variables, inputs, train=train, rngs=rngs,
                                 mutable=mutable + (["intermediates"] if wanted else []),
                                 capture_intermediates=capture if wanted else False)
    state = dict(state)
    intermediates = state.pop("intermediates", {})
    out = {"logits": logits, "features": {path: features.lookup(intermediates, path) for path in wanted}}
    if mutable:
      out["state"] = state
    return out

  return apply


def _make_nnx_apply(model: nnx_bridge.NNXModel, input_key: str, wanted: tuple[str, ...],
                    preprocess: str) -> ApplyFn:
  """The apply contract for an NNX model (see kd.models.nnx_bridge)."""

  def apply(variables, batch, *, train: bool, rngs=None) -> dict[str, Any]:
    inputs = preprocessing.apply(preprocess, batch[input_key])
    logits, intermediates, rest = model.apply(variables, inputs, train=train,
                                              rngs=rngs, capture=bool(wanted))
    out = {"logits": logits,
           "features": {path: features.lookup(intermediates, path) for path in wanted}}
    if train:
      out["state"] = {"nnx_state": rest}
    return out

  return apply


def init_variables(module, rng: jax.Array, example_inputs: jax.Array) -> dict[str, Any]:
  """The module's variables for inputs shaped like `example_inputs` (a batch)."""
  if isinstance(module, nnx_bridge.NNXModel):
    return module.init(rng)
  return dict(module.init({"params": rng, "dropout": rng}, model_inputs(module, example_inputs),
                          train=False))


def variable_mismatches(expected, variables) -> list[str]:
  """Every array of `expected` (shapes, e.g. from `jax.eval_shape`) that `variables` lacks or shapes
  otherwise, and every array `variables` has beyond it, as "path: problem" lines."""
  want = {jax.tree_util.keystr(path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]}
  have = {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
  problems = [f"{path} missing (expected {shape})" for path, shape in want.items() if path not in have]
  problems += [f"{path} is {have[path]}, expected {shape}" for path, shape in want.items()
               if path in have and tuple(have[path]) != tuple(shape)]
  problems += [f"{path} {have[path]} is not in the model" for path in have if path not in want]
  return problems


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def count_bytes(variables) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(variables)))
