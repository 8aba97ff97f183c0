"""Batch augmentation on the device, inside the jitted train step.

Views of a batch of images [B, H, W, C] or signals [B, L, C]:
  - random crop after padding (`crop_padding` pixels or samples on each side), the CIFAR recipe
    (He et al. 2016) and its 1-D form (a random shift, as MNIST-1D's translations); the padding is
    zeros (`crop_padding_mode="zero"`, torchvision's `RandomCrop(padding=4)`) or the mirror image
    without the edge (`"reflect"`, torchvision's `Pad(4, padding_mode="reflect")`, as the
    attention-transfer code pads);
  - ImageNet-style random-resized crop ("inception crop", Szegedy et al. 2015): a box of random
    area and aspect ratio, resized back to a fixed size (images only);
  - random horizontal flip (images only);
  - mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018, arXiv:1710.09412)
    and cutmix (Yun et al., "CutMix", ICCV 2019, arXiv:1905.04899): each example is mixed with its
    neighbour in the batch (`roll` by one, as big_vision does) with one lambda ~ Beta(alpha, alpha)
    per batch. Labels: the batch gains `mix_label` (the partner's label) and `mix_lambda` (the
    weight of `label`); `mixed_loss` turns any method's loss into lambda * loss(label) +
    (1 - lambda) * loss(mix_label), which is the mixed cross-entropy of both papers for the CE term
    and leaves the label-free distillation terms unchanged.

Teacher and student see the *same* view by default: "consistent teaching" (Beyer et al., "Knowledge
distillation: A good teacher is patient and consistent", CVPR 2022, arXiv:2106.05237), which they show
matters for distillation ("function matching": the same mixup + inception-crop view for both);
`teacher_view="independent"` draws a second view (crop, flip and mix) for the teacher, the setup they
compare against. Running on the device keeps the host pipeline a pure gather of uint8 arrays.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from kd.errors import ConfigError

DEFAULT_RRC_SCALE = (0.08, 1.0)  # Fraction of the image's area (Szegedy et al. 2015; torchvision).
DEFAULT_RRC_RATIO = (3 / 4, 4 / 3)  # Width / height of the box.


def as_float(inputs: jax.Array) -> jax.Array:
  """uint8 images become floats in [0, 1], as the models read them (`kd.models`); floats stay."""
  if jnp.issubdtype(inputs.dtype, jnp.integer):
    return inputs.astype(jnp.float32) / 255.0
  return inputs


CROP_PADDING_MODES = ("zero", "reflect")


def random_crop(inputs_BxSxC: jax.Array, rng: jax.Array, padding: int, mode: str = "zero") -> jax.Array:
  """Pads every spatial axis by `padding` on each side, then crops back at a random offset.

  Works for [B, H, W, C] and [B, L, C]: each example gets its own offset per spatial axis.
  `mode` "zero" pads with zeros; "reflect" mirrors the border without repeating the edge
  (numpy's and torchvision's "reflect": [a b c] padded by 2 is [c b a b c b a]), which needs
  padding < each spatial size.
  """
  if padding == 0:
    return inputs_BxSxC
  if mode not in CROP_PADDING_MODES:
    raise ValueError(f"crop padding mode {mode!r}: choose one of {CROP_PADDING_MODES}")
  spatial = inputs_BxSxC.ndim - 2
  pad = [(0, 0)] + [(padding, padding)] * spatial + [(0, 0)]
  padded = jnp.pad(inputs_BxSxC, pad, mode="reflect" if mode == "reflect" else "constant")
  offsets = jax.random.randint(rng, (inputs_BxSxC.shape[0], spatial), 0, 2 * padding + 1)
  sizes = inputs_BxSxC.shape[1:]

  def crop(example, offset):
    return jax.lax.dynamic_slice(example, tuple(offset) + (0,), sizes)

  return jax.vmap(crop)(padded, offsets)


def random_flip(images_BxHxWxC: jax.Array, rng: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images_BxHxWxC.shape[0], 1, 1, 1))
  return jnp.where(flip, images_BxHxWxC[:, :, ::-1, :], images_BxHxWxC)


def _interpolation_weights(start: jax.Array, length: jax.Array, input_size: int,
                           output_size: int) -> jax.Array:
  """[output_size, input_size] bilinear (triangle, antialiased) weights reading only the window
  [start, start + length), each row normalised to sum 1: `jax.image.resize` of the window alone."""
  scale = output_size / length
  centres = (jnp.arange(output_size) + 0.5) / scale - 0.5 + start  # Output pixel centres, input coords.
  width = jnp.maximum(1.0, 1.0 / scale)  # Antialiasing widens the kernel when shrinking.
  positions = jnp.arange(input_size)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(positions[None, :] - centres[:, None]) / width)
  inside = (positions >= start) & (positions < start + length)
  weights = weights * inside[None, :]
  return weights / jnp.maximum(weights.sum(axis=1, keepdims=True), 1e-12)


def crop_and_resize(image_HxWxC: jax.Array, box: jax.Array, size: tuple[int, int]) -> jax.Array:
  """The box (top, left, height, width) of one image, bilinearly resized to `size` (traceable box).

  Equals `jax.image.resize(image[top:top + height, left:left + width], size + (C,), "linear")`: pixels
  outside the box never leak in. The box may be traced, so every example of a batch gets its own;
  two small matmuls do the work.
  """
  height, width = image_HxWxC.shape[:2]
  top, left, box_h, box_w = (box[i].astype(jnp.float32) for i in range(4))
  rows = _interpolation_weights(top, box_h, height, size[0])
  cols = _interpolation_weights(left, box_w, width, size[1])
  return jnp.einsum("yh,hwc,xw->yxc", rows, as_float(image_HxWxC), cols,
                    precision=jax.lax.Precision.HIGHEST)


def random_resized_crop_box(rng: jax.Array, height: int, width: int,
                            scale: tuple[float, float] = DEFAULT_RRC_SCALE,
                            ratio: tuple[float, float] = DEFAULT_RRC_RATIO,
                            attempts: int = 10) -> jax.Array:
  """A box (top, left, height, width), int32, as torchvision's `RandomResizedCrop.get_params`.

  Up to `attempts` boxes of area `uniform(scale) * H * W` and log-uniform aspect ratio in `ratio`
  are drawn at once; the first that fits is used, else the central crop of the whole image with its
  aspect ratio clamped to `ratio`.
  """
  area_rng, ratio_rng, top_rng, left_rng = jax.random.split(rng, 4)
  area = jax.random.uniform(area_rng, (attempts,), minval=scale[0], maxval=scale[1]) * height * width
  aspect = jnp.exp(jax.random.uniform(ratio_rng, (attempts,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  box_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  box_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (box_w > 0) & (box_h > 0) & (box_w <= width) & (box_h <= height)
  first = jnp.argmax(fits)
  # Fallback: the whole image, its aspect ratio clamped into `ratio` (static: the shape is known).
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fallback_w, fallback_h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    fallback_w, fallback_h = int(round(height * ratio[1])), height
  else:
    fallback_w, fallback_h = width, height
  found = fits.any()
  box_h = jnp.where(found, box_h[first], fallback_h)
  box_w = jnp.where(found, box_w[first], fallback_w)
  top = jnp.where(found, jnp.floor(jax.random.uniform(top_rng) * (height - box_h + 1)),
                  (height - fallback_h) // 2).astype(jnp.int32)
  left = jnp.where(found, jnp.floor(jax.random.uniform(left_rng) * (width - box_w + 1)),
                   (width - fallback_w) // 2).astype(jnp.int32)
  return jnp.stack([top, left, box_h, box_w])


def random_resized_crop(images_BxHxWxC: jax.Array, rng: jax.Array, size: tuple[int, int] | None = None,
                        scale: tuple[float, float] = DEFAULT_RRC_SCALE,
                        ratio: tuple[float, float] = DEFAULT_RRC_RATIO) -> jax.Array:
  """Inception crop of each image, resized to `size` (default: the input's): float32 [B, h, w, C].

  uint8 images come out as floats in [0, 1] (`as_float`); bilinear weights are convex, so values stay
  in the input's range.
  """
  _, height, width, _ = images_BxHxWxC.shape
  size = tuple(size) if size else (height, width)
  rngs = jax.random.split(rng, images_BxHxWxC.shape[0])
  boxes = jax.vmap(lambda r: random_resized_crop_box(r, height, width, tuple(scale), tuple(ratio)))(rngs)
  return jax.vmap(lambda image, box: crop_and_resize(image, box, size))(images_BxHxWxC, boxes)


def mixup(inputs_BxS: jax.Array, mix_lambda: jax.Array) -> jax.Array:
  """lambda * x_i + (1 - lambda) * x_{i-1}: each example mixed with its neighbour (float output)."""
  inputs = as_float(inputs_BxS)
  return mix_lambda * inputs + (1.0 - mix_lambda) * jnp.roll(inputs, 1, axis=0)


def cutmix_box(rng: jax.Array, height: int, width: int, mix_lambda: jax.Array) -> jax.Array:
  """A box (top, left, height, width) of area about (1 - lambda) * H * W at a uniform centre, clipped
  to the image (Yun et al. 2019, Algorithm A1)."""
  centre_rng_y, centre_rng_x = jax.random.split(rng)
  cut = jnp.sqrt(1.0 - mix_lambda)
  cut_h, cut_w = jnp.round(height * cut), jnp.round(width * cut)
  centre_y = jax.random.randint(centre_rng_y, (), 0, height)
  centre_x = jax.random.randint(centre_rng_x, (), 0, width)
  top = jnp.clip(centre_y - cut_h // 2, 0, height).astype(jnp.int32)
  bottom = jnp.clip(centre_y + cut_h - cut_h // 2, 0, height).astype(jnp.int32)
  left = jnp.clip(centre_x - cut_w // 2, 0, width).astype(jnp.int32)
  right = jnp.clip(centre_x + cut_w - cut_w // 2, 0, width).astype(jnp.int32)
  return jnp.stack([top, left, bottom - top, right - left])


def cutmix(images_BxHxWxC: jax.Array, rng: jax.Array,
           mix_lambda: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pastes one box of each example's neighbour (`roll` by one) into it.

  Returns:
    (images, lambda): the mixed float images and the exact weight of the original label, 1 - the
    box's area over the image's (the box is clipped at the border, so it differs from the drawn one).
  """
  images = as_float(images_BxHxWxC)
  _, height, width, _ = images.shape
  top, left, box_h, box_w = cutmix_box(rng, height, width, mix_lambda)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
  mixed = jnp.where(inside[None, :, :, None], jnp.roll(images, 1, axis=0), images)
  return mixed, 1.0 - (box_h * box_w) / (height * width)


def mix(batch, rng: jax.Array, *, input_key: str, mixup_alpha: float, cutmix_alpha: float):
  """Mixup or cutmix of the batch (one of the two at random when both alphas are > 0).

  Adds `mix_label` (each example's partner's label) and `mix_lambda` (a scalar, the weight of
  `label`); see `mixed_loss`.
  """
  choice_rng, mixup_rng, cutmix_rng, box_rng = jax.random.split(rng, 4)
  inputs = batch[input_key]
  candidates = []
  if mixup_alpha > 0:
    mixup_lambda = jax.random.beta(mixup_rng, mixup_alpha, mixup_alpha)
    candidates.append((mixup(inputs, mixup_lambda), mixup_lambda))
  if cutmix_alpha > 0:
    candidates.append(cutmix(inputs, box_rng, jax.random.beta(cutmix_rng, cutmix_alpha, cutmix_alpha)))
  if len(candidates) == 2:  # As timm's `switch_prob=0.5`: one method per batch.
    use_cutmix = jax.random.bernoulli(choice_rng)
    mixed, mix_lambda = jax.tree.map(lambda a, b: jnp.where(use_cutmix, b, a), *candidates)
  else:
    mixed, mix_lambda = candidates[0]
  mix_lambda = jnp.asarray(mix_lambda, jnp.float32)
  return {**batch, input_key: mixed, "mix_label": jnp.roll(batch["label"], 1, axis=0),
          "mix_lambda": mix_lambda}


def augment(batch, rng: jax.Array, *, input_key: str, crop_padding: int, flip: bool,
            crop_padding_mode: str = "zero", random_resized_crop_size: tuple[int, int] | None = None,
            rrc_scale: tuple[float, float] = DEFAULT_RRC_SCALE,
            rrc_ratio: tuple[float, float] = DEFAULT_RRC_RATIO,
            mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
  """One random view of `batch`: crop, inception crop, flip, then mixup/cutmix.

  Other entries (labels, index) are unchanged; mixing adds `mix_label` and `mix_lambda`.
  `random_resized_crop_size` None leaves the inception crop out.
  """
  crop_rng, rrc_rng, flip_rng, mix_rng = jax.random.split(rng, 4)
  inputs = random_crop(batch[input_key], crop_rng, crop_padding, crop_padding_mode)
  if random_resized_crop_size is not None:
    inputs = random_resized_crop(inputs, rrc_rng, random_resized_crop_size, rrc_scale, rrc_ratio)
  if flip and inputs.ndim == 4:
    inputs = random_flip(inputs, flip_rng)
  batch = {**batch, input_key: inputs}
  if mixup_alpha > 0 or cutmix_alpha > 0:
    batch = mix(batch, mix_rng, input_key=input_key, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
  return batch


def views(batch, rng: jax.Array, *, input_key: str, crop_padding: int, flip: bool,
          teacher_view: str, **augment_kwargs) -> tuple[dict, dict]:
  """(student batch, teacher batch): the same view, or two independent ones.

  `augment_kwargs` are `augment`'s padding-mode, inception-crop and mixing arguments.
  """
  if not is_active(crop_padding=crop_padding, flip=flip, **augment_kwargs):
    return batch, batch
  student_rng, teacher_rng = jax.random.split(rng)
  kwargs = dict(input_key=input_key, crop_padding=crop_padding, flip=flip, **augment_kwargs)
  student_batch = augment(batch, student_rng, **kwargs)
  if teacher_view == "same":
    return student_batch, student_batch
  return student_batch, augment(batch, teacher_rng, **kwargs)


def is_active(*, crop_padding: int = 0, flip: bool = False, random_resized_crop_size=None,
              mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, **unused) -> bool:
  """Whether these settings change the batch at all."""
  del unused
  return bool(crop_padding or flip or random_resized_crop_size is not None or mixup_alpha > 0
              or cutmix_alpha > 0)


def views_from_config(augment_config, input_key: str,
                      input_shape: tuple[int, ...]) -> Callable[..., tuple[dict, dict]] | None:
  """`views` bound to a `data.augment` config block, or None when it augments nothing.

  The inception crop resizes back to the dataset's own height and width, so evaluation and the
  teacher see inputs of the shape they expect. Raises ConfigError for image-only options on
  non-image inputs (called before anything compiles).
  """
  is_image = len(input_shape) == 3
  for key in ("random_resized_crop", "flip"):
    if augment_config[key] and not is_image:
      raise ConfigError(f"data.augment.{key}=True needs images [H, W, C], but the dataset's "
                        f"{input_key!r} has shape {tuple(input_shape)}: set it to False")
  if augment_config.cutmix_alpha > 0 and not is_image:
    raise ConfigError(f"data.augment.cutmix_alpha={augment_config.cutmix_alpha} needs images [H, W, C], "
                      f"but the dataset's {input_key!r} has shape {tuple(input_shape)}: set it to 0 "
                      "(mixup_alpha works on any input)")
  mode = augment_config.get("crop_padding_mode", "zero")
  if mode not in CROP_PADDING_MODES:
    raise ConfigError(f"data.augment.crop_padding_mode={mode!r}: choose one of {CROP_PADDING_MODES}")
  if mode == "reflect" and augment_config.crop_padding >= min(input_shape[:-1]):
    raise ConfigError(f"data.augment.crop_padding={augment_config.crop_padding} with crop_padding_mode='reflect' "
                      f"must be smaller than the inputs' spatial size {tuple(input_shape[:-1])}: lower it, or "
                      "use crop_padding_mode='zero'")
  kwargs = dict(crop_padding=augment_config.crop_padding, flip=augment_config.flip, crop_padding_mode=mode,
                random_resized_crop_size=tuple(input_shape[:2]) if augment_config.random_resized_crop else None,
                rrc_scale=tuple(augment_config.rrc_scale), rrc_ratio=tuple(augment_config.rrc_ratio),
                mixup_alpha=float(augment_config.mixup_alpha), cutmix_alpha=float(augment_config.cutmix_alpha))
  if not is_active(**kwargs):
    return None
  return lambda batch, rng: views(batch, rng, input_key=input_key,
                                  teacher_view=augment_config.teacher_view, **kwargs)


def mixed_loss(loss_fn):
  """Wraps a method's `loss(student_out, teacher_out, batch)` for mixed batches.

  On a batch with `mix_label`: lambda * loss(label) + (1 - lambda) * loss(mix_label), terms likewise.
  The label-free terms (the KD divergence on the teacher's view of the same mixed input) are the same
  in both calls, so they come out unchanged; every label term becomes the mixed cross-entropy
  lambda * CE(y_i) + (1 - lambda) * CE(y_{i-1}) of Zhang et al. 2018 / Yun et al. 2019. Batches
  without mixing go straight through.
  """

  def loss(student_out, teacher_out, batch):
    if "mix_label" not in batch:
      return loss_fn(student_out, teacher_out, batch)
    mix_lambda = batch["mix_lambda"]
    plain = {k: v for k, v in batch.items() if k not in ("mix_label", "mix_lambda")}
    first = loss_fn(student_out, teacher_out, plain)
    second = loss_fn(student_out, teacher_out, {**plain, "label": batch["mix_label"]})
    return jax.tree.map(lambda a, b: mix_lambda * a + (1.0 - mix_lambda) * b, first, second)

  return loss


def accuracy(logits_BxK: jax.Array, batch) -> jax.Array:
  """Top-1 accuracy; on a mixed batch, lambda * acc(label) + (1 - lambda) * acc(mix_label)."""
  predicted = jnp.argmax(logits_BxK, -1)
  correct = jnp.mean(predicted == batch["label"])
  if "mix_label" not in batch:
    return correct
  mix_lambda = batch["mix_lambda"]
  return mix_lambda * correct + (1.0 - mix_lambda) * jnp.mean(predicted == batch["mix_label"])
