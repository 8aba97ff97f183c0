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

Families: `cnn` (conv blocks, the hidden layer), `cnn1d` (conv blocks, the hidden layer if any) and
`mlp` (its hidden layers). Other families are refused with the list of these.
"""

import argparse
import dataclasses
import math
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from kd import models
from kd.errors import ConfigError
from kd.errors import UserError

FAMILIES = ("cnn", "cnn1d", "mlp")


@dataclasses.dataclass(frozen=True)
class Layer:
  """A prunable layer: where its output channels live, and who reads them.

  Attributes:
    name: the layer's module name ("conv0", "hidden", "dense1"), the key of `widths`.
    norm: the BatchNorm that follows it ("norm0"), or "" (then importance is the filters' L1 norm).
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
  if name not in FAMILIES:
    raise ConfigError(f"{where}: model {name!r} is not supported; structured pruning handles {list(FAMILIES)} "
                      "(for other models use unstructured pruning, a stage's `prune` block)")
  full = models.model_config(name, **{k: v for k, v in plain.items() if k not in models.CONFIG_KEYS})
  return {**plain, **full}


def layers(model_config: Mapping[str, Any], where: str = "structured_pruning") -> tuple[Layer, ...]:
  """The prunable layers of a model, first to last, each with its BatchNorm and the layer reading it."""
  config = _full_config(model_config, where)
  name = config["name"]
  if name == "mlp":
    hidden = tuple(config["hidden"])
    return tuple(Layer(f"dense{i}", "", f"dense{i + 1}" if i + 1 < len(hidden) else "head", False)
                 for i in range(len(hidden)))
  channels = tuple(config["channels"])
  has_hidden = name == "cnn" or bool(config["hidden"])
  norms = config["batch_norm"]
  found = [Layer(f"conv{i}", f"norm{i}" if norms else "",
                 f"conv{i + 1}" if i + 1 < len(channels) else ("hidden" if has_hidden else "head"),
                 i + 1 == len(channels))
           for i in range(len(channels))]
  if has_hidden:
    found.append(Layer("hidden", "", "head", False))
  return tuple(found)


def widths_of(model_config: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, int]:
  """The output width of each prunable layer, by name."""
  params = variables["params"]
  return {layer.name: int(np.shape(params[layer.name]["kernel"])[-1]) for layer in layers(model_config)}


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
  return jax.tree.map(np.asarray, {k: dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()})


def importance(model_config: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Each prunable layer's channel importance on the unpruned model: |BatchNorm scale|, or filter L1 norms.

  (`prune` ranks with the greedy L1 norms, over the input channels the previous layer kept; these are
  the same for layers that BatchNorm follows and for the first layer.)
  """
  params = variables["params"]
  return {layer.name: (np.abs(np.asarray(params[layer.norm]["scale"], np.float64)) if layer.norm
                       else _l1_of_filters(params[layer.name]["kernel"]))
          for layer in layers(model_config)}


def prune(model_config: Mapping[str, Any], variables: Mapping[str, Any], keep: float = 1.0,
          widths: Mapping[str, int] | None = None,
          where: str = "structured_pruning") -> tuple[dict[str, Any], dict[str, Any]]:
  """The model with its least important channels and hidden units removed, at the smaller shape.

  Args:
    model_config: the model's kd config (`cnn`, `cnn1d` or `mlp`), e.g. `kd.load_model(dir).model_config`.
    variables: its variables ({"params": ..., "batch_stats": ...}).
    keep: the fraction of each layer's channels (units) to keep, in (0, 1]; rounded up, at least one.
    widths: channels to keep by layer name ("conv0", "conv1", "hidden", "dense0", ...), overriding `keep`
      for the layers it names (see `layers`).
    where: how errors name the call.

  Returns:
    (pruned model config, its variables as numpy arrays). Layers are ranked by |BatchNorm scale| (Liu et
    al. 2017, Sec. 3) where BatchNorm follows, else by the L1 norm of each filter or unit's weights (Li
    et al. 2017, Sec. 3.1, greedy as in Sec. 3.2); see the module docstring.
  """
  keep = _check_keep(keep, where)
  config = _full_config(model_config, where)
  plan = layers(config, where)
  counts = _resolve_widths(config, variables, keep, widths, where)
  params = _copy(variables["params"])
  stats = _copy(variables.get("batch_stats", {}))
  for layer in plan:
    producer = params[layer.name]
    if layer.norm:
      scores = np.abs(np.asarray(params[layer.norm]["scale"], np.float64))
    else:  # Greedy (Li et al. Sec. 3.2): the kernel's input axis is already cut to what was kept upstream.
      scores = _l1_of_filters(producer["kernel"])
    kept = top(scores, counts[layer.name])
    producer["kernel"] = _take(producer["kernel"], -1, kept)
    if "bias" in producer:
      producer["bias"] = _take(producer["bias"], 0, kept)
    if layer.norm:
      params[layer.norm] = {key: _take(value, 0, kept) for key, value in params[layer.norm].items()}
      if layer.norm in stats:
        stats[layer.norm] = {key: _take(value, 0, kept) for key, value in stats[layer.norm].items()}
    reader = params[layer.reader]
    kernel = np.asarray(reader["kernel"])
    if layer.reader_flattens:
      channels = len(scores)
      positions_PxCxN = kernel.reshape(kernel.shape[0] // channels, channels, kernel.shape[-1])
      reader["kernel"] = _take(positions_PxCxN, 1, kept).reshape(-1, kernel.shape[-1])
    else:  # A conv's kernel is [..., in, out], a Dense's [in, out]: the input axis is the one before last.
      reader["kernel"] = _take(kernel, kernel.ndim - 2, kept)

  pruned = _plain(model_config)
  if config["name"] == "mlp":
    pruned["hidden"] = tuple(counts[layer.name] for layer in plan)
  else:
    pruned["channels"] = tuple(counts[f"conv{i}"] for i in range(len(config["channels"])))
    if "hidden" in counts:
      pruned["hidden"] = counts["hidden"]
  models.check_model_config({k: v for k, v in pruned.items()}, where)
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


def _describe(config: Mapping[str, Any]) -> str:
  return ", ".join(f"{key}={config[key]!r}" for key in ("channels", "hidden") if key in config)


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
    if args.keep is not None and args.params is not None:
      raise ConfigError("give --keep or --params, not both")
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
  flags = " ".join(f"--config.stages.<stage>.model.{key}='{value!r}'" for key, value in pruned_config.items()
                   if key in ("channels", "hidden"))
  print(f"wrote {args.destination}: {pruned_config['name']} {_describe(loaded.model_config)} -> "
        f"{_describe(pruned_config)} (keep={keep:.4g}; {after:,} of {before:,} parameters)\n"
        f"model: {pruned_config}\n"
        f"start a stage from it: {flags} --config.stages.<stage>.init_from=export:{os.path.abspath(args.destination)}")


if __name__ == "__main__":
  main()
