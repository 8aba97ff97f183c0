"""timm's ImageNet ResNets, ViTs and DeiTs (PyTorch state_dicts) as kd models.

    python -m kd.convert deit_small_distilled_patch16_224.safetensors runs/teachers/deit_s \
        --arch=deit_small_distilled_patch16_224

Layouts, read from timm 1.0 (https://github.com/huggingface/pytorch-image-models):
  `timm/models/resnet.py` `ResNet` (torchvision's names): conv1, bn1, layer{1..4}.{i}.conv1/bn1/
    conv2/bn2[/conv3/bn3], layer{s}.0.downsample.0 (1x1 conv) and .1 (BatchNorm), fc
    -> `kd.models.imagenet_resnet.ImageNetResNet` (stem, layer{s}_{i}, head).
  `timm/models/vision_transformer.py` `VisionTransformer` and `timm/models/deit.py`
    `VisionTransformerDistilled`: patch_embed.proj, cls_token, [dist_token], pos_embed,
    blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2, norm, head, [head_dist]
    -> `kd.models.vit.VisionTransformer` (the same names, blocks_{i}).

PyTorch stores a Linear weight as [out, in] and a convolution's as [out, in, kh, kw]; Flax's kernels
are [in, out] and [kh, kw, in, out]. BatchNorm's running_mean/running_var are kd's batch_stats
mean/var (num_batches_tracked is dropped).

Input preprocessing is each published model's `pretrained_cfg` (checked against timm 1.0.31):
ResNets and DeiTs were trained on IMAGENET_DEFAULT_MEAN/STD inputs ("imagenet"), the original ViT
weights (augreg, Steiner et al. 2021) on inputs in [-1, 1] (IMAGENET_INCEPTION_MEAN/STD,
"inception"). The converters are generic over depths and widths: they read them from the kd model
config, so the tiny fixtures of tests/fixtures/make_timm_fixtures.py exercise the same code as the
full-size checkpoints.
"""

from typing import Any, Callable

import numpy as np

from kd import models
from kd.convert.common import Architecture
from kd.convert.common import StateDict
from kd.errors import UserError
from kd.models import imagenet_resnet
from kd.models import vit

TIMM_REFERENCE = "huggingface/pytorch-image-models (timm 1.0)"

# A kd array: (collection, path inside it), e.g. ("params", ("layer1_0", "conv1", "kernel")).
KdPath = tuple[str, tuple[str, ...]]
# One row of a layout: kd array <- timm array, through a transform; the timm array's expected shape
# in PyTorch's layout (None: any size).
Row = tuple[KdPath, str, Callable[[np.ndarray], np.ndarray], tuple[int | None, ...]]

IGNORED_SUFFIXES = (".num_batches_tracked",)  # BatchNorm's step counter: no kd counterpart.


def _identity(array: np.ndarray) -> np.ndarray:
  return array


def _linear_kernel(weight_OxI: np.ndarray) -> np.ndarray:
  return weight_OxI.T


def _conv_kernel(weight_OxIxHxW: np.ndarray) -> np.ndarray:
  return weight_OxIxHxW.transpose(2, 3, 1, 0)


def _dense(kd_path: tuple[str, ...], timm_name: str, inputs: int, outputs: int | None) -> list[Row]:
  return [(("params", kd_path + ("kernel",)), f"{timm_name}.weight", _linear_kernel, (outputs, inputs)),
          (("params", kd_path + ("bias",)), f"{timm_name}.bias", _identity, (outputs,))]


def _conv(kd_path: tuple[str, ...], timm_name: str, kernel: int, inputs: int | None, outputs: int,
          bias: bool = False) -> list[Row]:
  rows = [(("params", kd_path + ("kernel",)), f"{timm_name}.weight", _conv_kernel,
           (outputs, inputs, kernel, kernel))]
  if bias:
    rows.append((("params", kd_path + ("bias",)), f"{timm_name}.bias", _identity, (outputs,)))
  return rows


def _batch_norm(kd_path: tuple[str, ...], timm_name: str, channels: int) -> list[Row]:
  return [(("params", kd_path + ("scale",)), f"{timm_name}.weight", _identity, (channels,)),
          (("params", kd_path + ("bias",)), f"{timm_name}.bias", _identity, (channels,)),
          (("batch_stats", kd_path + ("mean",)), f"{timm_name}.running_mean", _identity, (channels,)),
          (("batch_stats", kd_path + ("var",)), f"{timm_name}.running_var", _identity, (channels,))]


def _layer_norm(kd_path: tuple[str, ...], timm_name: str, channels: int) -> list[Row]:
  return [(("params", kd_path + ("scale",)), f"{timm_name}.weight", _identity, (channels,)),
          (("params", kd_path + ("bias",)), f"{timm_name}.bias", _identity, (channels,))]


def _full_config(model_config: dict[str, Any]) -> dict[str, Any]:
  """The config with every attribute's default filled in (a config may name only some)."""
  return models.model_config(**{k: v for k, v in model_config.items() if k != "preprocess"})


def resnet_layout(model_config: dict[str, Any]) -> list[Row]:
  """timm's (torchvision's) ResNet names for an `imagenet_resnet` config of any depth and width."""
  config = _full_config(model_config)
  stem_width = config["widths"][0]
  expansion = 4 if config["block"] == "bottleneck" else 1
  convs = (1, 3, 1) if config["block"] == "bottleneck" else (3, 3)
  rows = _conv(("stem", "conv"), "conv1", 7, None, stem_width)
  rows += _batch_norm(("stem", "bn"), "bn1", stem_width)
  channels = stem_width
  for stage, (blocks, width) in enumerate(zip(config["stage_sizes"], config["widths"]), start=1):
    for index in range(blocks):
      kd_block, timm_block = f"layer{stage}_{index}", f"layer{stage}.{index}"
      out_channels = width * expansion
      inputs = channels
      for number, kernel in enumerate(convs, start=1):
        outputs = out_channels if number == len(convs) else width
        rows += _conv((kd_block, f"conv{number}"), f"{timm_block}.conv{number}", kernel, inputs, outputs)
        rows += _batch_norm((kd_block, f"bn{number}"), f"{timm_block}.bn{number}", outputs)
        inputs = outputs
      # The block's shortcut projects wherever it changes resolution or width (kd's rule, and timm's).
      if (stage > 1 and index == 0) or channels != out_channels:
        rows += _conv((kd_block, "downsample_conv"), f"{timm_block}.downsample.0", 1, channels, out_channels)
        rows += _batch_norm((kd_block, "downsample_bn"), f"{timm_block}.downsample.1", out_channels)
      channels = out_channels
  return rows + _dense(("head",), "fc", channels, None)


def vit_layout(model_config: dict[str, Any]) -> list[Row]:
  """timm's ViT / DeiT names for a `vit` config of any depth and width."""
  config = _full_config(model_config)
  hidden, patch = config["hidden"], config["patch_size"]
  mlp_dim = int(hidden * config["mlp_ratio"])
  rows = _conv(("patch_embed", "proj"), "patch_embed.proj", patch, None, hidden, bias=True)
  rows.append((("params", ("cls_token",)), "cls_token", _identity, (1, 1, hidden)))
  if config["distilled"]:
    rows.append((("params", ("dist_token",)), "dist_token", _identity, (1, 1, hidden)))
  rows.append((("params", ("pos_embed",)), "pos_embed", _identity, (1, None, hidden)))
  for index in range(config["depth"]):
    kd_block, timm_block = f"blocks_{index}", f"blocks.{index}"
    rows += _layer_norm((kd_block, "norm1"), f"{timm_block}.norm1", hidden)
    rows += _dense((kd_block, "attn", "qkv"), f"{timm_block}.attn.qkv", hidden, 3 * hidden)
    rows += _dense((kd_block, "attn", "proj"), f"{timm_block}.attn.proj", hidden, hidden)
    rows += _layer_norm((kd_block, "norm2"), f"{timm_block}.norm2", hidden)
    rows += _dense((kd_block, "mlp", "fc1"), f"{timm_block}.mlp.fc1", hidden, mlp_dim)
    rows += _dense((kd_block, "mlp", "fc2"), f"{timm_block}.mlp.fc2", mlp_dim, hidden)
  rows += _layer_norm(("norm",), "norm", hidden)
  rows += _dense(("head",), "head", hidden, None)
  if config["distilled"]:
    rows += _dense(("head_dist",), "head_dist", hidden, None)
  return rows


def _shape_fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
  return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _listed(names: list[str], limit: int = 4) -> str:
  return ", ".join(names[:limit]) + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def apply_layout(state_dict: StateDict, rows: list[Row], where: str) -> dict[str, Any]:
  """kd variables from `state_dict` by `rows`; one UserError naming every missing, misfitting or
  unused array."""
  variables: dict[str, Any] = {}
  missing, misfits = [], []
  for (collection, path), timm_name, transform, expected in rows:
    if timm_name not in state_dict:
      missing.append(timm_name)
      continue
    shape = tuple(np.shape(state_dict[timm_name]))
    if not _shape_fits(shape, expected):
      wanted = ", ".join("*" if size is None else str(size) for size in expected)
      misfits.append(f"{timm_name} is {shape}, expected ({wanted}{',' if len(expected) == 1 else ''})")
      continue
    array = transform(np.asarray(state_dict[timm_name], np.float32))
    node = variables.setdefault(collection, {})
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(array)
  used = {timm_name for _, timm_name, _, _ in rows}
  unused = sorted(name for name in state_dict if name not in used and not name.endswith(IGNORED_SUFFIXES))
  problems = []
  if missing:
    problems.append(f"missing {_listed(missing)}")
  if misfits:
    problems.append(f"misfitting {_listed(misfits)}")
  if unused:
    problems.append(f"not in the model {_listed(unused)}")
  if problems:
    raise UserError(f"{where}: {'; '.join(problems)}. Is the checkpoint of this architecture and size? "
                    f"Its arrays begin {_listed(sorted(state_dict), 4)}")
  return variables


def classes_of(classifier: str) -> Callable[[StateDict], int]:
  """`(state_dict) -> int`: the rows of the classifier's weight."""

  def num_classes(state_dict: StateDict) -> int:
    name = f"{classifier}.weight"
    if name not in state_dict or np.ndim(state_dict[name]) != 2:
      raise UserError(f"the checkpoint has no classifier {name} [classes, features]: not a timm "
                      f"model of this family (its arrays begin {_listed(sorted(state_dict), 4)})")
    return int(np.shape(state_dict[name])[0])

  return num_classes


def convert_resnet(state_dict: StateDict, model_config: dict[str, Any]) -> dict[str, Any]:
  return apply_layout(state_dict, resnet_layout(model_config), "timm ResNet checkpoint")


def convert_vit(state_dict: StateDict, model_config: dict[str, Any]) -> dict[str, Any]:
  return apply_layout(state_dict, vit_layout(model_config), "timm ViT/DeiT checkpoint")


def _resnet(zoo_name: str) -> Architecture:
  _, attributes = imagenet_resnet.ZOO[zoo_name]
  return Architecture(model={"name": "imagenet_resnet", **attributes}, preprocess="imagenet",
                      input_shape=(224, 224, 3), num_classes=classes_of("fc"), convert=convert_resnet,
                      reference=f"{TIMM_REFERENCE} timm/models/resnet.py ResNet ({zoo_name})")


def _vit(zoo_name: str, preprocess: str) -> Architecture:
  _, attributes = vit.ZOO[zoo_name]
  if attributes["distilled"]:
    source = "deit.py VisionTransformerDistilled"
  else:  # DeiT's undistilled models are timm's VisionTransformer, built by deit.py.
    source = "deit.py VisionTransformer" if zoo_name.startswith("deit") else "vision_transformer.py VisionTransformer"
  return Architecture(model={"name": "vit", **attributes}, preprocess=preprocess, input_shape=(224, 224, 3),
                      num_classes=classes_of("head"), convert=convert_vit,
                      reference=f"{TIMM_REFERENCE} timm/models/{source} ({zoo_name})")


# timm's model names -> how their checkpoints become kd models.
ARCHITECTURES: dict[str, Architecture] = {
    **{name: _resnet(name) for name in ("resnet18", "resnet34", "resnet50")},
    **{name: _vit(name, "inception") for name in vit.ZOO if name.startswith("vit_")},
    **{name: _vit(name, "imagenet") for name in vit.ZOO if name.startswith("deit_")},
}
