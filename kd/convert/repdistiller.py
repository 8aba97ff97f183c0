"""RepDistiller's and mdistiller's CIFAR-100 checkpoints as kd models.

Tian, Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020
(https://arxiv.org/abs/1910.10699), released its teachers and students' definitions in
github.com/HobbitLong/RepDistiller (`models/`, commit b84f547c); mdistiller
(github.com/megvii-research/mdistiller, `mdistiller/models/cifar/`, commit a08d46f1) uses the same
module names and the same released teacher files (`<model>_vanilla/ckpt_epoch_240.pth`, a
`torch.save({"epoch", "model", "accuracy", "optimizer"})`). Both normalise inputs with CIFAR-100's
channel statistics (`dataset/cifar100.py`), kd's "cifar100" preprocessing.

    python -m kd.convert save/models/resnet32x4_vanilla/ckpt_epoch_240.pth runs/teachers/resnet32x4 \\
        --arch=resnet32x4

`ARCHITECTURES` is keyed by RepDistiller's `model_dict` names. RepDistiller's CIFAR ResNet50
(`models/resnetv2.py`: a 3x3 stem without max-pool, bottleneck stages at 32, 16, 8 and 4 pixels) has
no kd model: kd's `imagenet_resnet` bottleneck network has the 7x7 stride-2 stem and max-pool of
ImageNet, so it is not listed.

A family's converter works for any width and depth: it walks the variables the kd model config
builds and names, for each, the state_dict entry it comes from (`<family>_torch_module` below), so the
zoo models and narrow test models share one code path. Layouts: a convolution's weight [O, I/groups,
kH, kW] becomes the kernel [kH, kW, I/groups, O] (grouped and depthwise convolutions included), a
linear weight [out, in] becomes [in, out], BatchNorm's weight, bias, running_mean and running_var
become scale, bias (params) and mean, var (batch_stats); `num_batches_tracked` is not needed.
"""

import functools
import re
from typing import Any, Callable

import jax
import numpy as np

from kd import models
from kd.convert.common import Architecture
from kd.convert.common import StateDict
from kd.errors import UserError

REFERENCE = "github.com/HobbitLong/RepDistiller models/{file} (as mdistiller/models/cifar/{file})"

# kd leaf name -> the torch parameter or buffer it comes from.
_PARAM_SOURCES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_SOURCES = {"mean": "running_mean", "var": "running_var"}


def _block(module: str) -> tuple[int, int]:
  """(stage, index) of kd's "layer2_3" / "block1_0" / "blocks4_1" module names."""
  stage, index = re.fullmatch(r"[a-z]+(\d+)_(\d+)", module).groups()
  return int(stage), int(index)


def resnet_torch_module(path: tuple[str, ...]) -> str:
  """kd `cifar_resnet` module path -> RepDistiller `models/resnet.py` module name."""
  if path[0] == "stem":
    return {"conv": "conv1", "bn": "bn1"}[path[1]]
  if path[0] == "head":
    return "fc"
  stage, index = _block(path[0])
  layer = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(path[1], path[1])
  return f"layer{stage}.{index}.{layer}"


def wrn_torch_module(path: tuple[str, ...]) -> str:
  """kd `wrn` module path -> RepDistiller `models/wrn.py` module name."""
  if path[0] in ("stem", "bn_final", "head"):
    return {"stem": "conv1", "bn_final": "bn1", "head": "fc"}[path[0]]
  stage, index = _block(path[0])
  layer = {"shortcut_conv": "convShortcut"}.get(path[1], path[1])
  return f"block{stage}.layer.{index}.{layer}"


def vgg_torch_module(path: tuple[str, ...]) -> str:
  """kd `vgg` module path -> RepDistiller `models/vgg.py` module name."""
  if path[0] == "head":
    return "classifier"
  # A block is nn.Sequential(conv, bn, relu, conv, bn, relu, ..., conv, bn): layer j sits at 3j, 3j + 1.
  layer, position = re.fullmatch(r"(conv|bn)(\d+)", path[1]).groups()
  return f"{path[0]}.{3 * int(position) + (layer == 'bn')}"


def mobilenetv2_torch_module(path: tuple[str, ...]) -> str:
  """kd `mobilenetv2` module path -> RepDistiller `models/mobilenetv2.py` module name."""
  if path[0] in ("stem", "last_conv"):
    # conv_bn and conv_1x1_bn: nn.Sequential(conv, bn, relu).
    sequential = {"stem": "conv1", "last_conv": "conv2"}[path[0]]
    return f"{sequential}.{ {'conv': 0, 'bn': 1}[path[1]]}"
  if path[0] == "head":
    return "classifier.0"
  stage, index = _block(path[0])
  # InvertedResidual.conv: pw conv, bn, relu, dw conv, bn, relu, pw-linear conv, bn.
  position = {"expand_conv": 0, "expand_bn": 1, "depthwise_conv": 3, "depthwise_bn": 4,
              "project_conv": 6, "project_bn": 7}[path[1]]
  return f"blocks.{stage}.{index}.conv.{position}"


def shufflenet_torch_module(path: tuple[str, ...], last_conv: str = "") -> str:
  """kd `shufflenetv1` / `shufflenetv2` module path -> RepDistiller `models/ShuffleNetv{1,2}.py` name."""
  if path[0] == "stem":
    return {"conv": "conv1", "bn": "bn1"}[path[1]]
  if path[0] == "last_conv":
    return {"conv": "conv2", "bn": "bn2"}[path[1]]
  if path[0] == "head":
    return "linear"
  stage, index = _block(path[0])
  return f"layer{stage}.{index}.{path[1]}"


def _torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
  """A torch parameter in Flax's layout: conv [O, I, kH, kW] -> [kH, kW, I, O], linear [out, in] -> [in, out]."""
  if leaf == "kernel" and array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  return array


def convert_family(state_dict: StateDict, model_config: dict[str, Any], *,
                   torch_module: Callable[[tuple[str, ...]], str], classifier: str) -> dict[str, Any]:
  """The kd variables of `model_config` from a RepDistiller state_dict, for any width and depth.

  Args:
    state_dict: name -> array, PyTorch's layout.
    model_config: the kd model config (its attributes fix the depth and widths).
    torch_module: kd module path (a tuple of names) -> the reference's module name.
    classifier: the reference's final linear layer, whose weight gives the number of classes.

  Returns:
    {"params": ..., "batch_stats": ...} as nested dicts of float32 numpy arrays.

  Raises:
    UserError: one line naming the arrays that are missing, do not fit, or are left over.
  """
  num_classes = classifier_classes(state_dict, classifier)
  module = models.build_model(model_config, num_classes)
  example = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  expected = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x), example)
  variables: dict[str, Any] = {}
  used, missing, misfit = set(), [], []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
    collection, *module_path, name = [key.key for key in key_path]
    sources = _PARAM_SOURCES if collection == "params" else _STAT_SOURCES
    source = f"{torch_module(tuple(module_path))}.{sources[name]}"
    if source not in state_dict:
      missing.append(source)
      continue
    used.add(source)
    array = _torch_layout(np.asarray(state_dict[source]), name)
    if tuple(array.shape) != tuple(leaf.shape):
      misfit.append(f"{source} {tuple(np.shape(state_dict[source]))} gives {'/'.join(module_path)}/{name} "
                    f"{tuple(array.shape)}, expected {tuple(leaf.shape)}")
      continue
    target = variables.setdefault(collection, {})
    for part in module_path:
      target = target.setdefault(part, {})
    target[name] = array.astype(np.float32)
  left_over = sorted(name for name in state_dict
                     if name not in used and not name.endswith("num_batches_tracked"))
  if missing or misfit or left_over:
    missing.sort()
    misfit.sort()
    problems = [f"{len(missing)} missing: {', '.join(missing[:4])}" if missing else "",
                f"{len(misfit)} of the wrong shape: {'; '.join(misfit[:4])}" if misfit else "",
                f"{len(left_over)} not in the model: {', '.join(left_over[:4])}" if left_over else ""]
    raise UserError(f"the state_dict does not fit kd model {model_config['name']!r} "
                    f"({_describe(model_config)}): {'; '.join(p for p in problems if p)}"
                    f"{' ...' if max(len(missing), len(misfit), len(left_over)) > 4 else ''}")
  return variables


def _describe(model_config: dict[str, Any]) -> str:
  return ", ".join(f"{k}={v}" for k, v in model_config.items() if k not in ("name", "preprocess"))


def classifier_classes(state_dict: StateDict, classifier: str) -> int:
  """The number of classes: rows of the reference's final linear weight."""
  weight = f"{classifier}.weight"
  if weight not in state_dict or np.ndim(state_dict[weight]) != 2:
    heads = sorted(name for name in state_dict if name.endswith(".weight") and np.ndim(state_dict[name]) == 2)
    raise UserError(f"the state_dict has no classifier {weight} [classes, features] (its linear "
                    f"weights: {heads or 'none'}): is --arch the architecture it was saved from?")
  return int(np.shape(state_dict[weight])[0])


# Family -> (kd module path -> torch module name, the classifier's torch name, reference file).
FAMILIES = {
    "cifar_resnet": (resnet_torch_module, "fc", "resnet.py"),
    "wrn": (wrn_torch_module, "fc", "wrn.py"),
    "vgg": (vgg_torch_module, "classifier", "vgg.py"),
    "mobilenetv2": (mobilenetv2_torch_module, "classifier.0", "mobilenetv2.py"),
    "shufflenetv1": (shufflenet_torch_module, "linear", "ShuffleNetv1.py"),
    "shufflenetv2": (shufflenet_torch_module, "linear", "ShuffleNetv2.py"),
}

# RepDistiller's `models/__init__.py` model_dict name -> kd zoo name.
ZOO_NAMES = {
    **{name: name for name in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                               "resnet110", "resnet8x4", "resnet32x4")},
    **{name: name for name in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")},
    **{name: name for name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},  # Its vgg*_bn.
    "MobileNetV2": "mobile_half",
    "ShuffleV1": "ShuffleV1",
    "ShuffleV2": "ShuffleV2",
}


def family_architecture(zoo_name: str) -> Architecture:
  """The Architecture converting RepDistiller's checkpoint of kd zoo model `zoo_name`."""
  model = {k: v for k, v in models.zoo_model_config(zoo_name).items() if k != "preprocess"}
  torch_module, classifier, file = FAMILIES[model["name"]]
  return Architecture(
      model=model,
      preprocess="cifar100",
      input_shape=(32, 32, 3),
      num_classes=functools.partial(classifier_classes, classifier=classifier),
      convert=functools.partial(convert_family, torch_module=torch_module, classifier=classifier),
      reference=REFERENCE.format(file=file))


ARCHITECTURES: dict[str, Architecture] = {name: family_architecture(zoo_name)
                                          for name, zoo_name in ZOO_NAMES.items()}
