"""LoRA students: a frozen base model plus trainable low-rank updates of chosen kernels.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022, arXiv:2106.09685), Eq. 3
and Sec. 4.1: a kernel W (fan_in x fan_out, a convolution's kernel flattened to that) is used as

    W' = W + (alpha / r) * A B,    A: [fan_in, r] ~ N(0, 1 / fan_in),  B: [r, fan_out] = 0,

with W frozen and only A and B trained, so the model starts exactly as the base (B = 0). The model
config wraps the base's:

    kd.models.model_config("lora", base=<base model config>, rank=8, alpha=16.0, targets="kernels")

`targets` selects the kernels ("kernels": every Dense/Conv kernel; or a regular expression searched
in the kernel's "/"-joined path in the base, e.g. "attn/(q|k|v)_proj/kernel$"). The variables are
`{"params": {"base": <the base's params>, "<path>.lora_a": A, "<path>.lora_b": B, ...}, ...}` (the
kernel's path with "." for "/"); the
base's other collections (BatchNorm statistics) are kept under "base" and updated as the base would.

A stage whose model is a LoRA model:
  - starts its base from `init_from` (a checkpoint of the base model, "stage:<name>", ...), the
    factors from their initialisation (`initial_variables_of_base`);
  - trains A and B only: `freeze_base` wraps the optimizer in optax.multi_transform with
    optax.set_to_zero() for the base, so the base's weights stay bitwise as loaded;
  - is exported merged (`exported`): the base's model config with W' as its kernels, so the export
    is an ordinary model of the base's architecture, loadable without kd's LoRA code.
The base's intermediate features are not tap points of the LoRA model (it applies the base as a
function): LoRA students distil from logits.
"""

import math
import re
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import optax

from kd.models import attributes

NAME = "lora"


def _path_string(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def factor_name(kernel_path: str, factor: str) -> str:
  """The parameter holding factor "a" or "b" of the kernel at `kernel_path` ("hidden/kernel" -> "hidden.kernel.lora_a")."""
  return f"{kernel_path.replace('/', '.')}.lora_{factor}"


def _selector(targets: str):
  regex = re.compile(r"(^|/)kernel$" if targets == "kernels" else targets)
  return lambda path: bool(regex.search(path)) and path.endswith("kernel")


class LoRA(nn.Module):
  """A base model with low-rank updates of its selected kernels (see the module docstring).

  Attributes:
    num_classes: the base's output size.
    base: the base model's config.
    rank: r, the rank of each update.
    alpha: the update's scale numerator (the update is alpha / r * A B).
    targets: which kernels get an update.
  """

  num_classes: int
  base: Mapping[str, Any]
  rank: int = 8
  alpha: float = 16.0
  targets: str = "kernels"

  ATTRIBUTE_RANGES: ClassVar[dict] = {"rank": attributes.POSITIVE_INT, "alpha": attributes.Range(0.0, low_open=True)}
  raw_inputs: ClassVar[bool] = True  # The base's own preprocessing is applied inside.

  def _base_module(self):
    from kd import models  # pylint: disable=g-import-not-at-top  # kd.models registers this class.
    return models.build_model(dict(self.base), self.num_classes).clone(parent=None)

  @nn.compact
  def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
    from kd import models  # pylint: disable=g-import-not-at-top
    base = self._base_module()
    x = models.model_inputs(base, inputs, models.preprocess_of(self.base))
    key = jax.random.key(0)  # Shapes only: the base's real weights come from init_from or the init below.
    shapes = jax.eval_shape(lambda: base.init({"params": key, "dropout": key}, x, train=False))
    base_params = self.param("base", lambda rng: base.init({"params": rng, "dropout": rng}, x, train=False)["params"])
    others = {name: self.variable(name, "base", lambda n=name: base.init({"params": key, "dropout": key}, x,
                                                                        train=False)[n])
              for name in shapes if name != "params"}
    selected = _selector(self.targets)
    scale = self.alpha / self.rank

    def merge(path, kernel):
      name = _path_string(path)
      if not selected(name):
        return kernel
      fan_in, fan_out = math.prod(kernel.shape[:-1]), kernel.shape[-1]
      a = self.param(factor_name(name, "a"), nn.initializers.normal(1.0 / math.sqrt(fan_in)), (fan_in, self.rank))
      b = self.param(factor_name(name, "b"), nn.initializers.zeros, (self.rank, fan_out))
      return kernel + (scale * (a @ b)).reshape(kernel.shape).astype(kernel.dtype)

    merged = jax.tree_util.tree_map_with_path(merge, base_params)
    variables = {"params": merged, **{name: variable.value for name, variable in others.items()}}
    rngs = {"dropout": self.make_rng("dropout")} if train and not self.is_initializing() else None
    if train and others and not self.is_initializing():  # BatchNorm statistics move as the base's would.
      logits, updated = base.apply(variables, x, train=True, mutable=list(others), rngs=rngs)
      for name, variable in others.items():
        variable.value = updated[name]
      return logits
    return base.apply(variables, x, train=train, rngs=rngs)


def is_lora(model_config: Mapping[str, Any]) -> bool:
  return model_config.get("name") == NAME


def merged_variables(model_config: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
  """The base's variables with W' = W + alpha / r * A B as its selected kernels."""
  params = variables["params"]
  scale = model_config["alpha"] / model_config["rank"]

  def merge(path, kernel):
    name = _path_string(path)
    if factor_name(name, "a") not in params:
      return kernel
    a, b = params[factor_name(name, "a")], params[factor_name(name, "b")]
    return kernel + (scale * (a @ b)).reshape(kernel.shape).astype(kernel.dtype)

  merged = jax.tree_util.tree_map_with_path(merge, params["base"])
  return {"params": merged, **{name: tree["base"] for name, tree in variables.items() if name != "params"}}


def exported(model_config: Mapping[str, Any], variables: Mapping[str, Any]):
  """(model config, variables) as exported: a LoRA model merged into its base; any other as it is."""
  if not is_lora(model_config):
    return dict(model_config), variables
  return dict(model_config["base"]), merged_variables(model_config, variables)


def exported_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The model config an export of this model records."""
  return dict(model_config["base"]) if is_lora(model_config) else dict(model_config)


def initial_variables_of_base(base_variables: Mapping[str, Any]) -> dict[str, Any]:
  """A LoRA model's variables as far as its base's weights give them (the factors keep their init)."""
  return {name: {"base": tree} for name, tree in base_variables.items()}


def freeze_base(optimizer: optax.GradientTransformation, model_config: Mapping[str, Any]):
  """`optimizer` for everything but a LoRA student's base, whose updates are zero (optax's masking)."""
  if not is_lora(model_config):
    return optimizer

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if _path_string(path).startswith("student/base/") else "trained", params)

  return optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)
