"""On-device augmentation: crops, flips, and the teacher's view (consistent or independent)."""

import functools

import jax
import numpy as np

from kd import augment
from kd import config as config_lib
from kd import methods
from kd import models
from kd import train


def _images(batch=8, size=6, channels=2, seed=0):
  return np.random.default_rng(seed).integers(1, 255, (batch, size, size, channels)).astype(np.uint8)


def test_random_crop_is_a_window_of_the_padded_input():
  images, padding = _images(), 2
  cropped = np.asarray(augment.random_crop(images, jax.random.PRNGKey(0), padding))
  assert cropped.shape == images.shape and cropped.dtype == images.dtype
  padded = np.pad(images, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
  offsets = set()
  for example, crop in zip(padded, cropped):
    matches = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
               if np.array_equal(example[dy:dy + 6, dx:dx + 6], crop)]
    assert matches, "every crop is a window of its padded image"
    offsets.add(matches[0])
  assert len(offsets) > 1  # Offsets differ across the batch.
  np.testing.assert_array_equal(augment.random_crop(images, jax.random.PRNGKey(0), 0), images)


def test_random_crop_of_signals_shifts_along_the_length():
  signals = np.arange(2 * 10, dtype=np.float32).reshape(2, 10, 1) + 1
  cropped = np.asarray(augment.random_crop(signals, jax.random.PRNGKey(3), 3))
  for signal, crop in zip(signals[:, :, 0], cropped[:, :, 0]):
    padded = np.pad(signal, 3)
    assert any(np.array_equal(padded[s:s + 10], crop) for s in range(7))


def test_random_flip_mirrors_about_half_the_images():
  images = _images(batch=400, seed=1)
  flipped = np.asarray(augment.random_flip(images, jax.random.PRNGKey(0)))
  mirrored = [np.array_equal(f, i[:, ::-1]) and not np.array_equal(f, i) for f, i in zip(flipped, images)]
  same = [np.array_equal(f, i) for f, i in zip(flipped, images)]
  assert all(m or s for m, s in zip(mirrored, same))
  assert 150 < sum(mirrored) < 250


def test_teacher_views_are_the_same_or_independent():
  batch = {"image": _images(), "label": np.arange(8)}
  kwargs = dict(input_key="image", crop_padding=2, flip=True)
  student, teacher = augment.views(batch, jax.random.PRNGKey(0), teacher_view="same", **kwargs)
  np.testing.assert_array_equal(student["image"], teacher["image"])
  assert not np.array_equal(student["image"], batch["image"])
  student, teacher = augment.views(batch, jax.random.PRNGKey(0), teacher_view="independent", **kwargs)
  assert not np.array_equal(student["image"], teacher["image"])
  again, _ = augment.views(batch, jax.random.PRNGKey(0), teacher_view="independent", **kwargs)
  np.testing.assert_array_equal(student["image"], again["image"])  # A function of the key.
  np.testing.assert_array_equal(student["label"], batch["label"])


def _kd_with_views(teacher_view):
  """KD term of one step where student and teacher are the same network: 0 iff they see one view."""
  mlp = models.build_model(models.model_config("mlp", hidden=(16,)), 10)
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(), 10)
  batch = {"image": _images(batch=16, size=8, channels=1), "label": np.arange(16, dtype=np.int32) % 10}
  state = train.init_train_state(jax.random.PRNGKey(0), batch, module=mlp, optimizer=optimizer)
  apply = models.make_apply(mlp)
  make_views = functools.partial(augment.views, input_key="image", crop_padding=2, flip=True,
                                 teacher_view=teacher_view)
  step = jax.jit(functools.partial(
      train.train_step, student_apply=apply, teacher_apply=apply, optimizer=optimizer,
      learning_rate=schedule, make_views=make_views,
      loss_fn=methods.build_loss(methods.method_config("hinton_kd"))))
  _, metrics = step(state, {"params": state.params["student"]}, batch)
  return float(metrics["kd"])


def test_consistent_teaching_shows_the_teacher_the_students_view():
  assert abs(_kd_with_views("same")) < 1e-6
  assert _kd_with_views("independent") > 1e-4
