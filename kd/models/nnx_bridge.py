"""NNX models behind the same pure apply contract as Linen models (`nnx.split` / `nnx.merge`).

An NNX model is a stateful object; the trainer wants pure functions of explicit variables. So an
`NNXModel` keeps the model's static graph (`nnx.split`) and exposes

    variables = {"params": nnx.State of nnx.Param, "nnx_state": nnx.State of the rest}

(BatchNorm statistics and other non-parameter variables; no RNG state), and an apply that merges
them into a model, runs it, and returns the new non-parameter state. RNG streams (dropout) are not
part of the variables: each call reseeds them from the `rngs` it is given, so a step's randomness is
a function of the step alone, as for Linen models, and checkpoints hold no PRNG key objects.
Intermediate features come from `nnx.capture(..., method_outputs=nnx.Intermediate)`: every
submodule's `__call__` output, by attribute path (`conv0`, `blocks/0`, ...), with no model edits.
"""

import inspect
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp


class NNXModel:
  """An NNX model class with its constructor arguments, usable wherever kd takes a model."""

  def __init__(self, model_class: type[nnx.Module], num_classes: int, **attributes):
    self.model_class, self.num_classes, self.attributes = model_class, num_classes, attributes
    # The graph and a template of the RNG state, from one eager construction (small models only
    # are built this way; for large ones the arrays are discarded right away).
    model = self._construct(jax.random.key(0))
    self.graphdef, _, self._rng_template, _ = nnx.split(model, nnx.Param, nnx.RngState, ...)

  @classmethod
  def from_module(cls, model: nnx.Module) -> "NNXModel":
    """An NNXModel for a model built elsewhere (e.g. in a notebook): its graph, not its class's."""
    bridge = cls.__new__(cls)
    bridge.model_class, bridge.attributes = type(model), {}
    bridge.num_classes = None
    bridge.graphdef, _, bridge._rng_template, _ = nnx.split(model, nnx.Param, nnx.RngState, ...)
    bridge._built = cls.variables_of(model)  # What `init` gives: its class may need more than num_classes.
    return bridge

  @staticmethod
  def variables_of(model: nnx.Module) -> dict[str, Any]:
    """A built model's variables, in the layout `apply` takes."""
    _, params, _, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    return {"params": params, "nnx_state": rest}

  def _construct(self, rng) -> nnx.Module:
    return self.model_class(num_classes=self.num_classes, rngs=nnx.Rngs(params=rng, dropout=rng),
                            **self.attributes)

  def init(self, rng: jax.Array) -> dict[str, Any]:
    """Fresh variables; pure (works under `jax.jit` and `jax.eval_shape`). A model built elsewhere
    (`from_module`) gives its own."""
    if hasattr(self, "_built"):
      return self._built
    _, params, _, rest = nnx.split(self._construct(rng), nnx.Param, nnx.RngState, ...)
    return {"params": params, "nnx_state": rest}

  def _rng_state(self, rngs) -> nnx.State:
    """RNG streams seeded from this call's "dropout" key (one key per stream, counts at 0)."""
    key = (rngs or {}).get("dropout", jax.random.key(0))
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)  # A raw uint32 key (jax.random.PRNGKey).
    streams = iter(range(1 << 30))

    def fresh(leaf):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.fold_in(key, next(streams))
      return jnp.zeros_like(leaf)

    # Built inside the caller's trace: a template's own arrays would belong to another trace.
    return jax.tree.map(fresh, self._rng_template)

  def apply(self, variables, inputs, *, train: bool, rngs=None, capture: bool = False):
    """Returns (logits, intermediates as nested dicts or {}, new "nnx_state")."""
    # Fresh Variable objects in the caller's trace (e.g. inside jax.grad): NNX refuses to update a
    # BatchNorm statistic created in an outer trace.
    params, rest = jax.tree.map(lambda x: x, (variables["params"], variables.get("nnx_state", nnx.State({}))))
    model = nnx.merge(self.graphdef, params, self._rng_state(rngs), rest)
    if train:
      model.train()
    else:
      model.eval()
    if capture:
      logits, intermediates = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(inputs)
      intermediates = nnx.to_pure_dict(intermediates)
    else:
      logits, intermediates = model(inputs), {}
    _, _, _, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    return logits, intermediates, rest


def is_nnx_class(model_class) -> bool:
  return inspect.isclass(model_class) and issubclass(model_class, nnx.Module)


def constructor_attributes(model_class) -> dict[str, Any]:
  """The configurable constructor arguments of an NNX class and their defaults."""
  signature = inspect.signature(model_class.__init__)
  return {name: parameter.default for name, parameter in signature.parameters.items()
          if name not in ("self", "num_classes", "rngs") and parameter.default is not inspect.Parameter.empty}
