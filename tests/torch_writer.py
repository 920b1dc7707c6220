"""A torch.save / torch.jit.save writer by hand, for the tests of the .pth / TorchScript reader.

PyTorch is not installed: these write the bytes torch.save writes, opcode by opcode, so the
reader is checked against the format rather than against itself. `pickle_*` give the pickle
bytes of one value (for hand-made payloads); `write_pth` and `write_torchscript` whole files.
"""

import pickle
import struct
import zipfile

import numpy as np

from tsvae.metrics import torch_pickle

_STORAGE_NAMES = {np.dtype('float32'): 'FloatStorage', np.dtype('float64'): 'DoubleStorage',
                  np.dtype('float16'): 'HalfStorage', np.dtype('int64'): 'LongStorage',
                  np.dtype('int32'): 'IntStorage', np.dtype('uint8'): 'ByteStorage',
                  np.dtype('bool'): 'BoolStorage'}


def pickle_str(s):
  b = s.encode()
  return b'X' + struct.pack('<I', len(b)) + b


def pickle_int(i):
  if -2**31 <= i < 2**31:
    return b'J' + struct.pack('<i', i)
  raw = i.to_bytes((i.bit_length() + 8) // 8, 'little', signed=True)
  return b'\x8a' + bytes([len(raw)]) + raw


def pickle_tuple(items):
  return b'(' + b''.join(items) + b't'


def pickle_global(module, name):
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _ordered_dict():
  return pickle_global('collections', 'OrderedDict') + b')R'


def _tensor_pickle(entries, legacy):
  """entries: [(name, storage_key, dtype, numel, offset, size, stride)] → an OrderedDict pickle."""
  out = b'\x80\x02' + _ordered_dict() + b'('
  for name, key, dtype, numel, offset, size, stride in entries:
    pid = [pickle_str('storage'), pickle_global('torch', _STORAGE_NAMES[np.dtype(dtype)]),
           pickle_str(key), pickle_str('cpu'), pickle_int(numel)]
    if legacy:
      pid.append(b'N')  # view_metadata
    args = pickle_tuple([pickle_tuple(pid) + b'Q', pickle_int(offset),
                         pickle_tuple([pickle_int(s) for s in size]),
                         pickle_tuple([pickle_int(s) for s in stride]), b'\x89', _ordered_dict()])
    out += pickle_str(name) + pickle_global('torch._utils', '_rebuild_tensor_v2') + args + b'R'
  out += b'u'
  out += b'}(' + pickle_str('_metadata') + _ordered_dict() + b'ub'  # state_dict._metadata, as torch
  return out + b'.'


def write_pth(path, tensors, storages=None, fmt='zip', byteorder='little'):
  """torch.save-format file of an OrderedDict state dict.

  tensors: {name: array} (each its own contiguous storage) or, with `storages` {key: 1-D
  array}, {name: (key, offset, size, stride)} views into them.
  """
  if storages is None:
    storages, views = {}, {}
    for i, (name, arr) in enumerate(tensors.items()):
      arr = np.ascontiguousarray(arr)
      storages[str(i)] = arr.reshape(-1)
      strides = tuple(s // arr.itemsize for s in arr.strides) if arr.ndim else ()
      views[name] = (str(i), 0, arr.shape, strides)
  else:
    views = tensors
  entries = [(name, key, storages[key].dtype, storages[key].size, off, size, stride)
             for name, (key, off, size, stride) in views.items()]
  pkl = _tensor_pickle(entries, legacy=(fmt == 'legacy'))
  big = byteorder == 'big'

  def raw(arr):
    return arr.astype(arr.dtype.newbyteorder('>' if big else '<')).tobytes()

  if fmt == 'zip':
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as zf:
      zf.writestr('archive/data.pkl', pkl)
      zf.writestr('archive/byteorder', byteorder)
      for key, arr in storages.items():
        zf.writestr(f'archive/data/{key}', raw(arr))
      zf.writestr('archive/version', '3\n')
  else:
    with open(path, 'wb') as f:
      f.write(pickle.dumps(torch_pickle.LEGACY_MAGIC_NUMBER, protocol=2))
      f.write(pickle.dumps(torch_pickle.LEGACY_PROTOCOL_VERSION, protocol=2))
      f.write(pickle.dumps({'protocol_version': 1001, 'little_endian': not big,
                            'type_sizes': {'short': 2, 'int': 4, 'long': 4}}, protocol=2))
      f.write(pkl)
      f.write(pickle.dumps(list(storages), protocol=2))
      for key, arr in storages.items():
        f.write(struct.pack('>q' if big else '<q', arr.size) + raw(arr))


def _tensor(key, arr):
  """Pickle bytes of `_rebuild_tensor_v2` over storage `key` holding contiguous `arr`."""
  pid = [pickle_str('storage'), pickle_global('torch', _STORAGE_NAMES[arr.dtype]), pickle_str(key),
         pickle_str('cpu'), pickle_int(arr.size)]
  strides = tuple(s // arr.itemsize for s in arr.strides) if arr.ndim else ()
  return pickle_global('torch._utils', '_rebuild_tensor_v2') + pickle_tuple(
      [pickle_tuple(pid) + b'Q', pickle_int(0), pickle_tuple([pickle_int(s) for s in arr.shape]),
       pickle_tuple([pickle_int(s) for s in strides]), b'\x89', _ordered_dict()]) + b'R'


def _script_module(qualified, attributes):
  """Pickle bytes of a TorchScript object: NEWOBJ of `__torch__.<qualified>`, BUILD attrs."""
  module, name = qualified.rsplit('.', 1)
  body = b''.join(pickle_str(k) + v for k, v in attributes.items())
  return pickle_global(module, name) + b')\x81' + b'}(' + body + b'ub'


def write_torchscript(path, tensors, extra=None):
  """A torch.jit.save-format archive whose module tree holds `tensors` {'a.b.weight': array}.

  Every module is a `__torch__.m.Module` with `training` False; `extra` {'a.b.attr': pickle
  bytes} adds non-tensor attributes (e.g. a build_intlist).
  """
  tree, storages = {}, {}
  for name, arr in tensors.items():
    arr = np.ascontiguousarray(arr)
    key = str(len(storages))
    storages[key] = arr
    node = tree
    *parents, leaf = name.split('.')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = _tensor(key, arr)
  for name, value in (extra or {}).items():
    node = tree
    *parents, leaf = name.split('.')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value

  def build(node):
    attrs = {'training': b'\x89'}
    attrs.update({k: build(v) if isinstance(v, dict) else v for k, v in node.items()})
    return _script_module('__torch__.m.Module', attrs)

  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as zf:
    zf.writestr('out/data.pkl', b'\x80\x02' + build(tree) + b'.')
    zf.writestr('out/constants.pkl', b'\x80\x02).')
    zf.writestr('out/code/__torch__/m.py', 'class Module(Module): pass  # never read\n')
    for key, arr in storages.items():
      zf.writestr(f'out/data/{key}', arr.astype(arr.dtype.newbyteorder('<')).tobytes())
    zf.writestr('out/version', '3\n')
