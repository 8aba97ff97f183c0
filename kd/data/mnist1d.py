"""MNIST-1D (Greydanus & Kobak 2020) as a TFDS dataset, generated offline by the `mnist1d` package.

10 classes of 1-D signals of length 40, made from the ten digit templates with random padding,
translation, scaling, shear, correlated noise and Gaussian noise, with the published default
arguments: 4000 train / 1000 test. The paper reports test accuracy of 32% for logistic regression,
68% for an MLP, 94% for a CNN and 91% for a GRU, so it separates architectures where MNIST does not.

Reference: S. Greydanus, D. Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024,
arXiv:2011.14439.
"""

import numpy as np
import tensorflow_datasets as tfds

LENGTH = 40


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D with the package's default generation arguments."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "mnist1d 0.0.2 defaults (seed 42): 4000 train, 1000 test."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "signal": tfds.features.Tensor(shape=(LENGTH, 1), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("signal", "label"),
        homepage="https://github.com/greydanus/mnist1d",
        citation="Greydanus & Kobak, Scaling Down Deep Learning with MNIST-1D, ICML 2024.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated locally.
    from mnist1d import data as mnist1d_data  # pylint: disable=g-import-not-at-top

    generated = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
    return {
        "train": self._generate_examples(generated["x"], generated["y"]),
        "test": self._generate_examples(generated["x_test"], generated["y_test"]),
    }

  def _generate_examples(self, signals, labels):
    for index, (signal, label) in enumerate(zip(signals, labels)):
      yield index, {"signal": signal.astype(np.float32)[:, None], "label": int(label)}
