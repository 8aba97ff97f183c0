"""Batch augmentation on the device, inside the jitted train step.

Label-preserving views of a batch of images [B, H, W, C] or signals [B, L, C]:
  - random crop after zero padding (`crop_padding` pixels or samples on each side), the CIFAR recipe
    (He et al. 2016) and its 1-D form (a random shift, as MNIST-1D's translations);
  - random horizontal flip (images only).

Teacher and student see the *same* view by default: "consistent teaching" (Beyer et al., "Knowledge
distillation: A good teacher is patient and consistent", CVPR 2022, arXiv:2106.05237), which they show
matters for distillation; `teacher_view="independent"` draws a second view for the teacher, the setup
they compare against. Running on the device keeps the host pipeline a pure gather of uint8 arrays.
"""

import jax
import jax.numpy as jnp


def random_crop(inputs_BxSxC: jax.Array, rng: jax.Array, padding: int) -> jax.Array:
  """Pads every spatial axis by `padding` zeros on each side, then crops back at a random offset.

  Works for [B, H, W, C] and [B, L, C]: each example gets its own offset per spatial axis.
  """
  if padding == 0:
    return inputs_BxSxC
  spatial = inputs_BxSxC.ndim - 2
  pad = [(0, 0)] + [(padding, padding)] * spatial + [(0, 0)]
  padded = jnp.pad(inputs_BxSxC, pad)
  offsets = jax.random.randint(rng, (inputs_BxSxC.shape[0], spatial), 0, 2 * padding + 1)
  sizes = inputs_BxSxC.shape[1:]

  def crop(example, offset):
    return jax.lax.dynamic_slice(example, tuple(offset) + (0,), sizes)

  return jax.vmap(crop)(padded, offsets)


def random_flip(images_BxHxWxC: jax.Array, rng: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images_BxHxWxC.shape[0], 1, 1, 1))
  return jnp.where(flip, images_BxHxWxC[:, :, ::-1, :], images_BxHxWxC)


def augment(batch, rng: jax.Array, *, input_key: str, crop_padding: int, flip: bool):
  """One random view of `batch` (other entries, e.g. labels, unchanged)."""
  crop_rng, flip_rng = jax.random.split(rng)
  inputs = random_crop(batch[input_key], crop_rng, crop_padding)
  if flip and inputs.ndim == 4:
    inputs = random_flip(inputs, flip_rng)
  return {**batch, input_key: inputs}


def views(batch, rng: jax.Array, *, input_key: str, crop_padding: int, flip: bool,
          teacher_view: str) -> tuple[dict, dict]:
  """(student batch, teacher batch): the same view, or two independent ones."""
  if crop_padding == 0 and not flip:
    return batch, batch
  student_rng, teacher_rng = jax.random.split(rng)
  student_batch = augment(batch, student_rng, input_key=input_key, crop_padding=crop_padding, flip=flip)
  if teacher_view == "same":
    return student_batch, student_batch
  return student_batch, augment(batch, teacher_rng, input_key=input_key, crop_padding=crop_padding,
                                flip=flip)
