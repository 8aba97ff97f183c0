"""Datasets through TFDS (`tfds.data_source` on ArrayRecord) and Grain; see `pipeline`."""

from kd.data.pipeline import check_split
from kd.data.pipeline import DatasetSpec
from kd.data.pipeline import DevicePrefetch
from kd.data.pipeline import eval_batches
from kd.data.pipeline import load_arrays
from kd.data.pipeline import load_spec
from kd.data.pipeline import num_examples
from kd.data.pipeline import OFFLINE_BUILDERS
from kd.data.pipeline import train_iterator
from kd.data import splits
