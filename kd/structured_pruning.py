r"""Structured pruning of convolutional classifiers: whole channels and units removed, exported smaller.

    student_config, student_variables = structured_pruning.prune(teacher_config, teacher_variables, keep=0.5)
    python -m kd.structured_pruning <kd export> <destination> --keep=0.5
    python -m kd.structured_pruning <kd export> <destination> --params=17098

Each convolution of the model loses whole output channels, and each hidden Dense layer whole units,
keeping a fraction `keep` of each (rounded up; at least one), or the counts `widths` names per layer.
A channel's importance is

    |gamma_c|, the scale of the BatchNorm that follows the convolution (Network Slimming: Z. Liu, J. Li,
               Z. Shen, G. Huang, S. Yan, C. Zhang, "Learning Efficient Convolutional Networks through
               Network Slimming", ICCV 2017, arXiv:1708.06519, Section 3: the scaling factor multiplies
               the channel's output, so a small |gamma| is a channel the network barely uses);
    ||F_c||_1, the L1 norm of the filter (its kernel's slice for that output channel, bias left out)
               where no BatchNorm follows, and for hidden Dense units the L1 norm of the unit's column
               (H. Li, A. Kadav, I. Durdanovic, H. Samet, H. P. Graf, "Pruning Filters for Efficient
               ConvNets", ICLR 2017, arXiv:1608.08710, Section 3.1). Layers are pruned first to last,
               and a filter's L1 norm is taken over the input channels the previous layer kept: Li et
               al.'s greedy strategy (Section 3.2), which accounts for the filters already removed.

and the top ones (ties: the lower index) are kept in their original order. Slicing removes a channel
everywhere it appears: the kernel's output axis and the bias, the BatchNorm's scale, bias, running mean
and variance, and the next layer's input axis (for the first Dense after a flatten, the rows of each
kept channel at every spatial position: a [B, H, W, C] flatten puts channel c of position p at row
p * C + c). The head keeps every class. With `keep=1.0` the result is the model itself, array for array
(its logits are equal bitwise, tested); channels that output a constant zero (zero BatchNorm scale and
bias, then ReLU) are the least important and removing them leaves the logits unchanged (tested).

The result is an ordinary model config of the same family with smaller widths (`channels=(16, 32)`,
`hidden=128`) and its variables; the CLI writes a kd export (`kd.checkpoint.export_model`), which
`kd.load_model` reads and a stage whose model is the printed config starts from with
`init_from="export:<destination>"`. The papers then fine-tune the pruned network; in kd that is a
stage that distils it from the unpruned teacher.

Families: `cnn` (conv blocks, the hidden layer), `cnn1d` (conv blocks, the hidden layer if any), `mlp`
(its hidden layers), `vgg` (every convolution; the result is a `PrunedVGG`, VGG with one width per
convolution, `conv_widths`) and `cifar_resnet` (the first convolution of each residual block, whose
output only the block's second convolution reads; the stem, the second convolutions and the shortcuts
keep their widths, so every residual sum keeps its shape; the result is a `PrunedCifarResNet` with
`inner_widths`). Both classes build the parent's modules under the parent's names, so tap points and
feature methods are unchanged, and a pruned model can be pruned again. Other families are refused with
the list of these.
"""

import argparse
import dataclasses
import functools
import math
import os
import sys
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd import models
from kd.errors import ConfigError
from kd.errors import UserError
from kd.models import attributes
from kd.models import cifar_resnet
from kd.models import vgg


# --- Models at a pruned shape ------------------------------------------------------------------------------
# `vgg` and `cifar_resnet` give every convolution of a block (a stage) one width; a pruned network has
# one per convolution. These subclasses add that attribute and build the same modules under the same
# names (tap points included), so the parent's variables fit them at the full widths.


class PrunedVGG(vgg.VGG):
  """`kd.models.vgg.VGG` with one output width per convolution.

  Attributes:
    conv_widths: the output channels of each convolution, block by block (13 for vgg13); () gives VGG's.
  """

  conv_widths: Sequence[int] = ()

  ATTRIBUTE_RANGES: ClassVar[dict] = {**vgg.VGG.ATTRIBUTE_RANGES, "conv_widths": attributes.POSITIVE_INT}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    layout = _vgg_widths(self.depth, self.base_width)
    flat = tuple(self.conv_widths) or tuple(w for block in layout for w in block)
    if len(flat) != sum(len(block) for block in layout):
      raise ValueError(f"PrunedVGG depth {self.depth} has {sum(len(b) for b in layout)} convolutions, got "
                       f"{len(flat)} conv_widths")
    height = images_BxHxWxC.shape[1]
    x, start = images_BxHxWxC, 0
    for block, widths in enumerate(layout):
      x = vgg.VGGBlock(flat[start:start + len(widths)], name=f"block{block}")(x, train)
      start += len(widths)
      if block < 3 or (block == 3 and height == 64):  # As VGG: the fourth pool only for 64x64 inputs.
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = cifar_resnet.GlobalAvgPool(name="pool")(x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="head")(x)


class PrunedBasicBlock(cifar_resnet.BasicBlock):
  """`kd.models.cifar_resnet.BasicBlock` whose first convolution has `inner` output channels.

  The second convolution, the shortcut and the block's output keep `features` channels, so the residual
  sum's shape is the unpruned network's.
  """

  inner: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = cifar_resnet.batch_norm(train, self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=cifar_resnet.he_normal_fan_out,
                             dtype=self.dtype)
    out = conv(self.inner or self.features, (3, 3), strides=self.strides, padding=1, name="conv1")(x)
    out = nn.relu(norm(name="bn1")(out))
    out = conv(self.features, (3, 3), padding=1, name="conv2")(out)
    out = norm(name="bn2")(out)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, (1, 1), strides=self.strides, padding=0, name="downsample_conv")(x)
      shortcut = norm(name="downsample_bn")(shortcut)
    preact = cifar_resnet.Tap(name="preact")(out + shortcut)
    return nn.relu(preact)


class PrunedCifarResNet(cifar_resnet.CifarResNet):
  """`kd.models.cifar_resnet.CifarResNet` with one inner width (first convolution's) per residual block.

  Attributes:
    inner_widths: the channels between the two convolutions of each block, stage by stage (3n for depth
      6n + 2); () gives the stage widths (CifarResNet itself).
  """

  inner_widths: Sequence[int] = ()

  ATTRIBUTE_RANGES: ClassVar[dict] = {**cifar_resnet.CifarResNet.ATTRIBUTE_RANGES,
                                      "inner_widths": attributes.POSITIVE_INT}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool) -> jax.Array:
    blocks_per_stage = (self.depth - 2) // 6
    inner = tuple(self.inner_widths) or tuple(w for w in self.widths[1:] for _ in range(blocks_per_stage))
    if (self.depth - 2) % 6 or len(self.widths) != 4 or len(inner) != 3 * blocks_per_stage:
      raise ValueError(f"PrunedCifarResNet: depth {self.depth} (6n + 2), 4 widths and 3n inner_widths needed, "
                       f"got widths {self.widths} and {len(inner)} inner_widths")
    x = cifar_resnet.ConvBNReLU(self.widths[0], dtype=self.dtype, name="stem")(images_BxHxWxC, train)
    for stage, features in enumerate(self.widths[1:], start=1):
      for index in range(blocks_per_stage):
        strides = 2 if stage > 1 and index == 0 else 1
        x = PrunedBasicBlock(features, strides, self.dtype, inner[(stage - 1) * blocks_per_stage + index],
                             name=f"layer{stage}_{index}")(x, train)
    x = cifar_resnet.GlobalAvgPool(name="pool")(x)
    logits = nn.Dense(self.num_classes, kernel_init=cifar_resnet.torch_default_kernel, dtype=self.dtype,
                      name="head")(x)
    return logits.astype(jnp.float32)


# By the package's path, not `models.import_path`: under `python -m kd.structured_pruning` this module is
# `__main__`, a name no later process can import.
PRUNED_VGG = "kd.structured_pruning:PrunedVGG"
PRUNED_RESNET = "kd.structured_pruning:PrunedCifarResNet"
FAMILIES = ("cnn", "cnn1d", "mlp", "vgg", "cifar_resnet")
# A pruned model can be pruned again: the families' names, and the classes that hold them pruned.
_FAMILY_OF = {**{name: name for name in FAMILIES}, PRUNED_VGG: "vgg", PRUNED_RESNET: "cifar_resnet"}


def _vgg_widths(depth: int, base_width: int) -> tuple[tuple[int, ...], ...]:
  return tuple(tuple(width * base_width // 64 for width in block) for block in vgg.CONFIGS[depth])


@dataclasses.dataclass(frozen=True)
class Layer:
  """A prunable layer: where its output channels live, and who reads them.

  Attributes:
    name: the layer's module path ("conv0", "hidden", "block1/conv0", "layer2_0/conv1"), the key of `widths`.
    norm: the BatchNorm that follows it ("norm0", "block1/bn0"), or "" (then importance is the L1 norm).
    reader: the module whose kernel reads the layer's channels on its input axis.
    reader_flattens: whether the reader is a Dense after a flatten (its rows are position x channel).
  """

  name: str
  norm: str
  reader: str
  reader_flattens: bool


def _plain(model_config: Mapping[str, Any]) -> dict[str, Any]:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items()}


def _full_config(model_config: Mapping[str, Any], where: str) -> dict[str, Any]:
  """The model config with every attribute's default filled in; a ConfigError for other families."""
  plain = _plain(model_config)
  name = plain.get("name")
  if name not in _FAMILY_OF:
    raise ConfigError(f"{where}: model {name!r} is not supported; structured pruning handles {list(FAMILIES)} "
                      "(for other models use unstructured pruning, a stage's `prune` block)")
  full = models.model_config(name, **{k: v for k, v in plain.items() if k not in models.CONFIG_KEYS})
  return {**plain, **full}


def _chain(convs: Sequence[tuple[str, str]], last_reader: str, flattens: bool) -> list[Layer]:
  """Layers that feed one another in order: (conv, norm) pairs, the last read by `last_reader`."""
  return [Layer(conv, norm, convs[i + 1][0] if i + 1 < len(convs) else last_reader,
                flattens and i + 1 == len(convs)) for i, (conv, norm) in enumerate(convs)]


def layers(model_config: Mapping[str, Any], where: str = "structured_pruning") -> tuple[Layer, ...]:
  """The prunable layers of a model, first to last, each with its BatchNorm and the layer reading it.

  cnn / cnn1d: every convolution and the hidden Dense; mlp: the hidden Dense layers; vgg: every
  convolution (the last is read by the head, after global average pooling); cifar_resnet: the first
  convolution of each residual block (read by the block's second), so every residual sum keeps its shape.
  """
  config = _full_config(model_config, where)
  family = _FAMILY_OF[config["name"]]
  if family == "mlp":
    return tuple(_chain([(f"dense{i}", "") for i in range(len(config["hidden"]))], "head", False))
  if family == "vgg":
    convs = [(f"block{b}/conv{i}", f"block{b}/bn{i}")
             for b, block in enumerate(vgg.CONFIGS[config["depth"]]) for i in range(len(block))]
    return tuple(_chain(convs, "head", False))
  if family == "cifar_resnet":
    blocks = (config["depth"] - 2) // 6
    return tuple(Layer(f"layer{s}_{i}/conv1", f"layer{s}_{i}/bn1", f"layer{s}_{i}/conv2", False)
                 for s in (1, 2, 3) for i in range(blocks))
  has_hidden = family == "cnn" or bool(config["hidden"])
  convs = [(f"conv{i}", f"norm{i}" if config["batch_norm"] else "") for i in range(len(config["channels"]))]
  found = _chain(convs, "hidden" if has_hidden else "head", True)
  if has_hidden:
    found.append(Layer("hidden", "", "head", False))
  return tuple(found)


def _at(tree: Mapping[str, Any], path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def widths_of(model_config: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, int]:
  """The output width of each prunable layer, by name."""
  params = variables["params"]
  return {layer.name: int(np.shape(_at(params, layer.name)["kernel"])[-1]) for layer in layers(model_config)}


def _l1_of_filters(kernel: np.ndarray) -> np.ndarray:
  """||F_j||_1 of each output channel j: the sum of |kernel| over every axis but the last."""
  kernel = np.asarray(kernel, np.float64)
  return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def top(scores: np.ndarray, count: int) -> np.ndarray:
  """The indices of the `count` largest scores (ties: the lower index), in increasing order."""
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  return np.sort(order[:count])


def kept_count(keep: float, width: int) -> int:
  """Channels kept of `width` for a fraction `keep`: rounded up (at least that fraction), at least one."""
  # The tolerance keeps 0.3 * 10 = 3.0000000000000004 at 3.
  return max(1, min(width, math.ceil(keep * width - 1e-9)))


def _check_keep(keep, where: str) -> float:
  if isinstance(keep, bool) or not isinstance(keep, (int, float, np.floating, np.integer)) or not 0 < keep <= 1:
    raise ConfigError(f"{where}: keep={keep!r} must be a fraction in (0, 1]: the share of each layer's channels "
                      "to keep (1.0 keeps the model as it is)")
  return float(keep)


def _resolve_widths(model_config, variables, keep: float, widths: Mapping[str, int] | None,
                    where: str) -> dict[str, int]:
  """The count each layer keeps: `widths[name]` where given, else `kept_count(keep, width)`."""
  full = widths_of(model_config, variables)
  given = dict(widths or {})
  unknown = sorted(set(given) - set(full))
  if unknown:
    raise ConfigError(f"{where}: widths names {unknown}, which the model lacks; its prunable layers are "
                      f"{list(full)}")
  counts = {}
  for name, width in full.items():
    count = given.get(name, kept_count(keep, width))
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= width:
      raise ConfigError(f"{where}: widths[{name!r}]={count!r} must be an integer in [1, {width}] (the layer has "
                        f"{width} channels)")
    counts[name] = int(count)
  return counts


def _take(array, axis: int, indices: np.ndarray) -> np.ndarray:
  return np.take(np.asarray(array), indices, axis=axis)


def _copy(tree):
  """Nested dicts copied (so that slicing replaces entries of the copy only), leaves as numpy arrays."""
  if isinstance(tree, Mapping):
    return {key: _copy(value) for key, value in tree.items()}
  return np.asarray(tree)


def importance(model_config: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Each prunable layer's channel importance on the unpruned model: |BatchNorm scale|, or filter L1 norms.

  (`prune` ranks with the greedy L1 norms, over the input channels the previous layer kept; these are
  the same for layers that BatchNorm follows and for the first layer.)
  """
  params = variables["params"]
  return {layer.name: (np.abs(np.asarray(_at(params, layer.norm)["scale"], np.float64)) if layer.norm
                       else _l1_of_filters(_at(params, layer.name)["kernel"]))
          for layer in layers(model_config)}


def _pruned_config(model_config: Mapping[str, Any], config: Mapping[str, Any], counts: Mapping[str, int],
                   plan: Sequence[Layer]) -> dict[str, Any]:
  """The config of the family at the pruned widths (vgg and cifar_resnet: their Pruned* classes)."""
  pruned = _plain(model_config)
  family = _FAMILY_OF[config["name"]]
  if family == "mlp":
    pruned["hidden"] = tuple(counts[layer.name] for layer in plan)
  elif family == "vgg":
    pruned.update(name=PRUNED_VGG, depth=config["depth"], base_width=config["base_width"],
                  conv_widths=tuple(counts[layer.name] for layer in plan))
  elif family == "cifar_resnet":
    pruned.update(name=PRUNED_RESNET, depth=config["depth"], widths=tuple(config["widths"]),
                  inner_widths=tuple(counts[layer.name] for layer in plan))
  else:
    pruned["channels"] = tuple(counts[f"conv{i}"] for i in range(len(config["channels"])))
    if "hidden" in counts:
      pruned["hidden"] = counts["hidden"]
  return pruned


def prune(model_config: Mapping[str, Any], variables: Mapping[str, Any], keep: float = 1.0,
          widths: Mapping[str, int] | None = None,
          where: str = "structured_pruning") -> tuple[dict[str, Any], dict[str, Any]]:
  """The model with its least important channels and hidden units removed, at the smaller shape.

  Args:
    model_config: the model's kd config (`cnn`, `cnn1d`, `mlp`, `vgg`, `cifar_resnet`, or one this
      function returned), e.g. `kd.load_model(dir).model_config`.
    variables: its variables ({"params": ..., "batch_stats": ...}).
    keep: the fraction of each layer's channels (units) to keep, in (0, 1]; rounded up, at least one.
    widths: channels to keep by layer name ("conv0", "hidden", "dense0", "block1/conv0", "layer2_0/conv1",
      ...: `layers(model_config)`), overriding `keep` for the layers it names.
    where: how errors name the call.

  Returns:
    (pruned model config, its variables as numpy arrays). Layers are ranked by |BatchNorm scale| (Liu et
    al. 2017, Sec. 3) where BatchNorm follows, else by the L1 norm of each filter or unit's weights (Li
    et al. 2017, Sec. 3.1, greedy as in Sec. 3.2); see the module docstring. A `vgg` or `cifar_resnet`
    comes back as `PrunedVGG` (`conv_widths`) or `PrunedCifarResNet` (`inner_widths`), by import path.
  """
  keep = _check_keep(keep, where)
  config = _full_config(model_config, where)
  plan = layers(config, where)
  counts = _resolve_widths(config, variables, keep, widths, where)
  params = _copy(variables["params"])
  stats = _copy(variables.get("batch_stats", {}))
  for layer in plan:
    producer = _at(params, layer.name)
    if layer.norm:
      scores = np.abs(np.asarray(_at(params, layer.norm)["scale"], np.float64))
    else:  # Greedy (Li et al. Sec. 3.2): the kernel's input axis is already cut to what was kept upstream.
      scores = _l1_of_filters(producer["kernel"])
    kept = top(scores, counts[layer.name])
    producer["kernel"] = _take(producer["kernel"], -1, kept)
    if "bias" in producer:
      producer["bias"] = _take(producer["bias"], 0, kept)
    if layer.norm:
      for collection in (params, stats):
        try:
          norm = _at(collection, layer.norm)
        except KeyError:  # BatchNorm without running statistics in this collection.
          continue
        for key in list(norm):
          norm[key] = _take(norm[key], 0, kept)
    reader = _at(params, layer.reader)
    kernel = np.asarray(reader["kernel"])
    if layer.reader_flattens:
      channels = len(scores)
      positions_PxCxN = kernel.reshape(kernel.shape[0] // channels, channels, kernel.shape[-1])
      reader["kernel"] = _take(positions_PxCxN, 1, kept).reshape(-1, kernel.shape[-1])
    else:  # A conv's kernel is [..., in, out], a Dense's [in, out]: the input axis is the one before last.
      reader["kernel"] = _take(kernel, kernel.ndim - 2, kept)

  pruned = _pruned_config(model_config, config, counts, plan)
  models.check_model_config(pruned, where)
  out = {**{k: v for k, v in variables.items() if k not in ("params", "batch_stats")}, "params": params}
  if "batch_stats" in variables:
    out["batch_stats"] = stats
  return pruned, out


def keep_for_params(model_config: Mapping[str, Any], variables: Mapping[str, Any], num_params: int,
                    where: str = "structured_pruning") -> float:
  """The largest `keep` (to 1e-4) whose pruned model has at most `num_params` parameters.

  The count of a pruned model only grows with `keep` (each layer keeps ceil(keep * width) channels), so
  a bisection finds it.
  """
  def count(keep: float) -> int:
    return models.count_params(prune(model_config, variables, keep=keep, where=where)[1]["params"])

  if count(1.0) <= num_params:
    return 1.0
  low, high = 1e-6, 1.0  # At `low` every layer keeps one channel.
  if count(low) > num_params:
    raise ConfigError(f"{where}: params={num_params} is below the {count(low)} parameters of the model with one "
                      "channel per layer: ask for more")
  while high - low > 1e-4:  # count(low) <= num_params < count(high) throughout.
    middle = (low + high) / 2
    low, high = (middle, high) if count(middle) <= num_params else (low, middle)
  return low


# --- The command line --------------------------------------------------------------------------------------


def _parse_widths(text: str) -> dict[str, int]:
  widths = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, value = part.partition("=")
    try:
      widths[name.strip()] = int(value)
    except ValueError:
      raise ConfigError(f"--widths={text!r} must be layer=count pairs, e.g. conv0=16,conv1=32,hidden=64") from None
  return widths


_WIDTH_KEYS = ("channels", "hidden", "conv_widths", "inner_widths")


def _describe(config: Mapping[str, Any]) -> str:
  return ", ".join(f"{key}={config[key]!r}" for key in _WIDTH_KEYS if key in config) or "full widths"


def main(argv: Sequence[str] | None = None) -> None:
  """`python -m kd.structured_pruning <export> <destination> --keep=0.5`: a kd export of the pruned model."""
  from kd import checkpoint  # pylint: disable=g-import-not-at-top

  where = "python -m kd.structured_pruning"
  parser = argparse.ArgumentParser(prog=where, description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", help=f"a kd export (a stage's folder: model.json and model/) of a {'/'.join(FAMILIES)}")
  parser.add_argument("destination", help="a new or empty folder for the pruned model's kd export")
  parser.add_argument("--keep", type=float, default=None, help="the fraction of each layer's channels to keep, "
                      "in (0, 1] (rounded up)")
  parser.add_argument("--params", type=int, default=None, help="instead of --keep: the largest uniform keep "
                      "whose model has at most this many parameters")
  parser.add_argument("--widths", default="", help="channels to keep by layer, overriding --keep for those "
                      "layers: e.g. conv0=32,conv1=32,hidden=53")
  args = parser.parse_args(argv)
  try:
    if args.params is not None and (args.keep is not None or args.widths):
      raise ConfigError("--params chooses one keep for every layer: give it alone, or --keep and/or --widths")
    if args.keep is None and args.params is None and not args.widths:
      raise ConfigError("say how much to keep: --keep=<fraction in (0, 1]>, --params=<count> or --widths=...")
    if os.path.exists(args.destination) and (not os.path.isdir(args.destination) or os.listdir(args.destination)):
      raise UserError(f"destination {args.destination} exists and is not an empty folder: give a new folder, "
                      "or empty this one; nothing was written")
    if not os.path.isdir(args.source):
      raise UserError(f"{args.source}: no such folder (give the folder of a kd export: model.json and model/)")
    description = checkpoint.read_model_description(args.source)
    _full_config(description["model"], where)  # Unsupported families fail before the weights are read.
    keep = args.keep if args.keep is not None else 1.0
    _check_keep(keep, where)
    widths = _parse_widths(args.widths)
    loaded = checkpoint.load_model(args.source)
    if args.params is not None:
      keep = keep_for_params(loaded.model_config, loaded.variables, args.params, where)
    pruned_config, pruned_variables = prune(loaded.model_config, loaded.variables, keep=keep, widths=widths,
                                            where=where)
    os.makedirs(args.destination, exist_ok=True)
    checkpoint.export_model(args.destination, pruned_config, loaded.spec, pruned_variables, source={
        "structured_pruning": os.path.abspath(args.source), "keep": keep, "widths": widths_of(
            pruned_config, pruned_variables)})
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  before, after = models.count_params(loaded.variables["params"]), models.count_params(pruned_variables["params"])
  chosen = f"keep={keep:.4g}" + (f", widths {widths}" if widths else "")
  renamed = "" if pruned_config["name"] == loaded.model_config["name"] else f"{pruned_config['name']} "
  print(f"wrote {args.destination}: {loaded.model_config['name']} {_describe(loaded.model_config)} -> "
        f"{renamed}{_describe(pruned_config)} ({chosen}; {after:,} of {before:,} parameters)\n"
        f"model: {pruned_config}")
  start = f"--config.stages.<stage>.init_from=export:{os.path.abspath(args.destination)}"
  if pruned_config["name"] == loaded.model_config["name"]:
    flags = " ".join(f"--config.stages.<stage>.model.{key}='{value!r}'" for key, value in pruned_config.items()
                     if key in _WIDTH_KEYS)
    print(f"start a stage from it: {flags} {start}")
  else:  # A Pruned* class: its extra attribute is not among the stage's model keys, so a config file names it.
    print(f"start a stage from it: a stage whose model is the config above (kd.config.stage_config(model, ...)) "
          f"and {start}")


if __name__ == "__main__":
  # The package's module, not this `__main__` copy: the pruned configs name its classes.
  from kd import structured_pruning  # pylint: disable=g-import-not-at-top,import-self
  structured_pruning.main()
