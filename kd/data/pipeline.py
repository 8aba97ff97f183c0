"""TFDS + Grain input pipeline.

Every dataset, offline or from the TFDS catalog, goes the same way:
`tfds.data_source(name, split, data_dir)` (ArrayRecord, random access, no TensorFlow) -> a Grain
pipeline over example indices -> batches of numpy arrays.

The pipeline shuffles and batches *indices* (`grain.MapDataset.range`), then gathers each batch
of examples at once. The example order is therefore a function of the seed alone, the iterator's
whole state is one integer (saved in the checkpoint, so that a resumed run sees exactly the examples
an uninterrupted run would have seen), and a split that fits in memory is read from disk once.
"""

import dataclasses
import queue
import socket
import threading
from typing import Any, Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds

from kd.data.digits import Digits
from kd.data.mnist1d import Mnist1d
from kd.data.stdlib_text import StdlibText
from kd.data.synthetic import Synthetic
from kd.data.synthetic import SyntheticConfig
from kd.data import text_files
from kd.data.text_files import TextFiles
from kd.errors import DataError

# Datasets that `kd` builds on this machine from packages it installs: no download. A name may
# carry a config after a slash: `synthetic/32x32x3_100_2048`; `text_files/train=a.jsonl,tokenizer=...`
# (kd.data.text_files) reads local files.
OFFLINE_BUILDERS = {"digits": Digits, "mnist1d": Mnist1d, "synthetic": Synthetic, "stdlib_text": StdlibText,
                    "text_files": TextFiles}
# Token datasets (input "tokens", no "label"): the model predicts the next token over this vocabulary,
# unless the dataset's metadata names its own (`vocab_size`, a tokenizer's).
BYTE_VOCAB_SIZE = 256

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a model and a trainer must know about a prepared dataset."""

  name: str
  input_key: str  # The feature the model reads, e.g. "image".
  input_shape: tuple[int, ...]  # One example's shape, e.g. (8, 8, 1).
  input_dtype: str
  num_classes: int
  split_sizes: dict[str, int]


def _resolve_data_dir(data_dir: str) -> str | None:
  return data_dir or None  # None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).


# TFDS downloads through its Google Cloud Storage mirror first; without a route there its HTTP client
# retries for minutes before failing. One connection attempt tells in seconds.
DOWNLOAD_PROBE_HOST = "storage.googleapis.com"


def _can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _download_is_mocked() -> bool:
  # Under tfds.testing.mock_data (kd's tests of catalog datasets) nothing is downloaded: no probe.
  return tfds.core.DatasetBuilder.download_and_prepare.__module__.startswith("tensorflow_datasets.testing")


def _builder(name: str, data_dir: str):
  """Returns the dataset's builder, prepared as ArrayRecord (preparing it if needed)."""
  data_dir = _resolve_data_dir(data_dir)
  family, _, config_name = name.partition("/")
  if family in OFFLINE_BUILDERS:
    builder_class = OFFLINE_BUILDERS[family]
    kwargs = {}
    if builder_class is Synthetic:
      config_name = config_name or "8x8x1_10_512"
      try:  # TFDS refuses a new config named like a predefined one: pass those by name.
        kwargs["config"] = (config_name if config_name in Synthetic.builder_configs
                            else SyntheticConfig(config_name))
      except ValueError as e:
        raise DataError(str(e)) from e
    if builder_class is TextFiles:  # The config names the files and the tokenizer (DataError if unusable).
      kwargs["config"] = text_files.builder_config(config_name)
    builder = builder_class(data_dir=data_dir, file_format="array_record", **kwargs)
    builder.download_and_prepare()
    return builder
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception as e:  # TFDS raises several types for unknown names.
    raise DataError(
        f"unknown dataset {name!r}: use one of the offline datasets {sorted(OFFLINE_BUILDERS)} "
        "or a TFDS catalog name (e.g. mnist, cifar10)") from e
  if not builder.is_prepared():
    if not _download_is_mocked() and not _can_reach(DOWNLOAD_PROBE_HOST):
      raise DataError(
          f"dataset {name!r} is not prepared in {builder.data_dir} and this machine cannot download it "
          f"({DOWNLOAD_PROBE_HOST} is unreachable): run `tfds build {name} --file_format=array_record` on a "
          "machine that can, copy the folder, and set --config.data.data_dir to it")
    try:
      builder.download_and_prepare()
    except Exception as e:  # No network, or a dataset that needs manual download.
      raise DataError(
          f"dataset {name!r} is not prepared in {builder.data_dir} and could not be prepared here "
          f"({type(e).__name__}): run `tfds build {name} --file_format=array_record` on a machine "
          "that can download it, copy the folder, and set --config.data.data_dir to it") from e
  return builder


def _input_key(features) -> str:
  for key in ("image", "signal", "tokens", "text", "features"):
    if key in features:
      return key
  raise DataError(f"no model input among the dataset's features {list(features)}")


def load_spec(name: str, data_dir: str = "", image_size: int = 0) -> DatasetSpec:
  """Prepares the dataset if needed and describes it.

  `image_size` > 0: images are read as `resize_image` makes them, [image_size, image_size, C].
  """
  builder = _builder(name, data_dir)
  features = builder.info.features
  key = _input_key(features)
  if key == "tokens" and "label" not in features:  # A language-modelling dataset.
    metadata = builder.info.metadata or {}
    num_classes = int(metadata["vocab_size"]) if "vocab_size" in metadata else BYTE_VOCAB_SIZE
  elif "label" not in features:
    raise DataError(f"dataset {name!r} has no 'label' feature; it has {list(features)}")
  input_shape = tuple(features[key].shape)
  if image_size:
    if len(input_shape) != 3:
      raise DataError(f"data.image_size={image_size} resizes images, but {name!r} has {key!r} of shape "
                      f"{input_shape}: set data.image_size=0")
    input_shape = (image_size, image_size, input_shape[2])
  elif None in input_shape:
    raise DataError(f"the images of {name!r} vary in size ({input_shape}): set data.image_size (e.g. 128) "
                    "to resize them to one square size")
  return DatasetSpec(
      name=name,
      input_key=key,
      input_shape=input_shape,
      input_dtype=np.dtype(features[key].np_dtype).name,
      num_classes=int(features["label"].num_classes) if "label" in features else num_classes,
      split_sizes={split: info.num_examples for split, info in builder.info.splits.items()},
  )


def resize_image(image_HxWxC: np.ndarray, size: int) -> np.ndarray:
  """Shorter side resized to `size` (bilinear), then the central size x size crop: the usual
  evaluation view (`resize_small|central_crop` in big_vision), here also the stored training image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  height, width, channels = image_HxWxC.shape
  scale = size / min(height, width)
  new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
  planes = image_HxWxC if channels != 1 else image_HxWxC[:, :, 0]
  resized = np.asarray(Image.fromarray(planes).resize((new_w, new_h), Image.BILINEAR))
  resized = resized.reshape(new_h, new_w, channels)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return resized[top:top + size, left:left + size]


def load_arrays(name: str, split: str, data_dir: str = "", image_size: int = 0) -> Batch:
  """Reads a whole split (`train`, `test`, `train[:90%]`, ...) into memory as stacked arrays.

  `image_size` > 0 resizes each image with `resize_image` (datasets whose images vary in size).

  Returns: {input_key: [N, ...], "label": int32 [N]}.
  """
  spec = load_spec(name, data_dir, image_size)
  check_split(name, split, data_dir, spec)
  builder = _builder(name, data_dir)
  source = builder.as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  if spec.input_key == "tokens" and "label" not in examples[0]:  # Language modelling: tokens, mask.
    features = builder.info.features
    # A second tokenization (text_files' teacher_tokenizer) travels with the batch to the teacher.
    keys = [key for key in ("tokens", "mask", "prompt_length", "teacher_tokens", "teacher_mask", "teacher_loss_mask",
                            "chunk_ids", "teacher_chunk_ids") if key in examples[0]]
    return {key: np.stack([np.asarray(e[key], features[key].np_dtype) for e in examples]) for key in keys}
  resize = (lambda image: resize_image(np.asarray(image), image_size)) if image_size else np.asarray
  return {
      spec.input_key: np.stack([resize(e[spec.input_key]) for e in examples]),
      "label": np.asarray([e["label"] for e in examples], dtype=np.int32),
  }


def num_examples(arrays: Batch) -> int:
  """The number of examples in a split held in memory."""
  return len(next(iter(arrays.values())))


class _Gather:
  """Maps a batch of example indices to the batch of examples (a picklable Grain transform)."""

  def __init__(self, arrays: Batch):
    self.arrays = arrays

  def __call__(self, indices: np.ndarray) -> Batch:
    # "index" (the example's position in the split) lets methods keep per-example state, e.g. a
    # memory bank of embeddings (CRD).
    return {**{key: value[indices] for key, value in self.arrays.items()},
            "index": indices.astype(np.int32)}


class _ProcessShard:
  """This process's slice of a global batch of indices (a picklable Grain transform)."""

  def __init__(self, shard_index: int, per_process: int):
    self.start, self.stop = shard_index * per_process, (shard_index + 1) * per_process

  def __call__(self, indices: np.ndarray) -> np.ndarray:
    return indices[self.start:self.stop]


def train_iterator(arrays: Batch, *, batch_size: int, seed: int, shard_index: int = 0,
                   shard_count: int = 1, prefetch: int = 2, workers: int = 0) -> grain.DatasetIterator:
  """An endless iterator of shuffled batches, reshuffled each epoch; checkpointable.

  Each process reads its own `batch_size // shard_count` examples of every global batch, so the
  global batch is the same whatever the number of processes.

  Args:
    arrays: a split in memory, as `load_arrays` returns it.
    batch_size: the global batch size.
    seed: the only source of the example order.
    shard_index: this process's index among `shard_count` data-loading processes.
    shard_count: number of processes that load data.
    prefetch: batches prepared ahead by a background thread (per worker process with workers > 0).
    workers: processes that gather batches (0: in this process). Every transformation before the
      workers is one-to-one on whole batches, and Grain hands batch i to worker i mod N and reads
      them back in that order, so the batches and their order are the same for any N. The
      iterator's state records the worker count: resume with the same `workers`.

  Returns:
    A Grain iterator with `get_state()` / `set_state()` of batches {input_key, "label", "index"}.
  """
  num_examples = len(next(iter(arrays.values())))
  if batch_size > num_examples:
    raise DataError(f"batch size {batch_size} is larger than the split ({num_examples} examples): "
                    "lower --config.data.batch_size")
  per_process = batch_size // shard_count
  indices = (grain.MapDataset.range(num_examples).seed(seed).shuffle().repeat(None)
             .batch(batch_size, drop_remainder=True)
             .map(_ProcessShard(shard_index, per_process))
             .map(_Gather(arrays)))
  options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch) if prefetch else None
  batches = indices.to_iter_dataset(options)
  if workers:
    if workers < 0:
      raise DataError(f"data.workers={workers} must be >= 0 (0: batches are gathered in this process)")
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                              per_worker_buffer_size=max(prefetch, 1)))
  return iter(batches)


def eval_batches(arrays: Batch, batch_size: int) -> Iterator[Batch]:
  """Every example once, in order, in batches of one fixed shape (so one compile).

  The last batch is padded; `mask` is 1 for real examples and 0 for padding (a token dataset's own
  `mask` [N, L] comes back as `token_mask`, zero in padded examples).
  """
  num_examples = len(next(iter(arrays.values())))
  for start in range(0, num_examples, batch_size):
    stop = min(start + batch_size, num_examples)
    pad = batch_size - (stop - start)
    batch: dict[str, Any] = {
        key: np.concatenate([value[start:stop], np.zeros((pad,) + value.shape[1:], value.dtype)])
        for key, value in arrays.items()
    }
    if "mask" in batch:
      batch["token_mask"] = batch["mask"]
    batch["mask"] = np.concatenate([np.ones(stop - start, bool), np.zeros(pad, bool)])
    yield batch


def check_split(name: str, split: str, data_dir: str, spec: DatasetSpec) -> None:
  """Raises DataError, naming the available splits, unless `split` holds at least one example."""
  try:
    builder = _builder(name, data_dir)
    if builder.info.splits:
      size = builder.info.splits[split].num_examples
    else:  # Split metadata is absent under `tfds.testing.mock_data`: ask the source.
      size = len(builder.as_data_source(split=split))
  except (ValueError, KeyError, AssertionError) as e:  # What TFDS raises for a bad split or slice.
    raise DataError(f"cannot read split {split!r} of {name!r} ({e}); available splits: "
                    f"{sorted(spec.split_sizes)} (slices such as 'train[:90%]' work too)") from e
  if size == 0:
    raise DataError(f"split {split!r} of dataset {name!r} is empty: choose a non-empty split or slice")


class DevicePrefetch:
  """Puts the next `size` batches on the device from a background thread, so the train loop never waits
  for the host's gather or the copy while the device is busy.

  Checkpointable like the iterator it wraps: `get_state()` is the wrapped iterator's state just after
  the last batch *returned* (batches prepared ahead are not counted), so a resumed run continues at
  exactly the next batch. Call `set_state` before the first `next`.

  Args:
    iterator: a Grain iterator (`train_iterator`).
    put: moves a host batch to the device, e.g. `kd.train.shard_batch` with the batch sharding.
    size: batches kept ready ahead.
    enabled: False puts each batch in the caller's thread when it is asked for (same interface).
  """

  def __init__(self, iterator, put, size: int = 2, enabled: bool = True):
    self._iterator, self._put, self._size, self._enabled = iterator, put, size, enabled
    self._queue = None
    self._state = iterator.get_state()
    self._stop = threading.Event()

  def _produce(self):
    try:
      while not self._stop.is_set():
        batch = self._put(next(self._iterator))
        item = (batch, self._iterator.get_state(), None)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except Exception as e:  # pylint: disable=broad-except
      self._queue.put((None, None, e))  # Raised in the consumer's thread.

  def __iter__(self):
    return self

  def __next__(self):
    if not self._enabled:
      batch = self._put(next(self._iterator))
      self._state = self._iterator.get_state()
      return batch
    if self._queue is None:
      self._queue = queue.Queue(maxsize=self._size)
      threading.Thread(target=self._produce, daemon=True).start()
    batch, state, error = self._queue.get()
    if error is not None:
      raise error
    self._state = state
    return batch

  def get_state(self):
    return self._state

  def set_state(self, state) -> None:
    if self._queue is not None:
      raise RuntimeError("set_state after the first batch: restore the state before iterating")
    self._iterator.set_state(state)
    self._state = self._iterator.get_state()

  def close(self) -> None:
    self._stop.set()
