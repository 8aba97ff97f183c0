"""Byte-level text from the Python standard library's sources, as a TFDS dataset prepared offline.

The corpus is every top-level `.py` module of the running interpreter's standard library
(`sysconfig.get_paths()["stdlib"]/*.py`: `argparse.py`, `ast.py`, ...; packages such as
`collections/` are left out: about 170 files and 4.7 MB for CPython 3.11), so it exists on any machine with Python and needs no download.

Each file is cut into non-overlapping windows of `WINDOW` bytes; the last window of a file is
padded with zeros, and `mask` marks the real bytes (a prefix of the window). Examples:

    tokens  uint8 [WINDOW]   the bytes (a 256-symbol vocabulary)
    mask    bool  [WINDOW]   True for real bytes, False for padding

Splits are by file, so no file contributes to two splits: a file goes to train, validation or test
by the SHA-256 of its name (buckets 0-79, 80-89, 90-99 of the first 8 hex digits mod 100). The
split therefore depends only on the file names, not on the order the files are listed or on their
contents; the contents (and thus the sizes) follow the interpreter's version, recorded in the
dataset's description when prepared.
"""

import hashlib
import os
import sys
import sysconfig

import numpy as np
import tensorflow_datasets as tfds

WINDOW = 128
VOCAB_SIZE = 256  # Bytes: no special symbols.
SPLIT_BUCKETS = (("train", 0, 80), ("validation", 80, 90), ("test", 90, 100))


def split_of(file_name: str) -> str:
  """The split a file belongs to, from the SHA-256 of its name."""
  bucket = int(hashlib.sha256(file_name.encode()).hexdigest()[:8], 16) % 100
  for split, low, high in SPLIT_BUCKETS:
    if low <= bucket < high:
      return split
  raise AssertionError(bucket)


def source_files() -> list[str]:
  """The top-level `.py` modules of the standard library, sorted by name."""
  stdlib = sysconfig.get_paths()["stdlib"]
  return sorted(os.path.join(stdlib, name) for name in os.listdir(stdlib) if name.endswith(".py"))


def windows(content: bytes, length: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
  """Cuts bytes into [N, length] windows (zero-padded at the end) and their masks."""
  count = max(1, -(-len(content) // length))
  tokens = np.zeros(count * length, np.uint8)
  tokens[:len(content)] = np.frombuffer(content, np.uint8)
  mask = np.zeros(count * length, bool)
  mask[:len(content)] = True
  return tokens.reshape(count, length), mask.reshape(count, length)


class StdlibText(tfds.core.GeneratorBasedBuilder):
  """Byte windows of the Python standard library's top-level modules."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "128-byte windows of Lib/*.py, split 80/10/10 by SHA-256 of the file name."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{__doc__}\nPrepared from Python {sys.version.split()[0]}.",
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(WINDOW,), dtype=np.uint8),
            "mask": tfds.features.Tensor(shape=(WINDOW,), dtype=np.bool_),
        }),
        homepage="https://docs.python.org/3/library/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    by_split = {split: [] for split, _, _ in SPLIT_BUCKETS}
    for path in source_files():
      by_split[split_of(os.path.basename(path))].append(path)
    return {split: self._generate_examples(paths) for split, paths in by_split.items()}

  def _generate_examples(self, paths):
    for path in paths:
      with open(path, "rb") as f:
        tokens, mask = windows(f.read())
      name = os.path.basename(path)
      for index in range(len(tokens)):
        yield f"{name}:{index}", {"tokens": tokens[index], "mask": mask[index]}
