"""scikit-learn's handwritten digits as a TFDS dataset, prepared offline.

1797 grey-scale 8x8 images of the digits 0-9 (the UCI "optical recognition of handwritten
digits" test set, as shipped inside scikit-learn, so no download is needed). Pixel values 0..16
are stored as uint8 0..240 (x15), height x width x channels like `mnist` or `cifar10` images, in
a raw `Tensor` feature: an `Image` feature would PNG-encode through TensorFlow when prepared.

Splits are a fixed, class-stratified permutation: 1438 train / 359 test (80/20 per class). Carve a
validation set from train with TFDS slicing, e.g. `train[:90%]` and `train[90%:]`.
"""

import numpy as np
import tensorflow_datasets as tfds

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # The split is part of the dataset's definition: never change it.


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
  """Returns (train_indices, test_indices), stratified by label, each sorted."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    num_test = int(round(len(members) * test_fraction))
    test.extend(members[:num_test])
    train.extend(members[num_test:])
  return np.sort(np.array(train)), np.sort(np.array(test))


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 1438/359 train/test split with seed 0."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
        citation="Alpaydin & Kaynak, Optical Recognition of Handwritten Digits, UCI, 1998.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    from sklearn import datasets as sklearn_datasets  # pylint: disable=g-import-not-at-top

    digits = sklearn_datasets.load_digits()
    images = (digits.images * 15).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return {
        "train": self._generate_examples(images, labels, train),
        "test": self._generate_examples(images, labels, test),
    }

  def _generate_examples(self, images, labels, indices):
    for index in indices:
      yield int(index), {"image": images[index], "label": int(labels[index])}
