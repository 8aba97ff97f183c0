"""Reads `torch.save` files without torch, and without running any code a pickle names.

A `torch.save` file is a pickle whose tensors point at raw storages (PyTorch's `torch/serialization.py`):

  zip format (PyTorch >= 1.6): `<archive>/data.pkl` is the pickle; a storage is the persistent id
    ("storage", <storage class>, key, location, numel), its bytes are `<archive>/data/<key>`, in the
    byte order `<archive>/byteorder` states (little when absent).
  legacy format (PyTorch < 1.6, e.g. RepDistiller's released teachers of 2019): five pickles in a row,
    the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, system information, the object
    (storages are ("storage", <class>, key, location, numel, view)), the list of storage keys; then each
    storage as an int64 element count and its bytes.

Unpickling can call any importable function, so `pickle.load` on a downloaded checkpoint runs whatever
the file names. `RestrictedUnpickler.find_class` answers only the globals a state_dict and its
surroundings (epoch, accuracy, optimizer state, an argparse namespace of options) need, and with kd's
own stand-ins, never the named objects: a tensor becomes a numpy array, a storage class a dtype.
Anything else is refused with a `UserError` that names it.
"""

import argparse
import collections
import dataclasses
import io
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np
from numpy._core import multiarray as numpy_multiarray  # numpy >= 2; `numpy.core` warns.

from kd.errors import UserError

# PyTorch's storage classes (`torch.<Name>Storage`) and the element type each holds.
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    # An untyped storage is bytes; the tensor that views it states nothing more in these formats.
    "UntypedStorage": np.dtype(np.uint8),
}

# torch/serialization.py: MAGIC_NUMBER and PROTOCOL_VERSION of the legacy format.
LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001


@dataclasses.dataclass(frozen=True, slots=True)
class StorageType:
  """What `torch.<Name>Storage` unpickles to here: the element type, not the class."""

  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class StorageRef:
  """A storage a tensor views: its key in the file and its first element (legacy views start later)."""

  key: str
  dtype: np.dtype
  numel: int
  element_offset: int = 0


@dataclasses.dataclass(frozen=True)
class PendingTensor:
  """A tensor whose storage bytes are not read yet (`_rebuild_tensor_v2`'s arguments)."""

  storage: StorageRef
  storage_offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> PendingTensor:
  del requires_grad, backward_hooks, metadata  # Autograd state: nothing a converted model keeps.
  if not isinstance(storage, StorageRef):
    raise UserError(f"a tensor's storage is a {type(storage).__name__}, not a torch storage record")
  return PendingTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                       tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state  # An nn.Parameter is its data here.
  return data


def _encode_bytes(text, encoding="utf-8") -> bytes:
  # Pickle protocol 2 (torch.save's) writes bytes, e.g. a numpy scalar's, as _codecs.encode(text, "latin1").
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
    raise UserError(f"a pickle asks for _codecs.encode({type(text).__name__}, {encoding!r}): not bytes data")
  return text.encode(encoding)


# (module, name) -> the stand-in `find_class` returns. torch's rebuild functions become kd's, which
# record arguments; containers and numbers are the standard library's and numpy's own, which build
# data and call nothing else.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # RepDistiller's final `<model>_last.pth` holds the run's options, an argparse.Namespace.
    ("argparse", "Namespace"): argparse.Namespace,
    # Accuracies and epochs saved as numpy scalars (numpy 1.x and 2.x module paths).
    ("numpy.core.multiarray", "scalar"): numpy_multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): numpy_multiarray.scalar,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode_bytes,
    ("numpy.core.multiarray", "_reconstruct"): numpy_multiarray._reconstruct,  # pylint: disable=protected-access
    ("numpy._core.multiarray", "_reconstruct"): numpy_multiarray._reconstruct,  # pylint: disable=protected-access
    ("numpy", "ndarray"): np.ndarray,
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    ("torch.storage", "UntypedStorage"): StorageType(STORAGE_DTYPES["UntypedStorage"]),
}


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that resolves only `ALLOWED_GLOBALS` and torch's storage records."""

  def __init__(self, file: BinaryIO, where: str, legacy: bool):
    super().__init__(file)
    self.where = where
    self.legacy = legacy

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in ALLOWED_GLOBALS:
      allowed = ALLOWED_GLOBALS[(module, name)]
      # A fresh record per file, so that nothing a pickle does to it outlives the file.
      return StorageType(allowed.dtype) if isinstance(allowed, StorageType) else allowed
    raise UserError(f"{self.where} refers to the global {module}.{name}, which kd does not load: a "
                    "checkpoint needs only tensors, numbers and containers, and unpickling anything else "
                    "can run code. If you trust the file, re-save its state_dict with torch as .safetensors")

  def persistent_load(self, saved_id: Any) -> StorageRef:
    if not isinstance(saved_id, tuple) or not saved_id:
      raise UserError(f"{self.where} has a persistent record {saved_id!r}: not a torch storage")
    typename = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
    expected_fields = 6 if self.legacy else 5
    if (typename != "storage" or len(saved_id) != expected_fields or not isinstance(saved_id[1], StorageType)
        or not any(saved_id[1].dtype is dtype for dtype in STORAGE_DTYPES.values())):
      raise UserError(f"{self.where} has a persistent record {str(saved_id)[:120]}: not a torch storage")
    storage_type, key, _location, numel = saved_id[1:5]  # The device it lived on does not matter here.
    storage = StorageRef(str(key), storage_type.dtype, int(numel))
    view = saved_id[5] if self.legacy else None
    if view is not None:
      # A legacy view into a larger storage: (view key, element offset, view size).
      _view_key, offset, view_size = view
      storage = StorageRef(str(key), storage_type.dtype, int(view_size), int(offset))
    return storage


def _materialize(tensor: PendingTensor, storages: dict[str, np.ndarray], where: str) -> np.ndarray:
  """The tensor as a numpy array copied out of its storage, after checking that it lies inside it."""
  ref = tensor.storage
  if ref.key not in storages:
    raise UserError(f"{where}: a tensor refers to storage {ref.key!r}, which the file does not hold")
  flat = storages[ref.key][ref.element_offset:]
  if flat.dtype != ref.dtype:
    flat = flat.view(ref.dtype)
  if len(tensor.size) != len(tensor.stride) or any(s < 0 for s in tensor.size + tensor.stride):
    raise UserError(f"{where}: a tensor has size {tensor.size} and stride {tensor.stride}: not a tensor")
  if 0 in tensor.size:
    return np.zeros(tensor.size, ref.dtype)
  # as_strided reads wherever the strides point: the last element must lie inside the storage.
  last = tensor.storage_offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
  if tensor.storage_offset < 0 or last >= flat.size:
    raise UserError(f"{where}: a tensor of size {tensor.size} (stride {tensor.stride}, offset "
                    f"{tensor.storage_offset}) reaches past its storage of {flat.size} elements")
  view = np.lib.stride_tricks.as_strided(flat[tensor.storage_offset:], shape=tensor.size,
                                         strides=[s * flat.itemsize for s in tensor.stride],
                                         writeable=False)
  return np.array(view)


def _resolve(tree: Any, storages: dict[str, np.ndarray], where: str) -> Any:
  """`tree` with every PendingTensor replaced by its array (containers rebuilt with their type)."""
  if isinstance(tree, PendingTensor):
    return _materialize(tree, storages, where)
  if isinstance(tree, dict):
    resolved = type(tree)((key, _resolve(value, storages, where)) for key, value in tree.items())
    if hasattr(tree, "__dict__"):  # An OrderedDict's attributes (a state_dict's `_metadata`).
      resolved.__dict__.update(_resolve(vars(tree), storages, where))
    return resolved
  if isinstance(tree, (list, tuple)):
    return type(tree)(_resolve(value, storages, where) for value in tree)
  if isinstance(tree, argparse.Namespace):
    return argparse.Namespace(**_resolve(vars(tree), storages, where))
  return tree


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
      raise UserError(f"{path} is a zip file but not a torch.save file (no <archive>/data.pkl in it)")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = archive.read(prefix + "byteorder").decode("ascii").strip()
    unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, legacy=False)
    tree = unpickler.load()
    storages = {}
    for ref in _storage_refs(tree):
      if ref.key in storages:
        continue
      entry = f"{prefix}data/{ref.key}"
      if entry not in names:
        raise UserError(f"{path}: storage {ref.key!r} is missing ({entry} is not in the archive)")
      dtype = ref.dtype.newbyteorder(">" if byteorder == "big" else "<")
      storages[ref.key] = np.frombuffer(archive.read(entry), dtype).astype(ref.dtype)
  return _resolve(tree, storages, path)


def _storage_refs(tree: Any):
  """Every StorageRef the pending tensors of `tree` use."""
  if isinstance(tree, PendingTensor):
    yield tree.storage
  elif isinstance(tree, dict):
    for value in tree.values():
      yield from _storage_refs(value)
  elif isinstance(tree, (list, tuple)):
    for value in tree:
      yield from _storage_refs(value)
  elif isinstance(tree, argparse.Namespace):
    yield from _storage_refs(vars(tree))


def _load_legacy(path: str, file: BinaryIO) -> Any:
  def next_pickle(legacy=True):
    return RestrictedUnpickler(file, path, legacy).load()

  try:
    magic = next_pickle()
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise UserError(f"{path} is neither a zip nor a legacy torch.save file ({e}); the pre-2017 tar "
                    "format is not read") from e
  if magic != LEGACY_MAGIC_NUMBER:
    raise UserError(f"{path} is not a torch.save file (it starts with a pickle of {str(magic)[:40]!r})")
  protocol = next_pickle()
  if protocol != LEGACY_PROTOCOL_VERSION:
    raise UserError(f"{path}: legacy torch.save protocol {protocol}, kd reads {LEGACY_PROTOCOL_VERSION}")
  system_info = next_pickle()
  little_endian = not isinstance(system_info, dict) or system_info.get("little_endian", True)
  tree = next_pickle()
  keys = next_pickle()
  sizes = {ref.key: ref for ref in _storage_refs(tree)}
  storages = {}
  for key in keys:
    header = file.read(8)
    if len(header) != 8:
      raise UserError(f"{path} ends before storage {key!r}: the file is truncated")
    (numel,) = struct.unpack("<q" if little_endian else ">q", header)
    dtype = sizes[str(key)].dtype if str(key) in sizes else np.dtype(np.uint8)
    data = file.read(numel * dtype.itemsize)
    if len(data) != numel * dtype.itemsize:
      raise UserError(f"{path} ends inside storage {key!r}: the file is truncated")
    storages[str(key)] = np.frombuffer(data, dtype.newbyteorder("<" if little_endian else ">")).astype(dtype)
  return _resolve(tree, storages, path)


def load(path: str) -> Any:
  """The object a `torch.save` file holds, with tensors as numpy arrays; UserError if it names code.

  Args:
    path: a file written by `torch.save` (zip or legacy format, see the module docstring).

  Returns:
    What was saved, e.g. RepDistiller's {"epoch": 240, "model": OrderedDict(name -> array),
    "accuracy": array(...), "optimizer": {...}}.
  """
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  with open(path, "rb") as file:
    return _load_legacy(path, file)
