"""On-device augmentation: crops, flips, and the teacher's view (consistent or independent)."""

import functools
import os
import re

import jax
import numpy as np
import pytest

from conftest import REPO
from kd import augment
from kd import config as config_lib
from kd import experiment
from kd import methods
from kd import models
from kd import train
from kd.errors import ConfigError


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


def test_reflect_padding_mirrors_without_the_edge_as_torchvision():
  # torchvision's Pad(padding_mode="reflect") is numpy's "reflect": [1 2 3] padded by 2 is [3 2 1 2 3 2 1].
  row = np.array([1, 2, 3], np.float32).reshape(1, 3, 1)
  padded = {tuple(np.asarray(augment.random_crop(row, jax.random.PRNGKey(seed), 2, "reflect"))[0, :, 0])
            for seed in range(40)}
  assert padded <= {(3, 2, 1), (2, 1, 2), (1, 2, 3), (2, 3, 2)}  # The windows of [3 2 1 2 3 2 1].
  assert (2, 1, 2) in padded and (2, 3, 2) in padded  # Windows that only reflection (no zeros) gives.
  images, padding = _images(), 2
  cropped = np.asarray(augment.random_crop(images, jax.random.PRNGKey(0), padding, "reflect"))
  reflected = np.pad(images, [(0, 0), (padding, padding), (padding, padding), (0, 0)], mode="reflect")
  for example, crop in zip(reflected, cropped):
    assert any(np.array_equal(example[dy:dy + 6, dx:dx + 6], crop)
               for dy in range(2 * padding + 1) for dx in range(2 * padding + 1))
  assert (cropped > 0).all()  # _images has no zeros, and reflection adds none.


def test_crop_padding_mode_is_checked_before_compiling():
  config = config_lib.base_config().data.augment
  config.crop_padding, config.crop_padding_mode = 8, "reflect"
  with pytest.raises(ConfigError, match="smaller than the inputs' spatial size"):
    augment.views_from_config(config, "image", (8, 8, 1))
  config.crop_padding = 4
  assert augment.views_from_config(config, "image", (8, 8, 1)) is not None
  quickstart = experiment.load_config(os.path.join(REPO, "experiments", "quickstart.py"), "smoke", validate=False)
  quickstart.data.augment.crop_padding_mode = "edge"
  with pytest.raises(ConfigError, match=re.escape("data.augment.crop_padding_mode='edge': choose one of")):
    config_lib.validate(quickstart)


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


def test_crop_and_resize_equals_resizing_the_window():
  image = _images(batch=1, size=12, channels=3)[0]
  box = np.array([2, 3, 6, 8])  # top, left, height, width
  resized = augment.crop_and_resize(image, box, (12, 12))
  expected = jax.image.resize(image[2:8, 3:11].astype(np.float32) / 255, (12, 12, 3), "linear")
  np.testing.assert_allclose(resized, expected, atol=1e-5)
  shrunk = augment.crop_and_resize(image, np.array([1, 0, 10, 12]), (4, 5))  # Antialiased, as resize.
  expected = jax.image.resize(image[1:11].astype(np.float32) / 255, (4, 5, 3), "linear")
  np.testing.assert_allclose(shrunk, expected, atol=1e-5)
  whole = augment.crop_and_resize(image, np.array([0, 0, 12, 12]), (12, 12))
  np.testing.assert_allclose(whole, image / 255, atol=1e-6)  # The whole image at its size: identity.


def test_random_resized_crop_boxes_respect_scale_and_ratio():
  boxes = np.asarray(jax.jit(jax.vmap(lambda r: augment.random_resized_crop_box(r, 64, 48, (0.25, 0.5), (0.5, 2.0))))(
      jax.random.split(jax.random.PRNGKey(0), 300)))
  top, left, height, width = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (top + height <= 64).all() and (left + width <= 48).all()
  area = height * width / (64 * 48)
  assert area.min() > 0.23 and area.max() < 0.52  # Rounding to whole pixels moves it a little.
  assert (width / height).min() > 0.45 and (width / height).max() < 2.2
  assert len({tuple(b) for b in boxes}) > 250  # Every example its own box.
  # No box of area 2x the image fits: the fallback is the whole image, central.
  np.testing.assert_array_equal(jax.jit(augment.random_resized_crop_box, static_argnums=(1, 2, 3))(
                                    jax.random.PRNGKey(0), 10, 10, (2.0, 3.0)),
                                [0, 0, 10, 10])


def test_random_resized_crop_output_shape_and_range():
  images = _images(batch=6, size=16, channels=3)
  crop = jax.jit(augment.random_resized_crop, static_argnums=2)
  out = np.asarray(crop(images, jax.random.PRNGKey(1), (20, 24)))
  assert out.shape == (6, 20, 24, 3) and out.dtype == np.float32
  for example, crop in zip(images, out):  # Bilinear weights are convex: the input's range.
    assert example.min() / 255 - 1e-6 <= crop.min() and crop.max() <= example.max() / 255 + 1e-6
  assert jax.eval_shape(augment.random_resized_crop, images, jax.random.PRNGKey(1)).shape == (6, 16, 16, 3)


def test_mixup_of_two_known_images():
  images = np.stack([np.full((2, 2, 1), 255, np.uint8), np.zeros((2, 2, 1), np.uint8)])
  mixed = np.asarray(augment.mixup(images, 0.3))
  # Example 0 is mixed with example 1 (roll by one) and example 1 with example 0.
  np.testing.assert_allclose(mixed[0], 0.3 * 1.0 + 0.7 * 0.0)
  np.testing.assert_allclose(mixed[1], 0.3 * 0.0 + 0.7 * 1.0)


def test_cutmix_box_area_is_one_minus_lambda():
  images = np.stack([np.ones((20, 20, 1), np.float32), np.zeros((20, 20, 1), np.float32)])
  for seed, mix_lambda in enumerate([0.19, 0.36, 0.75, 0.91]):
    mixed, exact = augment.cutmix(images, jax.random.PRNGKey(seed), mix_lambda)
    pasted = 1.0 - np.asarray(mixed[0]).mean()  # Pixels of example 0 that came from example 1.
    np.testing.assert_allclose(pasted, 1.0 - exact, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mixed[1]).mean(), 1.0 - exact, atol=1e-6)
  # A box that fits (centre in the middle: no clipping) has the requested area exactly.
  box = augment.cutmix_box(jax.random.PRNGKey(0), 20, 20, 0.36)
  centre = np.asarray(box[:2]) + np.asarray(box[2:]) // 2
  if (np.asarray(box[:2]) > 0).all() and (np.asarray(box[:2]) + np.asarray(box[2:]) < 20).all():
    assert int(box[2]) * int(box[3]) == 64 and (centre >= 0).all()


def test_mix_labels_and_consistent_view():
  batch = {"image": _images(batch=4, size=8), "label": np.array([0, 1, 2, 3], np.int32)}
  kwargs = dict(input_key="image", crop_padding=0, flip=False, random_resized_crop_size=(8, 8), mixup_alpha=0.4,
                cutmix_alpha=1.0)

  def both(rng):  # One compile for both settings; the independent views shown on the inception crop.
    crop_only = {**kwargs, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}
    return (augment.views(batch, rng, teacher_view="same", **kwargs),
            augment.views(batch, rng, teacher_view="independent", **crop_only))

  (student, teacher), (student_alone, teacher_alone) = jax.jit(both)(jax.random.PRNGKey(0))
  for key in student:  # Consistent teaching: one view.
    np.testing.assert_array_equal(student[key], teacher[key])
  np.testing.assert_array_equal(student["mix_label"], [3, 0, 1, 2])
  assert 0 <= float(student["mix_lambda"]) <= 1
  assert not np.allclose(student_alone["image"], teacher_alone["image"])


def test_mixed_loss_weights_the_label_terms_by_lambda():
  logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]], np.float32))
  loss_fn = methods.build_loss(methods.method_config("supervised"))
  batch = {"label": np.array([0, 1]), "mix_label": np.array([1, 0]), "mix_lambda": np.float32(0.25)}
  loss, terms = augment.mixed_loss(loss_fn)({"logits": logits}, None, batch)
  ce_a = -(np.log(0.7) + np.log(0.6)) / 2
  ce_b = -(np.log(0.2) + np.log(0.1)) / 2
  np.testing.assert_allclose(loss, 0.25 * ce_a + 0.75 * ce_b, rtol=1e-5)
  np.testing.assert_allclose(augment.accuracy(logits, batch), 0.25 * 1.0 + 0.75 * 0.0)
  plain = {"label": batch["label"]}
  np.testing.assert_allclose(augment.mixed_loss(loss_fn)({"logits": logits}, None, plain)[0], ce_a, rtol=1e-5)


def test_function_matching_step_kd_is_zero_with_one_view():
  """Mixup + inception crop on one view: a teacher identical to the student gives KD = 0."""
  mlp = models.build_model(models.model_config("mlp", hidden=(16,)), 10)
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(), 10)
  batch = {"image": _images(batch=16, size=8, channels=1), "label": np.arange(16, dtype=np.int32) % 10}
  state = train.init_train_state(jax.random.PRNGKey(0), batch, module=mlp, optimizer=optimizer)
  apply = models.make_apply(mlp)
  config = config_lib.base_config().data.augment
  config.update(random_resized_crop=True, mixup_alpha=1.0, flip=True)
  step = jax.jit(functools.partial(
      train.train_step, student_apply=apply, teacher_apply=apply, optimizer=optimizer, learning_rate=schedule,
      make_views=augment.views_from_config(config, "image", (8, 8, 1)),
      loss_fn=methods.build_loss(methods.method_config("hinton_kd"))))
  _, metrics = step(state, {"params": state.params["student"]}, batch)
  assert abs(float(metrics["kd"])) < 1e-6 and float(metrics["ce"]) > 0  # (independent views: see above)
  assert 0 <= float(metrics["accuracy"]) <= 1


def test_image_only_augmentation_on_signals_is_a_config_error():
  config = config_lib.base_config().data.augment
  config.cutmix_alpha = 1.0
  with pytest.raises(ConfigError, match="cutmix_alpha"):
    augment.views_from_config(config, "signal", (40, 1))
  assert augment.views_from_config(config_lib.base_config().data.augment, "image", (8, 8, 1)) is None


@pytest.mark.parametrize("key,value,message", [
    ("rrc_scale", (0.5, 0.2), "rrc_scale=(0.5, 0.2) must be a pair (low, high) with 0 < low <= high <= 1"),
    ("rrc_scale", (0.5, 1.5), "<= 1"),
    ("rrc_ratio", (0.0, 1.0), "rrc_ratio=(0.0, 1.0) must be a pair"),
    ("mixup_alpha", -0.2, "data.augment.mixup_alpha=-0.2 must be >= 0"),
    ("cutmix_alpha", float("nan"), "data.augment.cutmix_alpha=nan must be >= 0"),
])
def test_bad_augment_values_are_config_errors(key, value, message):
  config = experiment.load_config(os.path.join(REPO, "experiments", "quickstart.py"), "smoke", validate=False)
  config.data.augment[key] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    config_lib.validate(config)
