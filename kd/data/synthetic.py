"""Synthetic image classification of any shape, prepared offline: for benchmarks and tests.

The name says the shape: `synthetic/<H>x<W>x<C>_<classes>_<train examples>`, e.g.
`synthetic/32x32x3_100_2048` (CIFAR-100-shaped). Each class is a fixed random uint8 template; an
example is its class's template plus noise, so the task is learnable but not trivial. The test split
has a quarter as many examples as train.
"""

import re

import numpy as np
import tensorflow_datasets as tfds

NAME_PATTERN = re.compile(r"^(\d+)x(\d+)x(\d+)_(\d+)_(\d+)$")
NOISE = 48.0  # Standard deviation of the per-pixel noise, on the uint8 scale.


class SyntheticConfig(tfds.core.BuilderConfig):
  """A shape, a number of classes and a number of training examples, parsed from the config name."""

  def __init__(self, name: str):
    match = NAME_PATTERN.match(name)
    if not match:
      raise ValueError(f"synthetic dataset name {name!r} must look like 32x32x3_100_2048 "
                       "(height x width x channels _ classes _ train examples)")
    super().__init__(name=name, version=tfds.core.Version("1.0.0"))
    height, width, channels, classes, examples = (int(group) for group in match.groups())
    self.shape = (height, width, channels)
    self.num_classes = classes
    self.num_train = examples


class Synthetic(tfds.core.GeneratorBasedBuilder):
  """Class templates plus noise; see the module docstring."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [SyntheticConfig("8x8x1_10_512"), SyntheticConfig("32x32x3_100_2048")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=self.builder_config.shape, dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=self.builder_config.num_classes),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    config = self.builder_config
    templates = np.random.default_rng(0).integers(0, 256, size=(config.num_classes,) + config.shape)
    return {
        "train": self._generate_examples(templates, config.num_train, seed=1),
        "test": self._generate_examples(templates, max(config.num_train // 4, 1), seed=2),
    }

  def _generate_examples(self, templates, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for index in range(count):
      label = index % len(templates)
      image = np.clip(templates[label] + rng.normal(0, NOISE, templates[label].shape), 0, 255)
      yield index, {"image": image.astype(np.uint8), "label": label}
