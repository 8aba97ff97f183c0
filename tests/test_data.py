"""The offline digits builder and the TFDS + Grain pipeline, also on catalog datasets (mock data)."""

import numpy as np
import pytest
from sklearn import datasets as sklearn_datasets
import tensorflow_datasets as tfds

from kd import data
from kd.data import digits
from kd.data import pipeline
from kd.errors import DataError


def test_digits_builder_splits_every_example_once_stratified():
  spec = data.load_spec("digits")
  assert spec.split_sizes == {"train": 1438, "test": 359}
  assert (spec.input_key, spec.input_shape, spec.input_dtype, spec.num_classes) == ("image", (8, 8, 1), "uint8", 10)
  train, test = data.load_arrays("digits", "train"), data.load_arrays("digits", "test")
  assert train["image"].shape == (1438, 8, 8, 1) and train["image"].dtype == np.uint8
  assert train["image"].max() == 240  # 16 grey levels x 15.
  # Every class is split 80/20, and the two splits are disjoint.
  for label in range(10):
    in_test, in_train = np.sum(test["label"] == label), np.sum(train["label"] == label)
    assert abs(in_test / (in_test + in_train) - 0.2) < 0.01
  labels = sklearn_datasets.load_digits().target
  indices_train, indices_test = digits.stratified_split(labels, 0.2, 0)
  assert not set(indices_train) & set(indices_test)
  assert len(indices_train) + len(indices_test) == 1797


def test_slices_carve_a_validation_set_from_train():
  head, tail = data.load_arrays("digits", "train[:90%]"), data.load_arrays("digits", "train[90%:]")
  whole = data.load_arrays("digits", "train")
  assert len(head["label"]) + len(tail["label"]) == 1438
  np.testing.assert_array_equal(np.concatenate([head["image"], tail["image"]]), whole["image"])


def _labels(iterator, steps):
  return np.stack([next(iterator)["label"] for _ in range(steps)])


def test_the_example_order_is_a_function_of_the_seed():
  arrays = data.load_arrays("digits", "train")
  first = _labels(data.train_iterator(arrays, batch_size=32, seed=0), 50)
  again = _labels(data.train_iterator(arrays, batch_size=32, seed=0, prefetch=0), 50)
  other = _labels(data.train_iterator(arrays, batch_size=32, seed=1), 50)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_each_epoch_visits_every_example_once_in_a_new_order():
  arrays = {"image": np.arange(10, dtype=np.uint8)[:, None], "label": np.arange(10, dtype=np.int32)}
  iterator = data.train_iterator(arrays, batch_size=5, seed=0)
  epochs = [np.concatenate([next(iterator)["label"] for _ in range(2)]) for _ in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(10))
  assert not np.array_equal(epochs[0], epochs[1])


def test_iterator_state_resumes_at_the_next_batch():
  arrays = data.load_arrays("digits", "train")
  iterator = data.train_iterator(arrays, batch_size=64, seed=3)
  for _ in range(30):  # Into the second epoch.
    next(iterator)
  state = iterator.get_state()
  expected = _labels(iterator, 5)
  resumed = data.train_iterator(arrays, batch_size=64, seed=3)
  resumed.set_state(state)
  np.testing.assert_array_equal(_labels(resumed, 5), expected)


def test_process_shards_partition_each_global_batch():
  arrays = {"image": np.arange(64, dtype=np.uint8)[:, None], "label": np.arange(64, dtype=np.int32)}
  whole = next(data.train_iterator(arrays, batch_size=16, seed=0))["label"]
  parts = [next(data.train_iterator(arrays, batch_size=16, seed=0, shard_index=i, shard_count=2))["label"]
           for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_eval_batches_cover_each_example_once_with_a_mask():
  arrays = {"image": np.arange(10, dtype=np.uint8)[:, None], "label": np.arange(10, dtype=np.int32)}
  batches = list(data.eval_batches(arrays, 4))
  assert [b["label"].shape for b in batches] == [(4,)] * 3
  np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), np.arange(10))
  assert batches[-1]["mask"].sum() == 2


def test_batch_larger_than_the_split_is_an_error():
  arrays = {"image": np.zeros((10, 1), np.uint8), "label": np.zeros(10, np.int32)}
  with pytest.raises(DataError, match="larger than the split"):
    data.train_iterator(arrays, batch_size=11, seed=0)


@pytest.mark.parametrize("name,shape,classes", [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10)])
def test_catalog_datasets_go_through_the_same_path(name, shape, classes):
  with tfds.testing.mock_data(num_examples=48):
    spec = data.load_spec(name)
    assert spec.input_shape == shape and spec.num_classes == classes
    arrays = data.load_arrays(name, "train")
  assert arrays["image"].shape == (48,) + shape and arrays["image"].dtype == np.uint8
  assert arrays["label"].min() >= 0 and arrays["label"].max() < classes
  batch = next(data.train_iterator(arrays, batch_size=16, seed=0))
  assert batch["image"].shape == (16,) + shape


def test_synthetic_datasets_of_any_shape():
  spec = data.load_spec("synthetic/4x6x3_7_70")
  assert spec.input_shape == (4, 6, 3) and spec.num_classes == 7
  assert spec.split_sizes == {"train": 70, "test": 17}
  train = data.load_arrays("synthetic/4x6x3_7_70", "train")
  assert sorted(np.unique(train["label"])) == list(range(7))
  # Examples of a class are closer to each other than to other classes (the task is learnable).
  images, labels = train["image"].reshape(70, -1).astype(np.float32), train["label"]
  pairs = [(i, j) for i in range(70) for j in range(i + 1, 70)]
  same = np.mean([np.linalg.norm(images[i] - images[j]) for i, j in pairs if labels[i] == labels[j]])
  other = np.mean([np.linalg.norm(images[i] - images[j]) for i, j in pairs if labels[i] != labels[j]])
  assert same < 0.8 * other
  with pytest.raises(DataError, match="must look like"):
    data.load_spec("synthetic/big")


def test_mnist1d_is_generated_offline_with_its_published_sizes():
  spec = data.load_spec("mnist1d")
  assert spec.split_sizes == {"train": 4000, "test": 1000}
  assert (spec.input_key, spec.input_shape, spec.input_dtype) == ("signal", (40, 1), "float32")
  test = data.load_arrays("mnist1d", "test")
  assert test["signal"].shape == (1000, 40, 1) and np.isfinite(test["signal"]).all()
  assert sorted(np.unique(test["label"])) == list(range(10))


def test_image_size_resizes_the_shorter_side_then_crops_the_centre():
  image = np.zeros((4, 16, 3), np.uint8)
  image[:, 4:12] = 200  # A bright band in the middle half of the width.
  resized = pipeline.resize_image(image, 2)  # 4x16 -> 2x8, then the central 2x2: inside the band.
  assert resized.shape == (2, 2, 3)
  np.testing.assert_array_equal(resized, 200)
  grey = pipeline.resize_image(np.full((5, 3, 1), 7, np.uint8), 6)  # Upsampled; one channel kept.
  assert grey.shape == (6, 6, 1) and (grey == 7).all()


def test_datasets_of_varying_image_sizes_need_an_image_size():
  with tfds.testing.mock_data(num_examples=6):
    with pytest.raises(DataError, match="set data.image_size"):
      data.load_spec("oxford_flowers102")
    arrays = data.load_arrays("oxford_flowers102", "train", image_size=24)
  assert arrays["image"].shape == (6, 24, 24, 3) and arrays["image"].dtype == np.uint8


def test_device_prefetch_resumes_after_the_last_returned_batch():
  arrays = {"image": np.arange(24, dtype=np.uint8)[:, None], "label": np.arange(24, dtype=np.int32)}
  prefetched = data.DevicePrefetch(data.train_iterator(arrays, batch_size=4, seed=2), lambda batch: batch, size=3)
  for _ in range(4):
    next(prefetched)
  state = prefetched.get_state()  # The thread has prepared more batches by now; they are not counted.
  expected = [next(prefetched)["index"] for _ in range(2)]
  prefetched.close()
  resumed = data.DevicePrefetch(data.train_iterator(arrays, batch_size=4, seed=2), lambda batch: batch)
  resumed.set_state(state)
  np.testing.assert_array_equal([next(resumed)["index"] for _ in range(2)], expected)
  resumed.close()
  plain = data.train_iterator(arrays, batch_size=4, seed=2)
  np.testing.assert_array_equal([next(plain)["index"] for _ in range(6)][4:], expected)
