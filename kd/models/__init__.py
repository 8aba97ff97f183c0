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
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kd.errors import ConfigError
from kd.models.cnn import ConvNet
from kd.models.cnn import MLP

MODELS: dict[str, type[nn.Module]] = {
    "cnn": ConvNet,
    "mlp": MLP,
}

ApplyFn = Callable[..., dict[str, Any]]


def model_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The module's attributes from a model config (everything but `name`)."""
  return {key: value for key, value in dict(model_config).items() if key != "name"}


def _attributes(module_class) -> dict[str, Any]:
  """The configurable attributes of a model class with their defaults (num_classes excluded)."""
  return {f.name: f.default for f in dataclasses.fields(module_class)
          if f.name not in ("parent", "name", "num_classes")}


def model_config(name: str, **attributes) -> dict[str, Any]:
  """A full model config: every attribute of model `name` with its default, overridden by `attributes`.

  Listing every attribute lets `--config.stages.<stage>.model.<attribute>=...` override any of them.
  """
  if name not in MODELS:
    raise ConfigError(f"{name!r} is not a model; available models: {sorted(MODELS)}")
  return {"name": name, **_attributes(MODELS[name]), **attributes}


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


def build_model(model_config: Mapping[str, Any], num_classes: int) -> nn.Module:
  """Instantiates the Flax module a model config names."""
  check_model_config(model_config, "model")
  kwargs = model_kwargs(model_config)
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return MODELS[model_config["name"]](num_classes=num_classes, **kwargs)


def _as_float(inputs: jax.Array) -> jax.Array:
  # Images travel as uint8 (4x less host-to-device traffic) and become floats on the device.
  if jnp.issubdtype(inputs.dtype, jnp.integer):
    return inputs.astype(jnp.float32) / 255.0
  return inputs


def make_apply(module: nn.Module, input_key: str = "image") -> ApplyFn:
  """The pure apply function of a classifier module (see the module docstring)."""

  def apply(variables, batch, *, train: bool, rngs=None) -> dict[str, Any]:
    inputs = _as_float(batch[input_key])
    mutable = [name for name in variables if name != "params"] if train else []
    if mutable:
      logits, state = module.apply(variables, inputs, train=True, rngs=rngs, mutable=mutable)
      return {"logits": logits, "features": {}, "state": dict(state)}
    logits = module.apply(variables, inputs, train=train, rngs=rngs)
    return {"logits": logits, "features": {}}

  return apply


def init_variables(module: nn.Module, rng: jax.Array, example_inputs: jax.Array) -> dict[str, Any]:
  """The module's variables for inputs shaped like `example_inputs` (a batch)."""
  return dict(module.init({"params": rng, "dropout": rng}, _as_float(example_inputs), train=False))


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def count_bytes(variables) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(variables)))
