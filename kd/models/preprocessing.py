"""A model's input preprocessing: what its inputs looked like when it was trained.

A teacher trained elsewhere (a RepDistiller CIFAR-100 teacher, a timm ImageNet model) expects inputs
normalised as its authors did, which need not be how the student is trained. So preprocessing belongs
to the model, not to the dataset: each model config and export carries `preprocess`, a string, and the
apply function (`kd.models.make_apply`) applies it inside the compiled program. Teacher and student
each get the inputs they expect from one batch.

The string is a preset name or its spelled-out form:

    "unit"                                    uint8 images scaled to [0, 1]; floats as stored (kd's default)
    "cifar100"                                [0, 1], then (x - mean) / std with CIFAR-100's statistics
    "range=0:1 mean=0.5071,0.4865,0.4409 std=0.2673,0.2564,0.2762 order=rgb"

`range=lo:hi` maps uint8 images linearly onto [lo, hi] (float inputs are taken as already in that
range); `mean` and `std` (one value per channel, or one for all) are subtracted and divided after that;
`order=bgr` reverses the channel axis first (Caffe-style weights). An empty string means "not stated":
checkpoints that carry no statement of their inputs are refused unless the config states one.
"""

import dataclasses

import jax
import jax.numpy as jnp

from kd.errors import ConfigError

# Channel statistics as the reference implementations hard-code them.
PRESETS = {
    "unit": "range=0:1",
    # RepDistiller and mdistiller (`dataset/cifar100.py`): transforms.Normalize on [0, 1] inputs.
    "cifar100": "range=0:1 mean=0.5071,0.4867,0.4408 std=0.2675,0.2565,0.2761",
    "cifar10": "range=0:1 mean=0.4914,0.4822,0.4465 std=0.2470,0.2435,0.2616",
    # timm's IMAGENET_DEFAULT_MEAN / _STD (torchvision's ImageNet models, DeiT).
    "imagenet": "range=0:1 mean=0.485,0.456,0.406 std=0.229,0.224,0.225",
    # timm's IMAGENET_INCEPTION_MEAN / _STD (the original ViT weights): inputs in [-1, 1].
    "inception": "range=0:1 mean=0.5,0.5,0.5 std=0.5,0.5,0.5",
}
DEFAULT = "unit"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  value_range: tuple[float, float] = (0.0, 1.0)
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  channel_order: str = "rgb"


def _floats(text: str, key: str, where: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:
    raise ConfigError(f"{where}: {key}={text!r} must be comma-separated numbers, e.g. "
                      f"{key}=0.5,0.5,0.5") from None


def parse(text: str, where: str = "preprocess") -> Preprocessing:
  """The Preprocessing a preset name or spelled-out string describes (ConfigError if malformed)."""
  if not isinstance(text, str) or not text:
    raise ConfigError(f"{where}={text!r} states no input preprocessing: set it to one of "
                      f"{sorted(PRESETS)} or spell it out, e.g. 'range=0:1 mean=0.5,0.5,0.5 std=0.5,0.5,0.5'")
  spelled = PRESETS.get(text, text)
  fields = {}
  for item in spelled.split():
    key, sep, value = item.partition("=")
    if not sep or key not in ("range", "mean", "std", "order"):
      raise ConfigError(f"{where}={text!r}: {item!r} is neither a preset ({sorted(PRESETS)}) nor one of "
                        "range=lo:hi, mean=..., std=..., order=rgb|bgr")
    if key == "range":
      bounds = _floats(value.replace(":", ","), key, where)
      if len(bounds) != 2 or not bounds[0] < bounds[1]:
        raise ConfigError(f"{where}={text!r}: range={value!r} must be lo:hi with lo < hi, e.g. range=0:1")
      fields["value_range"] = bounds
    elif key == "order":
      if value not in ("rgb", "bgr"):
        raise ConfigError(f"{where}={text!r}: order={value!r} must be rgb or bgr")
      fields["channel_order"] = value
    else:
      fields[key] = _floats(value, key, where)
  result = Preprocessing(**fields)
  if bool(result.mean) != bool(result.std):
    raise ConfigError(f"{where}={text!r} gives mean without std or std without mean: give both")
  if any(s <= 0 for s in result.std):
    raise ConfigError(f"{where}={text!r}: every std must be > 0")
  if result.mean and len(result.mean) != len(result.std) and 1 not in (len(result.mean), len(result.std)):
    raise ConfigError(f"{where}={text!r}: mean has {len(result.mean)} values and std {len(result.std)}")
  return result


def check(text: str, where: str, channels: int | None = None) -> None:
  """Raises ConfigError if `text` is malformed or its statistics do not fit `channels`."""
  result = parse(text, where)
  if channels is not None:
    for name in ("mean", "std"):
      values = getattr(result, name)
      if len(values) not in (0, 1, channels):
        raise ConfigError(f"{where}={text!r}: {name} has {len(values)} values but the inputs have "
                          f"{channels} channels: give one value per channel, or one for all")


def apply(text: str, inputs: jax.Array) -> jax.Array:
  """The model's inputs from a batch's: uint8 images scaled to the range, then normalised.

  Runs inside the compiled apply; integer inputs are images here (token ids never reach it).
  """
  spec = parse(text)
  x = inputs
  if jnp.issubdtype(x.dtype, jnp.integer):
    low, high = spec.value_range
    x = x.astype(jnp.float32) * ((high - low) / 255.0) + low
  if spec.channel_order == "bgr":
    x = x[..., ::-1]
  if spec.mean:
    x = (x - jnp.asarray(spec.mean, x.dtype)) / jnp.asarray(spec.std, x.dtype)
  return x
