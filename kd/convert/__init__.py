r"""Converters: published checkpoints (PyTorch state_dicts) into kd models, with logit parity.

    python -m kd.convert resnet32x4.pth runs/teachers/resnet32x4 --arch=resnet32x4
    python -m kd.convert --list

write a kd export (`<dst>/model/`, `<dst>/model.json`) that `kd.load_model(dst)` reads and a stage
uses as `teacher = "export:<dst>"`. The export records the architecture, its source and the input
preprocessing its authors trained with, so it is fed correctly whatever the student trains on.

Sources are read without torch: `.safetensors`, `.npz`, or a `torch.save` file (`.pth`, `.pt`) read by
a restricted unpickler that builds tensors and nothing else (`kd.convert.torch_pickle`). A state_dict
nested under "model" or "state_dict" (RepDistiller's and mdistiller's files) and DataParallel's
"module." prefixes are unwrapped.

Architectures (`ARCHITECTURES`):
  RepDistiller / mdistiller CIFAR-100 zoo (`kd.convert.repdistiller`): resnet8 ... resnet110,
    resnet8x4, resnet32x4, wrn_16_1 ... wrn_40_2, vgg8 ... vgg19, MobileNetV2, ShuffleV1, ShuffleV2.
  timm (`kd.convert.timm`): resnet18/34/50, vit_{tiny,small,base}_patch16_224,
    deit_{tiny,small,base}_patch16_224 and their distilled variants.
"""

import argparse
import functools
import os
import sys
from typing import Any

import jax
import numpy as np

from kd import checkpoint
from kd import models
from kd.convert import repdistiller
from kd.convert import timm
from kd.convert import torch_pickle
from kd.convert.common import Architecture
from kd.convert.common import StateDict
from kd.data import DatasetSpec
from kd.errors import UserError

ARCHITECTURES: dict[str, Architecture] = {**repdistiller.ARCHITECTURES, **timm.ARCHITECTURES}

STATE_DICT_SUFFIXES = (".safetensors", ".npz", ".pth", ".pt", ".bin")


def architecture(name: str) -> Architecture:
  if name not in ARCHITECTURES:
    raise UserError(f"--arch={name!r} has no converter; architectures: {sorted(ARCHITECTURES)}")
  return ARCHITECTURES[name]


def family_converter(model_name: str, where: str):
  """The converter of PyTorch state_dicts for kd model `model_name` (all its sizes), for checkpoints
  given with a model config rather than an --arch."""
  converters = {_identity(layout.convert): layout.convert for layout in ARCHITECTURES.values()
                if layout.model["name"] == model_name}
  if len(converters) != 1:
    families = sorted({layout.model["name"] for layout in ARCHITECTURES.values()})
    problem = "has several source layouts" if converters else "has no converter from PyTorch layouts"
    raise UserError(f"{where}: model {model_name!r} {problem}; kd converts state_dicts of {families}: convert "
                    "the file first with python -m kd.convert <src> <dst> --arch=<name> and use teacher="
                    "'export:<dst>'")
  return next(iter(converters.values()))


def _identity(function):
  """Equal for converters that do the same (one family's partials of one function)."""
  if isinstance(function, functools.partial):
    return (function.func, function.args, tuple(sorted(function.keywords.items())))
  return function


def _unwrap(tree: Any, path: str) -> StateDict:
  """The flat {name: array} state_dict inside what a checkpoint file holds."""
  if isinstance(tree, dict):
    for key in ("model", "state_dict", "model_state_dict", "net"):
      if key in tree and isinstance(tree[key], dict):
        return _unwrap(tree[key], path)
  if not isinstance(tree, dict) or not tree:
    raise UserError(f"{path} holds no state_dict ({type(tree).__name__}): expected a mapping from "
                    "parameter names to tensors, or one under 'model' or 'state_dict'")
  arrays = {}
  for name, value in tree.items():
    if hasattr(value, "shape") and hasattr(value, "dtype"):
      # DataParallel saves parameters as "module.<name>".
      arrays[name[len("module."):] if name.startswith("module.") else name] = np.asarray(value)
  if not arrays:
    raise UserError(f"{path} holds no arrays under its keys {sorted(tree)[:10]}: not a state_dict")
  return arrays


def read_state_dict(path: str) -> StateDict:
  """A PyTorch-layout state_dict as numpy arrays, read without torch (see the module docstring)."""
  if not os.path.isfile(path):
    raise UserError(f"no checkpoint file at {path}")
  suffix = os.path.splitext(path)[1].lower()
  try:
    if suffix == ".safetensors":
      import safetensors.numpy  # pylint: disable=g-import-not-at-top
      return _unwrap(safetensors.numpy.load_file(path), path)
    if suffix == ".npz":
      with np.load(path, allow_pickle=False) as arrays:
        return _unwrap(dict(arrays), path)
    if suffix in (".pth", ".pt", ".bin"):
      return _unwrap(torch_pickle.load(path), path)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Each reader raises its own types on bad bytes.
    raise UserError(f"cannot read {path} as a {suffix} state_dict ({type(e).__name__}: {e})") from e
  raise UserError(f"{path}: unknown checkpoint format {suffix!r}; kd reads {STATE_DICT_SUFFIXES}")


def convert(path: str, arch: str) -> tuple[dict[str, Any], dict[str, Any], DatasetSpec]:
  """Reads `path` and converts it for architecture `arch`.

  Returns:
    (model config with its `preprocess`, variables as numpy arrays, the DatasetSpec of its inputs).
  """
  layout = architecture(arch)
  state_dict = read_state_dict(path)
  num_classes = layout.num_classes(state_dict)
  model_config = {**models.model_config(**layout.model), "preprocess": layout.preprocess}
  variables = layout.convert(state_dict, model_config)
  check_fits(variables, model_config, num_classes, layout.input_shape, f"{path} (--arch={arch})")
  spec = DatasetSpec(name=f"converted:{arch}", input_key="image", input_shape=tuple(layout.input_shape),
                     input_dtype="uint8", num_classes=num_classes, split_sizes={})
  return model_config, variables, spec


def check_fits(variables, model_config: dict[str, Any], num_classes: int, input_shape, where: str) -> None:
  """Raises UserError naming every array whose shape differs from the model's (or that is missing)."""
  module = models.build_model(model_config, num_classes)
  example = jax.ShapeDtypeStruct((1,) + tuple(input_shape), np.float32)
  expected = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x), example)
  mismatches = models.variable_mismatches(expected, variables)
  if mismatches:
    raise UserError(f"{where} does not fit model {model_config['name']!r}: {'; '.join(mismatches[:6])}"
                    f"{f' (and {len(mismatches) - 6} more)' if len(mismatches) > 6 else ''}")


def to_export(source: str, destination: str, arch: str) -> checkpoint.LoadedModel:
  """Converts `source` into a kd export at `destination` and returns it, loaded back."""
  if os.path.exists(os.path.join(destination, checkpoint.MODEL_JSON)):
    raise UserError(f"{destination} already holds an exported model: choose another destination "
                    "(nothing was overwritten)")
  model_config, variables, spec = convert(source, arch)
  os.makedirs(destination, exist_ok=True)
  checkpoint.export_model(destination, model_config, spec, variables,
                          source={"converted_from": os.path.abspath(source), "arch": arch,
                                  "reference": architecture(arch).reference})
  return checkpoint.load_model(destination)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m kd.convert", description=__doc__.split("\n\n")[0])
  parser.add_argument("source", nargs="?", help="a state_dict: .safetensors, .npz, .pth or .pt")
  parser.add_argument("destination", nargs="?", help="folder for the kd export")
  parser.add_argument("--arch", help="the architecture of the checkpoint (see --list)")
  parser.add_argument("--list", action="store_true", help="list the architectures and exit")
  args = parser.parse_args(argv)
  if args.list:
    for name, layout in sorted(ARCHITECTURES.items()):
      print(f"{name:32s} {layout.model['name']:16s} {layout.preprocess:10s} {layout.reference}")
    return
  try:
    if not args.source or not args.destination or not args.arch:
      raise UserError("give a source, a destination and --arch: python -m kd.convert <src> <dst> "
                      "--arch=<name> (python -m kd.convert --list shows the architectures)")
    loaded = to_export(args.source, args.destination, args.arch)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {args.destination}: {loaded.model_config['name']} ({args.arch}), "
        f"{models.count_params(loaded.variables['params']):,} parameters, {loaded.spec.num_classes} classes, "
        f"inputs {loaded.spec.input_shape} preprocessed as {loaded.model_config['preprocess']!r}")

