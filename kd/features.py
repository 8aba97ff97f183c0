"""Intermediate features of unmodified Flax models, selected by module path.

Every submodule's output is a *tap point*, named by its module path: `conv0`, `layer2_4`,
`layer2_4/preact`, `pool`, ... (`capture_intermediates`, so no model is edited to expose one). A
method asks for features with patterns:

    "layer3_4"             an exact path
    "layer*_4"             a glob (fnmatch), every match in the model's order
    "re:layer[0-9]+_0"     a regular expression (full match)

`tap_points(module, example_inputs)` lists them with their shapes (for notebooks);
`select(patterns, available)` resolves patterns, and a pattern that matches nothing is an error
that lists the tap points.
"""

import fnmatch
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.errors import ConfigError

MAX_LISTED = 80  # Tap points named in an error message; tap_points() lists them all.


def _flatten(intermediates: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
  """{"a": {"b": {"__call__": (x,)}}} -> {"a/b": x}."""
  flat = {}
  for key, value in intermediates.items():
    if key == "__call__":
      output = value[0]
      if prefix and hasattr(output, "shape"):  # The model's own output (no prefix) is the logits.
        flat["/".join(prefix)] = output
    elif isinstance(value, dict):
      flat.update(_flatten(value, prefix + (str(key),)))  # NNX lists index submodules by int.
  return flat


def tap_points(module: nn.Module, example_inputs: Any) -> dict[str, tuple[int, ...]]:
  """Every submodule output of `module` on `example_inputs` (a batch): path -> shape.

  Traced with `jax.eval_shape`: nothing is compiled or computed.
  """

  call_order: list[str] = []

  def capture(submodule, method_name):
    if method_name == "__call__":
      call_order.append(module_path(submodule))
      return True
    return False

  def run_linen(inputs):
    variables = module.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, inputs,
                            train=False)
    call_order.clear()  # Only the apply's calls count, in the order the modules ran.
    _, state = module.apply(variables, inputs, train=False, capture_intermediates=capture,
                            mutable=["intermediates"])
    return _flatten(state["intermediates"])

  def run_nnx(inputs):  # An NNX model (kd.models.nnx_bridge).
    call_order.clear()
    _, intermediates, _ = module.apply(module.init(jax.random.key(0)), inputs, train=False,
                                       capture=True)
    flat = _flatten(intermediates)
    call_order.extend(flat)  # NNX records submodule outputs in the order they return.
    return flat

  run = run_nnx if hasattr(module, "graphdef") else run_linen
  shapes = jax.eval_shape(run, example_inputs)  # A dict, so its keys come back sorted.
  rank = {path: index for index, path in reversed(list(enumerate(call_order)))}
  return {path: tuple(shapes[path].shape) for path in sorted(shapes, key=lambda p: rank.get(p, len(rank)))}


def select(patterns: Sequence[str], available: Sequence[str], where: str) -> list[str]:
  """Resolves patterns (exact, glob, or "re:" regex) to tap-point paths, in order, without repeats."""
  selected = []
  for pattern in patterns:
    if pattern.startswith("re:"):
      regex = re.compile(pattern[3:])
      hits = [path for path in available if regex.fullmatch(path)]
    elif any(char in pattern for char in "*?["):
      hits = [path for path in available if fnmatch.fnmatchcase(path, pattern)]
    else:
      hits = [pattern] if pattern in available else []
    if not hits:
      listed = ", ".join(list(available)[:MAX_LISTED])
      more = f" ... and {len(available) - MAX_LISTED} more" if len(available) > MAX_LISTED else ""
      raise ConfigError(f"{where}: feature path {pattern!r} matches no tap point of the model; use an "
                        f"exact path, a glob or 're:<regex>' over its tap points: {listed}{more}")
    selected.extend(path for path in hits if path not in selected)
  return selected


def lookup(intermediates: dict[str, Any], path: str) -> jax.Array:
  """The captured output at a module path."""
  node = intermediates
  for name in path.split("/"):
    node = node[name] if name in node else node[int(name)]
  return node["__call__"][0]


def module_path(module: nn.Module) -> str:
  return "/".join(module.scope.path) if module.scope is not None else ""


def zeros_like_outputs(shapes) -> Any:
  """Arrays of zeros shaped like `jax.eval_shape` outputs (to initialise connectors)."""
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
