"""TensorFlow is optional: the base install's data path (array_record, NumPy batches, npz latents).

One test runs the smoke pipeline (`python -m tsvae.main`, both stages, latents, sample grids and
the evaluation) in a subprocess where `import tensorflow` fails (tests/no_tf_site hides it). The
others check, in this process (TensorFlow installed), that the TensorFlow-free readers give
the same arrays as the tf.data ones: the array_record local builders (pixel-identical to the IDX
files and to the tfrecord + tf.data route on the real MNIST), `NumpyBatches` vs tf.data epochs,
npz vs tfrecord latents, and the prepared-arrays route (tsvae.datasets.arrays).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_data
from testdata import tiny_flags, write_idx, write_mnist_dir
from tsvae import input_pipeline as ip
from tsvae.datasets import arrays
from tsvae.datasets import tf_optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDE_SITE = os.path.join(REPO_ROOT, 'tests', 'no_tf_site')


def hidden_env(modules='tensorflow', **extra):
  """os.environ for a subprocess that cannot import `modules` (tests/no_tf_site)."""
  env = dict(os.environ, TSVAE_HIDE_MODULES=modules, **extra)
  env['PYTHONPATH'] = os.pathsep.join(
      [HIDE_SITE, REPO_ROOT] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  return env


@pytest.fixture(scope='module')
def mnist_local(tmp_path_factory):
  root = tmp_path_factory.mktemp('mnist_no_tf')
  data = write_mnist_dir(str(root / 'manual'), n_train=48, n_test=16)
  builder = ip.get_builder('mnist', data_dir=str(root / 'data'), manual_dir=str(root / 'manual'))
  return builder, data, root


@pytest.fixture
def without_tf(monkeypatch):
  """The pipeline behaves as if TensorFlow were absent (NumPy batches, npz latents)."""
  monkeypatch.setattr(tf_optional, 'available', lambda: False)


def _all(ds, key='image'):
  return [np.asarray(b[key]) for b in ip.as_numpy(ds)]


# ------------------------------------------------------------------- the smoke run, no TF


def test_smoke_run_without_tensorflow(tmp_path):
  """tsvae.main end to end (both stages, latents, grids, evaluation) where TF cannot be imported."""
  manual = str(tmp_path / 'manual')
  write_mnist_dir(manual, n_train=64, n_test=16)
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'tsvae.main', '--config=configs/mnist.py', f'--workdir={workdir}',
         f'--config.data.manual_dir={manual}', f'--config.data.data_dir={tmp_path / "tfds"}',
         *tiny_flags(steps_per_call=2, eval__enabled=True, eval__num_samples=16,
                     eval__cache_dir=str(tmp_path / 'cache'), eval__allow_download=False,
                     eval__classifier_epochs=1, eval__batch_size=64)]
  probe = subprocess.run([sys.executable, '-c', 'import tensorflow'], env=hidden_env(),
                         capture_output=True, text=True, timeout=120)
  assert probe.returncode != 0 and 'ModuleNotFoundError' in probe.stderr  # Really hidden.
  result = subprocess.run(cmd, cwd=REPO_ROOT, env=hidden_env(), capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  for name in ('stage2_samples.png', 'stage1_samples.png', 'reconstructions.png'):
    assert os.path.exists(os.path.join(workdir, 'samples', name))
  with open(os.path.join(workdir, 'latents', 'tsvae_latents.json')) as f:
    assert json.load(f)['file_format'] == 'npz'  # No TF: the latents are one .npz.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    stages = {json.loads(line)['stage'] for line in f}
  assert {'stage1', 'stage2'} <= stages
  # TensorBoard without TensorFlow (tensorboardX).
  assert os.listdir(os.path.join(workdir, 'tensorboard', 'stage1'))[0].startswith('events.out.')
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    metrics = json.load(f)
  assert np.isfinite(metrics['proxy_fd_stage2'])  # The proxy classifier read the labels.


def test_tensorflow_only_paths_name_the_extra():
  code = ('import numpy as np\n'
          'from tsvae import input_pipeline as ip\n'
          'for f in (lambda: ip.corrupt_images(np.zeros((1, 4, 4, 1)), [0], 0.5, 0),\n'
          '          lambda: ip.get_builder("celeba")):\n'
          '  try:\n'
          '    f()\n'
          '  except ip.TensorFlowRequired as e:\n'
          '    print("REQUIRED:", e)\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, env=hidden_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith('REQUIRED:')]
  assert len(lines) == 2, result.stdout
  assert all("pip install 'tsvae[tf]'" in l for l in lines)
  assert 'Outlier corruption' in lines[0] and 'celeb_a' in lines[1]


# ------------------------------------------------------- array_record: same arrays as TF


def test_local_builder_writes_array_record_png(mnist_local):
  builder, data, _ = mnist_local
  assert str(builder.version) == '1.1.0' and ip._is_array_record(builder)
  source = builder.as_data_source(split='train')
  images, labels = ip.labeled_images(builder, 'train', 'mnist')
  np.testing.assert_array_equal(images[..., 0], data['train'][0])
  np.testing.assert_array_equal(labels, data['train'][1])
  assert len(source) == 48 and images.dtype == np.uint8 and images.shape == (48, 28, 28, 1)
  assert ip.num_examples(builder, 'test') == 16


def test_real_mnist_array_record_equals_tf_route(tmp_path):
  """Real MNIST digits: array_record (PNG by Pillow, data_source) = IDX = tfrecord + tf.data.

  The real files are validated and read whole; the three routes then run on every 30th train
  and every 20th test digit (2,000 + 500 real images, written as IDX files), which exercises the
  same encoders and decoders as all 70,000 at a thirtieth of the time."""
  real_dir = shared_data('mnist')
  from tsvae.datasets import local_builders  # pylint: disable=g-import-not-at-top
  real = local_builders.validate_manual_dir('mnist', real_dir)
  subset = {}
  for split, n, stride in (('train', 60_000, 30), ('test', 10_000, 20)):
    assert real[split]['num_examples'] == n
    images = local_builders._read_idx_array('mnist', real[split]['images'], n, (28, 28))
    labels = local_builders._read_idx_array('mnist', real[split]['labels'], n, ())
    subset[split] = (images[::stride], labels[::stride])
  manual_dir = str(tmp_path / 'manual')
  os.makedirs(manual_dir)
  for split, (images, labels) in subset.items():
    images_name, labels_name = local_builders.IDX_FILES[split]
    write_idx(os.path.join(manual_dir, images_name), images, 2051)
    write_idx(os.path.join(manual_dir, labels_name), labels, 2049)
  builder = ip.get_builder('mnist', data_dir=str(tmp_path / 'ar'), manual_dir=manual_dir)
  tf_builder = None
  if tf_optional.available():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tf_builder = local_builders.TsvaeMnist(data_dir=str(tmp_path / 'tfr'), file_format='tfrecord')
    tf_builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  for split, (idx_images, idx_labels) in subset.items():
    images, labels = ip.labeled_images(builder, split, 'mnist')
    assert images.shape == (len(idx_images), 28, 28, 1)
    np.testing.assert_array_equal(images[..., 0], idx_images)
    np.testing.assert_array_equal(labels, idx_labels)
    if tf_builder is not None:  # The TF route: tfrecord files, tf.data, TF's PNG decoder.
      tf_images, tf_labels = ip.labeled_images(tf_builder, split, 'mnist')
      np.testing.assert_array_equal(images, tf_images)
      np.testing.assert_array_equal(labels, tf_labels)
      np.testing.assert_array_equal(ip._load_uint8_tf(tf_builder, split, 'mnist', 0, 1), images)
  if tf_builder is None:
    pytest.skip('TensorFlow not installed: the tfrecord comparison did not run')


# ------------------------------------- in-memory epochs are NumPy batches, npz latents


def test_in_memory_epochs_are_numpy_batches_of_the_stored_rows(mnist_local):
  """With TensorFlow installed too: no tf.data for in-memory data; the values are the stored
  uint8 images (/ 255, correctly rounded) in the epoch's host order, process p's 1/P of each."""
  builder, _, _ = mnist_local
  images = ip.training_images(builder, 'train', 'mnist')
  for kwargs in (dict(epoch=0), dict(epoch=3, skip_batches=2), dict(shuffle_seed=None),
                 dict(epoch=1, process_index=1, process_count=2)):
    args = dict(dataset='mnist', global_batch_size=8, shuffle_seed=5, epoch=0, process_index=0,
                process_count=1)
    args.update(kwargs)
    ds = ip.make_image_dataset(builder, 'train', **args)
    assert isinstance(ds, ip.NumpyBatches)
    rows = ip.epoch_rows(len(images), 8, args['shuffle_seed'], args['epoch'])
    rows = rows[args.get('skip_batches', 0):]
    rows = rows.reshape(len(rows), args['process_count'], -1)[:, args['process_index']]
    got = _all(ds)
    assert len(got) == len(ds) == len(rows)
    for x, r in zip(got, rows):
      assert x.dtype == np.float32
      np.testing.assert_array_equal(x, images[r].astype(np.float32) / np.float32(255))
  test_images = ip.training_images(builder, 'test', 'mnist')
  for as_uint8 in (False, True):
    ds = ip.make_eval_dataset(builder, 'test', 'mnist', 5, as_uint8=as_uint8)
    assert isinstance(ds, ip.NumpyBatches)
    got = np.concatenate(_all(ds))
    want = test_images if as_uint8 else test_images.astype(np.float32) / np.float32(255)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_latents_npz_round_trip_and_damage(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  mu = rng.normal(size=(20, 4)).astype(np.float32)
  sigma = rng.uniform(size=(20, 4)).astype(np.float32)
  monkeypatch.setattr(tf_optional, 'available', lambda: False)
  directory = ip.write_latent_dataset(str(tmp_path / 'latents'), mu, sigma)  # npz by default.
  assert sorted(os.listdir(directory)) == ['tsvae_latents.json', 'tsvae_latents.npz']
  latents = ip.read_latent_dataset_builder(directory)
  assert latents.file_format == 'npz' and latents.num_examples == 20
  np.testing.assert_array_equal(latents.load()['mu'], mu)
  np.testing.assert_array_equal(latents.load(5, 3)['sigma'], sigma[5:8])
  batches = list(ip.as_numpy(ip.make_latent_dataset(
      latents, global_batch_size=4, shuffle_seed=2, epoch=1, process_index=0, process_count=1)))
  rows = ip.epoch_rows(20, 4, 2, 1)
  np.testing.assert_array_equal(np.stack([b['mu'] for b in batches]), mu[rows])
  monkeypatch.undo()
  if tf_optional.available():  # tfrecord latents of the same arrays give the same batches.
    tf_dir = ip.write_latent_dataset(str(tmp_path / 'tf_latents'), mu, sigma, 'tfrecord')
    tf_batches = list(ip.as_numpy(ip.make_latent_dataset(
        tf_dir, global_batch_size=4, shuffle_seed=2, epoch=1, process_index=0,
        process_count=1)))
    for x, y in zip(batches, tf_batches, strict=True):
      np.testing.assert_array_equal(x['sigma'], y['sigma'])
  with pytest.raises(ValueError, match="unknown latent file_format 'parquet'"):
    ip.write_latent_dataset(str(tmp_path / 'other'), mu, sigma, 'parquet')
  assert not os.path.exists(tmp_path / 'other')
  with open(os.path.join(directory, 'tsvae_latents.npz'), 'r+b') as f:
    f.seek(-8, os.SEEK_END)
    f.write(b'\0' * 8)
  with pytest.raises(ip.CorruptLatents, match='tsvae_latents.npz'):
    ip.read_latent_dataset_builder(directory)


# --------------------------------------------------------------------- prepared arrays


def test_prepared_arrays_route(mnist_local, tmp_path, without_tf):
  builder, data, _ = mnist_local
  out = str(tmp_path / 'arrays')
  path = arrays.write_arrays(out, 'mnist', {s: ip.labeled_images(builder, s, 'mnist')
                                            for s in ('train', 'test')}, source='test')
  assert path.endswith('tsvae_mnist.npz')
  ip.validate_manual_dir('mnist', out)
  prepared = ip.get_builder('mnist', manual_dir=out)
  assert isinstance(prepared, arrays.ArraysBuilder)
  assert ip.num_examples(prepared, 'train') == 48
  args = dict(dataset='mnist', global_batch_size=8, shuffle_seed=1, epoch=2, process_index=0,
              process_count=1)
  for x, y in zip(_all(ip.make_image_dataset(prepared, 'train', **args)),
                  _all(ip.make_image_dataset(builder, 'train', **args)), strict=True):
    np.testing.assert_array_equal(x, y)
  images, labels = ip.labeled_images(prepared, 'test', 'mnist')
  np.testing.assert_array_equal(images[..., 0], data['test'][0])
  np.testing.assert_array_equal(labels, data['test'][1])
  np.savez(os.path.join(out, 'tsvae_mnist.npz'), train_image=np.zeros((2, 28, 28, 1), np.uint8))
  with pytest.raises(ip.DataError, match='lacks train_label'):
    ip.validate_manual_dir('mnist', out)
