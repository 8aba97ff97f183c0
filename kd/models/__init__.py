"""Models, and the pure apply functions the trainer sees.

The trainer never touches a Flax module. It sees

    apply(variables, batch, *, train, rngs) -> {"logits": [B, C], "features": {name: array}, ...}

where `variables` is the model's whole variable dict ({"params": ..., "batch_stats": ...}) and
`batch` the batch dict from the data pipeline. With `train=True`, a model that has mutable
collections (BatchNorm statistics) also returns `"state"`: those collections, updated.

To add a model: write a Flax module whose `__call__(inputs, train)` returns logits and whose first
attribute is `num_classes`, and add it to `MODELS`. Its config is `{"name": ..., **attributes}`.
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd import features
from kd.errors import ConfigError
from kd.models import cifar_resnet
from kd.models import imagenet_resnet
from kd.models import mobilenetv2
from kd.models import nnx_bridge
from kd.models import nnx_cnn
from kd.models import shufflenetv1
from kd.models import shufflenetv2
from kd.models import vgg
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
}

# The CIFAR-100 zoo of the CRD benchmark (Tian et al. 2020) and ImageNet ResNets, by their usual
# names: name -> (class, attributes). `zoo_model_config("resnet32x4")` is a model config.
ZOO = {**cifar_resnet.ZOO, **wrn.ZOO, **vgg.ZOO, **mobilenetv2.ZOO, **shufflenetv1.ZOO,
       **shufflenetv2.ZOO, **imagenet_resnet.ZOO}
_NAME_OF_CLASS = {module_class: name for name, module_class in MODELS.items()}

ApplyFn = Callable[..., dict[str, Any]]

# Values of a model's `dtype` attribute (its computation's dtype; parameters stay float32).
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def model_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The module's attributes from a model config (everything but `name`)."""
  return {key: value for key, value in dict(model_config).items() if key != "name"}


def _attributes(module_class) -> dict[str, Any]:
  """The configurable attributes of a model class with their defaults (num_classes excluded)."""
  if nnx_bridge.is_nnx_class(module_class):
    return nnx_bridge.constructor_attributes(module_class)
  return {f.name: f.default for f in dataclasses.fields(module_class)
          if f.name not in ("parent", "name", "num_classes")}


def model_config(name: str, **attributes) -> dict[str, Any]:
  """A full model config: every attribute of model `name` with its default, overridden by `attributes`.

  Listing every attribute lets `--config.stages.<stage>.model.<attribute>=...` override any of them.
  """
  if name not in MODELS:
    raise ConfigError(f"{name!r} is not a model; available models: {sorted(MODELS)}")
  return {"name": name, **_attributes(MODELS[name]), **attributes}


def zoo_model_config(zoo_name: str, **attributes) -> dict[str, Any]:
  """The model config of a zoo model ("resnet8x4", "wrn_40_2", "ShuffleV1", ...)."""
  if zoo_name not in ZOO:
    raise ConfigError(f"{zoo_name!r} is not in the model zoo; available: {sorted(ZOO)}")
  module_class, zoo_attributes = ZOO[zoo_name]
  return model_config(_NAME_OF_CLASS[module_class], **{**zoo_attributes, **attributes})


def check_model_config(model_config: Mapping[str, Any], where: str) -> None:
  """Raises ConfigError naming the key and the fix if the model config cannot build a model."""
  name = model_config.get("name", "")
  if name not in MODELS:
    raise ConfigError(f"{where}.name={name!r} is not a model; available models: {sorted(MODELS)}")
  fields = set(_attributes(MODELS[name]))  # num_classes comes from the dataset.
  for key in model_kwargs(model_config):
    if key not in fields:
      raise ConfigError(f"{where}.{key} is not an attribute of model {name!r}; "
                        f"its attributes are {sorted(fields)}")
  if "dtype" in fields and model_config.get("dtype", "float32") not in COMPUTE_DTYPES:
    raise ConfigError(f"{where}.dtype={model_config['dtype']!r} is not a compute dtype: choose one of "
                      f"{COMPUTE_DTYPES} (parameters stay float32)")


def build_model(model_config: Mapping[str, Any], num_classes: int) -> nn.Module:
  """Instantiates the Flax module a model config names."""
  check_model_config(model_config, "model")
  kwargs = model_kwargs(model_config)
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  model_class = MODELS[model_config["name"]]
  if nnx_bridge.is_nnx_class(model_class):
    return nnx_bridge.NNXModel(model_class, num_classes, **kwargs)
  return model_class(num_classes=num_classes, **kwargs)


def _as_float(inputs: jax.Array) -> jax.Array:
  # Images travel as uint8 (4x less host-to-device traffic) and become floats on the device.
  if jnp.issubdtype(inputs.dtype, jnp.integer):
    return inputs.astype(jnp.float32) / 255.0
  return inputs


def make_apply(module: nn.Module, input_key: str = "image",
               feature_paths: Sequence[str] = ()) -> ApplyFn:
  """The pure apply function of a classifier module (see the module docstring).

  Args:
    module: a Flax module, `__call__(inputs, train) -> logits`.
    input_key: the batch entry the model reads.
    feature_paths: exact module paths (see `kd.features`) whose outputs are returned, in this
      order, as `features`; captured with `capture_intermediates`, so the model is not edited.
  """
  wanted = tuple(feature_paths)
  if isinstance(module, nnx_bridge.NNXModel):
    return _make_nnx_apply(module, input_key, wanted)

  def capture(submodule, method_name) -> bool:
    return method_name == "__call__" and features.module_path(submodule) in wanted

  def apply(variables, batch, *, train: bool, rngs=None) -> dict[str, Any]:
    inputs = _as_float(batch[input_key])
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


def _make_nnx_apply(model: nnx_bridge.NNXModel, input_key: str, wanted: tuple[str, ...]) -> ApplyFn:
  """The apply contract for an NNX model (see kd.models.nnx_bridge)."""

  def apply(variables, batch, *, train: bool, rngs=None) -> dict[str, Any]:
    logits, intermediates, rest = model.apply(variables, _as_float(batch[input_key]), train=train,
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
  return dict(module.init({"params": rng, "dropout": rng}, _as_float(example_inputs), train=False))


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def count_bytes(variables) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(variables)))
