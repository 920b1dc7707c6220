"""FID as the paper computes it: the TF graph's resize, the real weights, the statistics cache.

The tests marked `real_weights` need the FID network in the cache (`python -m tsvae.evaluate
--fetch_weights`, which `.ci/run` does); they skip, saying so, where pip could not fetch it.
Their expected features (tests/data/fid_reference_features.npz) were computed by PyTorch
running the TorchScript file, after TensorFlow's / PyTorch's own resize
(benchmarks/make_fid_fixture.py), so nothing of tsvae made them.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tsvae.metrics import fid
from tsvae.metrics import frechet
from tsvae.metrics import inception
from tsvae.metrics import inception_weights
from tsvae.evaluators import inputs as eval_inputs

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'fid_reference_features.npz')


def test_tf_graph_resize_is_tf1_legacy_resize_bilinear():
  rng = np.random.default_rng(0)
  for shape in ((2, 28, 28, 3), (1, 32, 32, 3), (1, 64, 48, 3), (1, 500, 320, 3)):
    x = rng.uniform(0, 255, shape).astype(np.float32)
    want = tf.compat.v1.image.resize_bilinear(x, (299, 299), align_corners=False,
                                              half_pixel_centers=False).numpy()
    got = np.asarray(inception.resize_bilinear(x, 299, half_pixel=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=255 * 4e-6, err_msg=str(shape))


def test_the_two_resizes_really_differ_on_upsampling():
  """The legacy resize is shifted: on 28 → 299 a sharp edge moves by about 5 pixels."""
  x = np.zeros((1, 28, 28, 1), np.float32)
  x[:, :, 14:, :] = 255.0
  legacy = np.asarray(inception.resize_bilinear(x, 299, half_pixel=False))[0, 0, :, 0]
  half = np.asarray(inception.resize_bilinear(x, 299, half_pixel=True))[0, 0, :, 0]
  edge = lambda row: np.argmax(row >= 127.5)  # pylint: disable=unnecessary-lambda-assignment
  assert 4 <= edge(half) - edge(legacy) <= 6
  assert np.abs(legacy - half).max() > 100


def test_preprocessings_map_to_the_graph_input_range():
  white = np.ones((1, 8, 8, 3), np.float32)
  np.testing.assert_allclose(inception.preprocess(white, 'tf_graph', 1.0), 127.0 / 128.0,
                             atol=1e-5)
  np.testing.assert_allclose(inception.preprocess(white * 0, 'tf_graph', 1.0), -1.0, atol=1e-5)
  np.testing.assert_allclose(inception.preprocess(white * 255, 'pytorch_fid', 255.0), 1.0,
                             atol=1e-5)
  with pytest.raises(ValueError, match='unknown FID preprocessing'):
    inception.preprocess(white, 'tf', 1.0)


def test_tf_graph_names_cover_every_unit_once():
  units = inception.tf_graph_unit_names()
  assert len(units) == 94 and len(set(units.values())) == 94
  assert set(units) == {k[:-len('.conv.weight')] for k in inception.torch_names()
                        if k.endswith('.conv.weight')}


# ----------------------------------------------------------------- with the real weights


@pytest.fixture(scope='module')
def real_variables():
  weights, reason = inception_weights.find('', eval_inputs.default_cache_dir(),
                                           allow_download=False)
  if weights is None:
    pytest.skip(f'real FID weights unavailable (the package index could not be reached?): '
                f'{reason}')
  return inception_weights.load_variables(weights)


@pytest.fixture(scope='module')
def reference():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


DATASETS = ('mnist', 'cifar10')


@pytest.mark.parametrize('preprocessing', inception.PREPROCESSINGS)
def test_features_equal_pytorch_running_the_torchscript_file(real_variables, reference,
                                                             preprocessing):
  extractor = inception.FeatureExtractor(real_variables, batch_size=4, input_range=255.0,
                                         preprocessing=preprocessing)
  for name in DATASETS:
    np.testing.assert_allclose(extractor(reference[f'{name}_images']),
                               reference[f'{name}_{preprocessing}'], rtol=1e-4, atol=1e-4,
                               err_msg=name)


def test_bfloat16_features_stay_close(real_variables, reference):
  """bf16 convolutions move features by ~1% (their FID effect is measured in benchmarks/)."""
  extractor = inception.FeatureExtractor(real_variables, batch_size=4, input_range=255.0,
                                         compute_dtype='bfloat16')
  for name in DATASETS:
    got, want = extractor(reference[f'{name}_images']), reference[f'{name}_tf_graph']
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.05, name


def test_protocols_give_different_features(reference):
  """The same images under the two preprocessings: never to be mixed in one FID."""
  a, b = reference['mnist_tf_graph'], reference['mnist_pytorch_fid']
  assert np.median(np.abs(a - b) / (np.abs(a) + 1e-3)) > 0.05


# ------------------------------------------------------------------------ statistics cache


def test_real_statistics_are_cached_per_protocol_and_weights(tmp_path):
  variables = inception.random_variables(seed=0)
  rng = np.random.default_rng(0)
  real = fid.RealSet(rng.integers(0, 256, (6, 28, 28, 1), dtype=np.uint8), 'mnist', 'test', 3)
  calls = []

  def extractor(preprocessing):
    ex = inception.FeatureExtractor(variables, batch_size=6, preprocessing=preprocessing)
    counted = lambda images: calls.append(len(images)) or ex(images)  # pylint: disable=unnecessary-lambda-assignment
    counted.preprocessing, counted.compute_dtype = ex.preprocessing, ex.compute_dtype
    return counted

  first = fid.real_stats(str(tmp_path), real, extractor('tf_graph'), 'a' * 64, write=True)
  again = fid.real_stats(str(tmp_path), real, extractor('tf_graph'), 'a' * 64, write=True)
  assert calls == [6]  # The second came from the cache...
  np.testing.assert_array_equal(first.sigma, again.sigma)
  fid.real_stats(str(tmp_path), real, extractor('pytorch_fid'), 'a' * 64, write=True)
  fid.real_stats(str(tmp_path), real, extractor('tf_graph'), 'b' * 64, write=True)
  assert calls == [6, 6, 6]  # ...but another protocol or other weights are not mixed in.
  names = sorted(os.listdir(tmp_path / 'fid_stats'))
  assert len(names) == 3
  assert names[0].startswith('mnist_test_n6_seed3_pytorch_fid_float32_waaaaaaaaaaaa_')
  assert frechet.frechet_distance_from_stats(first, again) == pytest.approx(0.0, abs=1e-6)
