"""Distillation methods: a method is a loss, not a trainer.

Each method is one module with
  - `loss(student_out, teacher_out, batch, **params) -> (scalar_loss, metrics_dict)`, where the
    outputs are those of the apply functions (`{"logits": ..., "features": {...}}`);
  - `DEFAULTS`: its parameters and their default values (the config's `method` block);
  - `NEEDS_TEACHER`: whether the stage must name a teacher;
  - `check(params, where)`: raises ConfigError for impossible values.

To add a method, write the module and add it to `METHODS`.
"""

import functools
from typing import Any, Callable, Mapping

from kd.errors import ConfigError
from kd.methods import hinton_kd
from kd.methods import supervised

METHODS = {
    "supervised": supervised,
    "hinton_kd": hinton_kd,
}

LossFn = Callable[..., tuple[Any, dict[str, Any]]]


def method_params(method_config: Mapping[str, Any]) -> dict[str, Any]:
  return {key: value for key, value in dict(method_config).items() if key != "name"}


def check_method_config(method_config: Mapping[str, Any], where: str) -> None:
  """Raises ConfigError naming the key and the fix if the method config cannot work."""
  name = method_config.get("name", "")
  if name not in METHODS:
    raise ConfigError(f"{where}.name={name!r} is not a method; available methods: {sorted(METHODS)}")
  module = METHODS[name]
  params = method_params(method_config)
  for key in params:
    if key not in module.DEFAULTS:
      known = sorted(module.DEFAULTS) or "none"
      raise ConfigError(f"{where}.{key} is not a parameter of method {name!r}; its parameters: {known}")
  module.check({**module.DEFAULTS, **params}, where)


def method_config(name: str, **params) -> dict[str, Any]:
  """A full method config block: the method's defaults, overridden by `params`."""
  if name not in METHODS:
    raise ConfigError(f"{name!r} is not a method; available methods: {sorted(METHODS)}")
  return {"name": name, **METHODS[name].DEFAULTS, **params}


def build_loss(method_config: Mapping[str, Any]) -> LossFn:
  """`loss(student_out, teacher_out, batch) -> (loss, metrics)` with the config's parameters bound."""
  check_method_config(method_config, "method")
  module = METHODS[method_config["name"]]
  return functools.partial(module.loss, **{**module.DEFAULTS, **method_params(method_config)})


def needs_teacher(method_config: Mapping[str, Any]) -> bool:
  return METHODS[method_config["name"]].NEEDS_TEACHER
