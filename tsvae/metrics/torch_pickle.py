"""Reads PyTorch `torch.save` files (.pth / .pt) into NumPy without PyTorch.

Both formats `torch.save` has written are supported:

* **zip** (torch >= 1.6): a zip archive (records stored uncompressed) with `<prefix>/data.pkl`
  (the pickled object) and one raw little-endian record `<prefix>/data/<key>` per storage;
  `<prefix>/byteorder` ('little' / 'big') where the writer recorded it. `<prefix>` is
  'archive' or the saved file's stem.
* **legacy** (torch < 1.6): five pickles back to back — magic number, protocol version
  (1001), system info, the object, the list of storage keys — followed, for each key in that
  list, by an int64 element count and the storage's raw bytes.

In both, a tensor is pickled as `torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
stride, requires_grad, backward_hooks[, metadata])` and a storage as the persistent id
`('storage', <torch.FloatStorage etc.>, key, location, numel[, view_metadata])`. The unpickler
here resolves only the globals such files need (tensor rebuilders, storage types,
`collections.OrderedDict`) and refuses every other global, so loading runs no foreign code.
Tensors come back as NumPy arrays (copies, C order, native byte order) of the storage's dtype.

**TorchScript archives** (`torch.jit.save`) are zips of the same shape: `<prefix>/data.pkl`
pickles the module tree, each module an instance of a `__torch__.<qualified name>` class built
with NEWOBJ and given its attributes by BUILD; tensors and storages are pickled as above;
`torch.jit._pickle.build_intlist` (and its float/bool siblings) rebuild typed lists. Here every
`__torch__.*` class becomes a `ScriptObject`: a plain record of the qualified name and the
attribute dict, with no methods of the file's; the archive's TorchScript code (`code/`) is
never read. `script_tensors` flattens such a tree to {'dotted.path': array}.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Dict, Optional, Union

import numpy as np

__all__ = ['TorchPickleError', 'ScriptObject', 'load', 'state_dict_arrays', 'script_tensors',
           'STORAGE_DTYPES', 'LEGACY_MAGIC_NUMBER', 'LEGACY_PROTOCOL_VERSION']

LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001


def _bfloat16():
  try:
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (a jax dependency)
    return np.dtype(ml_dtypes.bfloat16)
  except ImportError:  # pragma: no cover
    return None


# torch.<Name>Storage → NumPy dtype (little-endian; byte-swapped when the file says 'big').
STORAGE_DTYPES = {
    'DoubleStorage': np.dtype('<f8'),
    'FloatStorage': np.dtype('<f4'),
    'HalfStorage': np.dtype('<f2'),
    'LongStorage': np.dtype('<i8'),
    'IntStorage': np.dtype('<i4'),
    'ShortStorage': np.dtype('<i2'),
    'CharStorage': np.dtype('i1'),
    'ByteStorage': np.dtype('u1'),
    'BoolStorage': np.dtype('?'),
}
if _bfloat16() is not None:
  STORAGE_DTYPES['BFloat16Storage'] = _bfloat16()


class TorchPickleError(ValueError):
  """The file is not a readable torch.save file (or holds something this reader refuses)."""


class _StorageType:
  """Stands for `torch.<name>` while unpickling."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = STORAGE_DTYPES[name]

  def __repr__(self):
    return f'torch.{self.name}'


class _Storage:
  """One storage: its element dtype, element count and (once read) its raw bytes."""

  def __init__(self, dtype: np.dtype, key: str, numel: int):
    self.dtype = dtype
    self.key = key
    self.numel = int(numel)
    self.data: Optional[bytes] = None


class _StorageView:
  """A legacy view into another storage (view_metadata = (view_key, offset, size))."""

  def __init__(self, base: _Storage, offset: int, numel: int):
    self.base = base
    self.offset = int(offset)
    self.numel = int(numel)
    self.dtype = base.dtype


class _LazyTensor:
  """A tensor whose storage bytes may not have been read yet (legacy files store them last)."""

  def __init__(self, storage, offset, size, stride):
    self.storage = storage
    self.offset = int(offset)
    self.size = tuple(int(s) for s in size)
    self.stride = tuple(int(s) for s in stride)

  def materialize(self, big_endian: bool) -> np.ndarray:
    storage, offset = self.storage, self.offset
    if isinstance(storage, _StorageView):
      offset += storage.offset
      storage = storage.base
    if storage.data is None:
      raise TorchPickleError(f'storage {storage.key!r} was referenced but never stored.')
    dtype = storage.dtype.newbyteorder('>') if big_endian else storage.dtype
    flat = np.frombuffer(storage.data, dtype=dtype, count=storage.numel)
    if len(self.size) != len(self.stride):
      raise TorchPickleError(f'tensor size {self.size} and stride {self.stride} differ in rank.')
    if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride):
      raise TorchPickleError(f'negative size or stride: {self.size}, {self.stride}.')
    n = int(np.prod(self.size, dtype=np.int64))
    if n:
      last = offset + sum((d - 1) * s for d, s in zip(self.size, self.stride))
      if offset < 0 or last >= storage.numel:
        raise TorchPickleError(
            f'tensor (offset {offset}, size {self.size}, stride {self.stride}) reaches past '
            f'its storage {storage.key!r} of {storage.numel} elements.')
      view = np.lib.stride_tricks.as_strided(
          flat[offset:], shape=self.size,
          strides=tuple(s * flat.itemsize for s in self.stride), writeable=False)
    else:
      view = np.zeros(self.size, dtype)
    return np.array(view, dtype=dtype.newbyteorder('='), order='C')


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


class ScriptObject:
  """A TorchScript module or object: its class's qualified name and its attributes.

  Stands for every `__torch__.*` class while unpickling. NEWOBJ makes an empty instance and
  BUILD hands it the pickled attribute dict (`__setstate__` below); nothing of the file's
  class runs.
  """
  qualified_name = '__torch__'

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise TorchPickleError(f'{self.qualified_name} has a {type(state).__name__} state, not '
                             'an attribute dict.')
    self.__dict__['attributes'] = dict(state)

  @property
  def attributes(self) -> Dict[str, Any]:
    return self.__dict__.get('attributes', {})

  def __repr__(self):
    return f'ScriptObject({self.qualified_name})'


def _script_class(module: str, name: str) -> type:
  """A fresh ScriptObject subclass named after `module.name` (data only, no foreign code)."""
  return type(name, (ScriptObject,), {'qualified_name': f'{module}.{name}'})


def _build_list(data):
  return list(data)


_GLOBALS = {
    ('torch.jit._pickle', 'build_intlist'): _build_list,
    ('torch.jit._pickle', 'build_doublelist'): _build_list,
    ('torch.jit._pickle', 'build_boollist'): _build_list,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter_with_state,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice,
    ('__builtin__', 'set'): set,
}


class _Unpickler(pickle.Unpickler):
  """Resolves the torch globals to local stand-ins; storages through `storage_for`."""

  def __init__(self, file, storage_for):
    super().__init__(file, encoding='utf-8')
    self._storage_for = storage_for

  def find_class(self, module, name):
    if module == 'torch' and name in STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    if module == '__torch__' or module.startswith('__torch__.'):
      return _script_class(module, name)
    raise TorchPickleError(f'refusing to load the global {module}.{name} (this reader only '
                           'rebuilds tensors, storages and plain containers).')

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != 'storage':
      raise TorchPickleError(f'unsupported persistent id {pid!r}.')
    if len(pid) not in (5, 6):
      raise TorchPickleError(f'malformed storage persistent id {pid!r}.')
    storage_type, key, _location, numel = pid[1:5]
    view_metadata = pid[5] if len(pid) == 6 else None
    if isinstance(storage_type, _StorageType):
      dtype = storage_type.dtype
    else:
      raise TorchPickleError(f'unsupported storage type {storage_type!r} (known: '
                             f'{", ".join(sorted(STORAGE_DTYPES))}).')
    storage = self._storage_for(str(key), dtype, int(numel))
    if view_metadata is not None:
      view_key, offset, view_numel = view_metadata
      del view_key
      return _StorageView(storage, offset, view_numel)
    return storage


def _materialize(obj, big_endian: bool, memo=None):
  """Replaces every _LazyTensor inside containers with its NumPy array."""
  if memo is None:
    memo = {}
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _LazyTensor):
    out = obj.materialize(big_endian)
  elif isinstance(obj, ScriptObject):
    out = obj
    memo[id(obj)] = out  # Before the attributes: a module tree may refer back to itself.
    out.__dict__['attributes'] = {k: _materialize(v, big_endian, memo)
                                  for k, v in obj.attributes.items()}
  elif isinstance(obj, collections.OrderedDict):
    out = collections.OrderedDict((k, _materialize(v, big_endian, memo)) for k, v in obj.items())
    if hasattr(obj, '_metadata'):
      out._metadata = obj._metadata  # pylint: disable=protected-access
  elif isinstance(obj, dict):
    out = {k: _materialize(v, big_endian, memo) for k, v in obj.items()}
  elif isinstance(obj, list):
    out = [_materialize(v, big_endian, memo) for v in obj]
  elif isinstance(obj, tuple):
    out = tuple(_materialize(v, big_endian, memo) for v in obj)
  else:
    out = obj
  memo[id(obj)] = out
  return out


# -------------------------------------------------------------------------------- zip format


def _load_zip(f: BinaryIO) -> Any:
  with zipfile.ZipFile(f) as zf:
    names = zf.namelist()
    pickles = [n for n in names if n == 'data.pkl' or n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise TorchPickleError(f'expected one data.pkl in the zip, found {pickles or "none"}.')
    prefix = pickles[0][:-len('data.pkl')]
    big_endian = False
    if prefix + 'byteorder' in names:
      order = zf.read(prefix + 'byteorder').decode().strip()
      if order not in ('little', 'big'):
        raise TorchPickleError(f'unknown byteorder {order!r}.')
      big_endian = order == 'big'
    storages: Dict[str, _Storage] = {}

    def storage_for(key, dtype, numel):
      if key not in storages:
        record = f'{prefix}data/{key}'
        try:
          data = zf.read(record)
        except KeyError:
          raise TorchPickleError(f'the zip lacks the storage record {record}.') from None
        if len(data) < numel * dtype.itemsize:
          raise TorchPickleError(f'storage record {record} holds {len(data)} bytes, fewer '
                                 f'than {numel} x {dtype.itemsize}.')
        storage = _Storage(dtype, key, numel)
        storage.data = data
        storages[key] = storage
      return storages[key]

    obj = _Unpickler(io.BytesIO(zf.read(pickles[0])), storage_for).load()
  return _materialize(obj, big_endian)


# -------------------------------------------------------------------------- legacy format


def _load_legacy(f: BinaryIO) -> Any:
  def plain_load():
    return _Unpickler(f, _no_storage).load()

  magic = plain_load()
  if magic != LEGACY_MAGIC_NUMBER:
    raise TorchPickleError('not a torch.save file (neither a zip archive nor the legacy magic '
                           'number).')
  protocol = plain_load()
  if protocol != LEGACY_PROTOCOL_VERSION:
    raise TorchPickleError(f'unsupported legacy protocol version {protocol!r}.')
  sys_info = plain_load()
  big_endian = isinstance(sys_info, dict) and sys_info.get('little_endian') is False
  storages: Dict[str, _Storage] = {}

  def storage_for(key, dtype, numel):
    if key not in storages:
      storages[key] = _Storage(dtype, key, numel)
    return storages[key]

  obj = _Unpickler(f, storage_for).load()
  keys = plain_load()
  for key in keys:
    key = str(key)
    if key not in storages:
      raise TorchPickleError(f'storage {key!r} is stored but was never referenced.')
    storage = storages[key]
    header = f.read(8)
    if len(header) != 8:
      raise TorchPickleError(f'file ends before storage {key!r}.')
    (numel,) = struct.unpack('>q' if big_endian else '<q', header)
    nbytes = numel * storage.dtype.itemsize
    data = f.read(nbytes)
    if len(data) != nbytes or numel < storage.numel:
      raise TorchPickleError(f'storage {key!r} is truncated ({len(data)} of {nbytes} bytes).')
    storage.numel = numel
    storage.data = data
  return _materialize(obj, big_endian)


def _no_storage(key, dtype, numel):
  raise TorchPickleError('unexpected storage in a legacy header pickle.')


# --------------------------------------------------------------------------------- public


def load(path_or_file: Union[str, os.PathLike, BinaryIO]) -> Any:
  """The object `torch.save` wrote (e.g. an OrderedDict state dict), tensors as NumPy arrays.

  Raises:
    TorchPickleError: not a torch.save file, truncated, or it needs globals other than tensor
      rebuilders, storage types and plain containers.
  """
  if isinstance(path_or_file, (str, os.PathLike)):
    with open(path_or_file, 'rb') as f:
      return load(f)
  f = path_or_file
  start = f.tell()
  try:
    if zipfile.is_zipfile(f):
      f.seek(start)
      return _load_zip(f)
    f.seek(start)
    return _load_legacy(f)
  except TorchPickleError:
    raise
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError,
          KeyError, struct.error) as e:
    raise TorchPickleError(f'unreadable torch.save file ({type(e).__name__}: {e}).') from e


def script_tensors(obj: Any, prefix: str = '') -> Dict[str, np.ndarray]:
  """{'a.b.weight': array} of every tensor attribute in a loaded TorchScript module tree."""
  if not isinstance(obj, ScriptObject):
    raise TorchPickleError(f'expected a TorchScript module, got {type(obj).__name__}.')
  out = {}
  for name, value in obj.attributes.items():
    key = prefix + name
    if isinstance(value, np.ndarray):
      out[key] = value
    elif isinstance(value, ScriptObject):
      out.update(script_tensors(value, key + '.'))
  return out


def state_dict_arrays(obj: Any) -> Dict[str, np.ndarray]:
  """{name: array} of a loaded state dict (also unwraps {'state_dict': ...})."""
  if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    obj = obj['state_dict']
  if not isinstance(obj, dict):
    raise TorchPickleError(f'expected a state dict (a mapping), got {type(obj).__name__}.')
  out = {}
  for k, v in obj.items():
    if not isinstance(v, np.ndarray):
      raise TorchPickleError(f'state dict entry {k!r} is a {type(v).__name__}, not a tensor.')
    out[str(k)] = v
  return out

