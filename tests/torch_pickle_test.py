"""The .pth and TorchScript reader (tsvae.metrics.torch_pickle), against files written by
hand in the torch.save format (torch_writer.py)."""

import collections
import io
import zipfile

import numpy as np
import pytest

from torch_writer import pickle_global, pickle_int, pickle_str, pickle_tuple
from torch_writer import write_pth, write_torchscript
from tsvae.metrics import torch_pickle


def _mixed_storages():
  rng = np.random.default_rng(0)
  storages = {
      '0': rng.normal(size=12).astype(np.float32),
      '1': rng.normal(size=5),  # float64
      '2': np.arange(7, dtype=np.int64) - 3,
      '3': rng.normal(size=6).astype(np.float16),
      '4': np.array([0, 255, 7], np.uint8),
      '5': np.array([True, False, True]),
  }
  views = {
      'w': ('0', 0, (3, 4), (4, 1)),
      'w_t': ('0', 0, (4, 3), (1, 4)),  # A transposed view of the same storage.
      'w_row': ('0', 4, (4,), (1,)),  # An offset view.
      'd': ('1', 0, (5,), (1,)),
      'bn.num_batches_tracked': ('2', 3, (), ()),
      'l': ('2', 0, (7,), (1,)),
      'h': ('3', 2, (2, 2), (2, 1)),
      'u8': ('4', 0, (3,), (1,)),
      'b': ('5', 0, (3,), (1,)),
  }
  s = storages
  expected = {
      'w': s['0'].reshape(3, 4), 'w_t': s['0'].reshape(3, 4).T, 'w_row': s['0'][4:8],
      'd': s['1'], 'bn.num_batches_tracked': np.array(0, np.int64), 'l': s['2'],
      'h': s['3'][2:6].reshape(2, 2), 'u8': s['4'], 'b': s['5'],
  }
  return storages, views, expected


@pytest.mark.parametrize('fmt, byteorder', [('zip', 'little'), ('legacy', 'little'),
                                            ('zip', 'big')])
def test_pth_reader_gives_back_the_exact_arrays(tmp_path, fmt, byteorder):
  storages, views, expected = _mixed_storages()
  path = str(tmp_path / 'state.pth')
  write_pth(path, views, storages, fmt=fmt, byteorder=byteorder)
  loaded = torch_pickle.load(path)
  assert isinstance(loaded, collections.OrderedDict)
  assert list(loaded) == list(views)  # Order kept.
  assert hasattr(loaded, '_metadata')
  for name, want in expected.items():
    got = loaded[name]
    assert isinstance(got, np.ndarray), name
    assert got.dtype == want.dtype and got.shape == want.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)
  assert torch_pickle.state_dict_arrays({'state_dict': loaded}).keys() == loaded.keys()


def test_torchscript_archive_reads_as_plain_records(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {'net.conv.weight': rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
             'net.conv.beta': rng.normal(size=4).astype(np.float32),
             'net.head.scale': np.arange(5, dtype=np.int64)}
  intlist = pickle_global('torch.jit._pickle', 'build_intlist') + pickle_tuple(
      [b']' + b'(' + pickle_int(2) + pickle_int(2) + b'e']) + b'R'
  path = str(tmp_path / 'module.pt')
  write_torchscript(path, tensors, extra={'net.conv.stride': intlist})
  root = torch_pickle.load(path)
  assert isinstance(root, torch_pickle.ScriptObject)
  assert root.qualified_name == '__torch__.m.Module'
  conv = root.attributes['net'].attributes['conv']
  assert conv.attributes['stride'] == [2, 2] and conv.attributes['training'] is False
  got = torch_pickle.script_tensors(root)
  assert list(got) == list(tensors)
  for name, want in tensors.items():
    np.testing.assert_array_equal(got[name], want)
  # A script object is a record: the file's classes and code never run.
  assert type(conv).__mro__[1] is torch_pickle.ScriptObject
  assert not any(callable(v) for v in conv.attributes.values())


def test_torchscript_archive_still_refuses_foreign_globals(tmp_path):
  path = str(tmp_path / 'evil.pt')
  evil = pickle_global('os', 'system') + pickle_tuple([pickle_str('true')]) + b'R'
  write_torchscript(path, {'w': np.zeros(2, np.float32)}, extra={'payload': evil})
  with pytest.raises(torch_pickle.TorchPickleError, match='os.system'):
    torch_pickle.load(path)


def test_pth_reader_refuses_foreign_globals(tmp_path):
  path = tmp_path / 'evil.pth'
  payload = b'\x80\x02' + pickle_global('os', 'system') + pickle_tuple([pickle_str('true')]) + b'R.'
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', payload)
  with pytest.raises(torch_pickle.TorchPickleError, match='os.system'):
    torch_pickle.load(str(path))


def test_pth_reader_rejects_truncated_and_foreign_files(tmp_path):
  storages, views, _ = _mixed_storages()
  path = str(tmp_path / 'state.pth')
  write_pth(path, views, storages, fmt='legacy')
  data = open(path, 'rb').read()
  with pytest.raises(torch_pickle.TorchPickleError):
    torch_pickle.load(io.BytesIO(data[:-10]))
  with pytest.raises(torch_pickle.TorchPickleError):
    torch_pickle.load(io.BytesIO(b'not a torch file at all'))
  bad = {'w': ('0', 10, (3, 4), (4, 1))}  # Reaches past the storage.
  write_pth(path, bad, {'0': storages['0']})
  with pytest.raises(torch_pickle.TorchPickleError, match='past'):
    torch_pickle.load(path)
