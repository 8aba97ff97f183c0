"""Grain worker processes: the same batches in the same order as in-process loading."""

from absl import flags
import numpy as np
import pytest

from kd import data
from kd.errors import DataError


@pytest.fixture(autouse=True, scope="module")
def _flags_parsed():
  # Grain reads an absl flag when it starts workers; outside absl.app.run the flags are unparsed.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _batches(iterator, steps):
  batches = [next(iterator) for _ in range(steps)]
  return {key: np.stack([batch[key] for batch in batches]) for key in batches[0]}


def test_the_example_order_is_the_same_with_worker_processes():
  arrays = {"image": (np.arange(40, dtype=np.uint8)[:, None] * 3), "label": np.arange(40, dtype=np.int32) % 7}
  in_process = _batches(data.train_iterator(arrays, batch_size=8, seed=5), 12)  # Into the third epoch.
  iterator = data.train_iterator(arrays, batch_size=8, seed=5, workers=2)
  with_workers = _batches(iterator, 12)
  for key in ("index", "label", "image"):
    np.testing.assert_array_equal(with_workers[key], in_process[key])
  iterator.close()


def test_negative_workers_is_an_error():
  arrays = {"image": np.zeros((10, 1), np.uint8), "label": np.zeros(10, np.int32)}
  with pytest.raises(DataError, match="workers=-1 must be >= 0"):
    data.train_iterator(arrays, batch_size=2, seed=0, workers=-1)
