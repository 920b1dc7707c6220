"""Tests of tsvae.input_pipeline and the local tfds builders (tsvae.datasets).

Everything is written under pytest tmp dirs (data_dir is always passed; under
`tfds.testing.mock_data` tfds redirects data_dir itself and writes nothing).
"""

import io
import json
import os
import tempfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tsvae import input_pipeline as ip
from tsvae.datasets import DataError
from tsvae.datasets import validate_manual_dir

from testdata import N_TEST, N_TRAIN, write_idx as _write_idx, write_mnist_dir as _write_mnist_dir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO_ROOT, '..', 'shared', 'data')

# ---------------------------------------------------------------------------------------------
# Synthetic data.


def _jpeg(array, quality=75):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def _decode(data):
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


CIFAR_CLASSES = ('airplane', 'cat', 'truck')  # Labels 0, 3, 9.


def _cifar_members(per_class=(3, 2)):
  rng = np.random.default_rng(5)
  members = {}
  for split, count in zip(('train', 'test'), per_class):
    for cls in CIFAR_CLASSES:
      for i in range(count):
        members[f'{split}/{cls}/{i:04d}.jpg'] = _jpeg(
            rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
  return members


def _write_zip(path, members, dirs=True):
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
    if dirs:  # Like the real archive: folder entries too.
      for d in sorted({m.rsplit('/', 1)[0] + '/' for m in members}):
        z.writestr(d, b'')
    for name, data in members.items():
      z.writestr(name, data)


CELEBA_PARTITION = {'000001.jpg': 0, '000002.jpg': 0, '000003.jpg': 1, '000004.jpg': 0,
                    '000005.jpg': 2, '000006.jpg': 0, '000007.jpg': 2}


def _celeba_images():
  rng = np.random.default_rng(7)
  return {n: _jpeg(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8), quality=95)
          for n in CELEBA_PARTITION}


def _write_celeba_dir(directory, images, as_zip=False):
  os.makedirs(directory, exist_ok=True)
  # Unsorted on purpose: the split must come out in sorted file-name order.
  with open(os.path.join(directory, 'list_eval_partition.txt'), 'w') as f:
    for name in sorted(CELEBA_PARTITION, reverse=True):
      f.write(f'{name} {CELEBA_PARTITION[name]}\n')
  if as_zip:
    _write_zip(os.path.join(directory, 'img_align_celeba.zip'),
               {f'img_align_celeba/{n}': d for n, d in images.items()})
  else:
    os.makedirs(os.path.join(directory, 'img_align_celeba'))
    for name, data in images.items():
      with open(os.path.join(directory, 'img_align_celeba', name), 'wb') as f:
        f.write(data)


def _images(ds):
  return np.concatenate([b['image'] for b in ds.as_numpy_iterator()])


def _batches(ds):
  return [b['image'] for b in ds.as_numpy_iterator()]


def _stored(builder, split):
  """The examples as stored (array_record, read by tfds.data_source: no TensorFlow)."""
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


# ---------------------------------------------------------------------------------------------
# Module fixtures: tiny prepared local builders.


@pytest.fixture(scope='module', autouse=True)
def _private_tempdir(tmp_path_factory):
  """tfds leaves an empty `tempfile.mkdtemp('tfds')` behind per unprepared builder: keep it here."""
  saved = tempfile.tempdir
  tempfile.tempdir = str(tmp_path_factory.mktemp('tempfile'))
  yield
  tempfile.tempdir = saved


@pytest.fixture(scope='module')
def mnist_local(tmp_path_factory):
  root = tmp_path_factory.mktemp('mnist')
  data = _write_mnist_dir(str(root / 'manual'))
  builder = ip.get_builder('mnist', data_dir=str(root / 'data'),
                           manual_dir=str(root / 'manual'))
  return builder, data, root


@pytest.fixture(scope='module')
def celeba_local(tmp_path_factory):
  root = tmp_path_factory.mktemp('celeba')
  images = _celeba_images()
  _write_celeba_dir(str(root / 'manual'), images)
  builder = ip.get_builder('celeba', data_dir=str(root / 'data'),
                           manual_dir=str(root / 'manual'))
  return builder, images


# ---------------------------------------------------------------------------------------------
# Names and shapes.


def test_image_shapes_and_unknown_dataset():
  assert ip.DATASETS == ('mnist', 'fashion_mnist', 'cifar10', 'celeba', 'celeba140')
  assert ip.image_shape('mnist') == (28, 28, 1)
  assert ip.image_shape('fashion_mnist') == (28, 28, 1)
  assert ip.image_shape('cifar10') == (32, 32, 3)
  assert ip.image_shape('celeba') == (64, 64, 3)
  assert ip.image_shape('celeba140') == (64, 64, 3)
  with pytest.raises(ValueError, match=r"Did you mean 'cifar10'\?") as e:
    ip.image_shape('cifar_10')
  assert 'fashion_mnist' in str(e.value)  # Lists the known ones.


# ---------------------------------------------------------------------------------------------
# MNIST-format local builder.


def test_local_mnist_builder(mnist_local):
  builder, data, _ = mnist_local
  assert builder.name == 'tsvae_mnist'
  assert ip.num_examples(builder, 'train') == N_TRAIN
  assert ip.num_examples(builder, 'test') == N_TEST
  for split in ('train', 'test'):
    images, labels = data[split]
    got = _images(ip.make_eval_dataset(builder, split, 'mnist', batch_size=5))
    assert got.dtype == np.float32 and got.shape == (len(images), 28, 28, 1)
    assert 0.0 <= got.min() and got.max() <= 1.0
    np.testing.assert_array_equal(got[..., 0], images / np.float32(255))  # IDX order kept.
    as_uint8 = _images(ip.make_eval_dataset(builder, split, 'mnist', 5, as_uint8=True))
    np.testing.assert_array_equal(as_uint8[..., 0], images)
    stored = _stored(builder, split)
    np.testing.assert_array_equal([int(ex['label']) for ex in stored], labels)
    np.testing.assert_array_equal(np.stack([ex['image'] for ex in stored])[..., 0], images)


def test_get_builder_reuses_prepared_data(mnist_local, tmp_path):
  _, _, root = mnist_local
  # The manual dir is no longer needed once the data is prepared in data_dir.
  builder = ip.get_builder('mnist', data_dir=str(root / 'data'), manual_dir=str(tmp_path))
  assert ip.num_examples(builder, 'train') == N_TRAIN


def test_mnist_missing_file_is_a_data_error(tmp_path):
  _write_mnist_dir(str(tmp_path))
  os.remove(tmp_path / 't10k-labels-idx1-ubyte.gz')
  with pytest.raises(DataError, match=r'missing: t10k-labels-idx1-ubyte\.gz') as e:
    validate_manual_dir('mnist', str(tmp_path))
  assert 'train-images-idx3-ubyte.gz' in str(e.value)  # Says everything that belongs there.
  # get_builder checks before preparing anything.
  data_dir = tmp_path / 'data'
  with pytest.raises(DataError, match='t10k-labels-idx1-ubyte.gz'):
    ip.get_builder('mnist', data_dir=str(data_dir), manual_dir=str(tmp_path))
  assert not (data_dir / 'tsvae_mnist' / '1.1.0' / 'dataset_info.json').exists()
  # The builders themselves raise the same error when used directly.
  from tsvae.datasets import TsvaeMnist  # pylint: disable=g-import-not-at-top
  with pytest.raises(DataError, match='missing: t10k-labels-idx1-ubyte.gz'):
    TsvaeMnist(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))
  with pytest.raises(DataError, match='does not exist'):
    TsvaeMnist(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'nowhere')))
  with pytest.raises(DataError, match='does not exist'):
    validate_manual_dir('fashion_mnist', str(tmp_path / 'nowhere'))


def test_mnist_wrong_magic_shape_or_count_is_a_data_error(tmp_path):
  _write_mnist_dir(str(tmp_path))
  path = str(tmp_path / 'train-images-idx3-ubyte.gz')
  _write_idx(path, np.zeros((N_TRAIN, 28, 28)), 2049)  # Labels magic on an images file.
  with pytest.raises(DataError, match='magic number 2049'):
    validate_manual_dir('mnist', str(tmp_path))
  _write_idx(path, np.zeros((N_TRAIN, 32, 32)), 2051)
  with pytest.raises(DataError, match='32x32 images'):
    validate_manual_dir('mnist', str(tmp_path))
  _write_idx(path, np.zeros((N_TRAIN + 1, 28, 28)), 2051)
  with pytest.raises(DataError, match=f'{N_TRAIN + 1} images but'):
    validate_manual_dir('mnist', str(tmp_path))
  with open(path, 'wb') as f:
    f.write(b'not gzip at all')
  with pytest.raises(DataError, match='not a readable IDX file'):
    validate_manual_dir('mnist', str(tmp_path))


def test_real_mnist_offline_route(tmp_path):
  manual_dir = os.path.join(SHARED_DATA, 'mnist')
  if not os.path.isdir(manual_dir):
    pytest.skip(f'{manual_dir} not present')
  builder = ip.get_builder('mnist', data_dir=str(tmp_path), manual_dir=manual_dir)
  assert builder.info.splits['train'].num_examples == 60_000
  assert builder.info.splits['test'].num_examples == 10_000
  first = builder.as_data_source(split='test')[0]
  assert int(first['label']) == 7
  assert first['image'].shape == (28, 28, 1) and first['image'].dtype == np.uint8


def test_real_fashion_mnist_files_validate():
  manual_dir = os.path.join(SHARED_DATA, 'fashion_mnist')
  if not os.path.isdir(manual_dir):
    pytest.skip(f'{manual_dir} not present')
  spec = validate_manual_dir('fashion_mnist', manual_dir)  # Headers only; no full build.
  assert spec['train']['num_examples'] == 60_000 and spec['test']['num_examples'] == 10_000


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and CelebA local builders.


@pytest.mark.parametrize('form', ['zip', 'folders'])
def test_local_cifar10_builder(tmp_path, form):
  members = _cifar_members()
  manual = tmp_path / 'manual'
  manual.mkdir()
  if form == 'zip':
    _write_zip(str(manual / 'cifar10_jpg_q75.zip'), members)
  else:
    for name, data in members.items():
      os.makedirs(manual / os.path.dirname(name), exist_ok=True)
      (manual / name).write_bytes(data)
  builder = ip.get_builder('cifar10', data_dir=str(tmp_path / 'data'), manual_dir=str(manual))
  for split in ('train', 'test'):
    names = sorted(m for m in members if m.startswith(split + '/'))
    stored = _stored(builder, split)
    assert len(stored) == len(names)
    for name, ex in zip(names, stored):  # Sorted path order; PIL decoding, kept losslessly.
      np.testing.assert_array_equal(ex['image'], _decode(members[name]))
      assert ex['label'] == ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                             'horse', 'ship', 'truck').index(name.split('/')[1])
  batch = _batches(ip.make_image_dataset(builder, 'train', dataset='cifar10',
                                         global_batch_size=4, shuffle_seed=0,
                                         process_index=0, process_count=1))
  assert len(batch) == 2 and batch[0].shape == (4, 32, 32, 3) and batch[0].dtype == np.float32


def test_cifar10_bad_manual_dir(tmp_path):
  with pytest.raises(DataError, match='cifar10_jpg_q75.zip'):
    validate_manual_dir('cifar10', str(tmp_path))
  _write_zip(str(tmp_path / 'cifar10_jpg_q75.zip'),
             {'train/kitten/0000.jpg': _jpeg(np.zeros((32, 32, 3), np.uint8)),
              'test/cat/0000.jpg': _jpeg(np.zeros((32, 32, 3), np.uint8))})
  with pytest.raises(DataError, match="unknown class folders \\['kitten'\\]"):
    validate_manual_dir('cifar10', str(tmp_path))
  _write_zip(str(tmp_path / 'cifar10_jpg_q75.zip'),
             {'train/cat/0000.jpg': _jpeg(np.zeros((32, 32, 3), np.uint8)),
              'test/cat/0000.jpg': _jpeg(np.zeros((16, 32, 3), np.uint8))})
  with pytest.raises(DataError, match='32x16 pixels'):
    validate_manual_dir('cifar10', str(tmp_path))


def test_local_celeba_builder_and_crops(celeba_local):
  builder, images = celeba_local
  expected = {s: sorted(n for n, p in CELEBA_PARTITION.items() if p == i)
              for i, s in enumerate(('train', 'validation', 'test'))}
  for split, names in expected.items():
    assert ip.num_examples(builder, split) == len(names)
  test_images = _images(ip.make_eval_dataset(builder, 'test', 'celeba', 8, as_uint8=True))
  assert test_images.shape == (2, 64, 64, 3) and test_images.dtype == np.uint8
  for dataset, (y0, y1, x0, x1) in ip.CELEBA_CROPS.items():
    got = _images(ip.make_eval_dataset(builder, 'test', dataset, 8, as_uint8=True))
    for name, image in zip(expected['test'], got):  # Sorted file-name order.
      full = _decode(images[name])
      np.testing.assert_array_equal(image, ip.preprocess_image(full, dataset, True).numpy())
      # Same as the authors' resize (PIL bilinear) up to rounding.
      pil = np.asarray(Image.fromarray(full[y0:y1, x0:x1]).resize((64, 64), Image.BILINEAR))
      assert np.abs(image.astype(int) - pil).max() <= 1
    batches = _batches(ip.make_image_dataset(builder, 'train', dataset=dataset,
                                             global_batch_size=2, shuffle_seed=3,
                                             process_index=0, process_count=1))
    assert [b.shape for b in batches] == [(2, 64, 64, 3)] * 2
    assert batches[0].dtype == np.float32 and 0 <= batches[0].min() <= batches[0].max() <= 1


def test_celeba_zip_form_and_errors(tmp_path):
  images = _celeba_images()
  _write_celeba_dir(str(tmp_path / 'zip'), images, as_zip=True)
  spec = validate_manual_dir('celeba140', str(tmp_path / 'zip'))
  assert spec['num_examples'] == {'train': 4, 'validation': 1, 'test': 2}
  builder = ip.get_builder('celeba140', data_dir=str(tmp_path / 'data'),
                           manual_dir=str(tmp_path / 'zip'))
  assert builder.name == 'tsvae_celeb_a' and ip.num_examples(builder, 'test') == 2

  bad = tmp_path / 'bad'
  _write_celeba_dir(str(bad), images)
  os.remove(bad / 'img_align_celeba' / '000005.jpg')
  with pytest.raises(DataError, match='1 of the 7 images .* missing .* 000005.jpg'):
    validate_manual_dir('celeba', str(bad))
  (bad / 'img_align_celeba' / '000005.jpg').write_bytes(images['000005.jpg'])
  (bad / 'img_align_celeba' / '000001.jpg').write_bytes(
      _jpeg(np.zeros((64, 64, 3), np.uint8)))
  with pytest.raises(DataError, match='000001.jpg is 64x64 pixels'):
    validate_manual_dir('celeba', str(bad))
  os.remove(bad / 'list_eval_partition.txt')
  with pytest.raises(DataError, match='missing: list_eval_partition.txt'):
    ip.get_builder('celeba', data_dir=str(tmp_path / 'data2'), manual_dir=str(bad))


# ---------------------------------------------------------------------------------------------
# Batching under tfds mock data (the stock builders, no files).


def test_mock_data_batches_and_drop_remainder():
  with tfds.testing.mock_data(num_examples=37):
    builder = ip.get_builder('mnist')
    assert ip.num_examples(builder, 'train') == 37
    ds = ip.make_image_dataset(builder, 'train', dataset='mnist', global_batch_size=8,
                               shuffle_seed=0, process_index=0, process_count=1)
    batches = _batches(ds)
    assert int(ds.cardinality()) == 4
    assert [b.shape for b in batches] == [(8, 28, 28, 1)] * 4  # 37 = 4 * 8 + 5 dropped.
    assert batches[0].dtype == np.float32 and 0 <= batches[0].min() <= batches[0].max() <= 1
    ds = ip.make_image_dataset(builder, 'train', dataset='mnist', global_batch_size=8,
                               drop_remainder=False, process_index=0, process_count=1)
    assert [b.shape[0] for b in _batches(ds)] == [8, 8, 8, 8, 5]
    # Two processes: local batch 4 from a global batch of 8.
    ds = ip.make_image_dataset(builder, 'train', dataset='mnist', global_batch_size=8,
                               process_index=1, process_count=2)
    assert _batches(ds)[0].shape == (4, 28, 28, 1)
    with pytest.raises(ValueError, match='not divisible'):
      ip.make_image_dataset(builder, 'train', dataset='mnist', global_batch_size=7,
                            process_index=0, process_count=2)
    with pytest.raises(ValueError, match='fewer than one batch'):
      ip.make_image_dataset(builder, 'train', dataset='mnist', global_batch_size=64,
                            process_index=0, process_count=1)


def test_mock_data_celeba_streaming():
  with tfds.testing.mock_data(num_examples=10):
    builder = ip.get_builder('celeba')
    batches = _batches(ip.make_image_dataset(builder, 'train', dataset='celeba',
                                             global_batch_size=4, shuffle_seed=1,
                                             process_index=0, process_count=1))
    assert [b.shape for b in batches] == [(4, 64, 64, 3)] * 2


# ---------------------------------------------------------------------------------------------
# Determinism, resumption and process sharding.


def _epoch(builder, dataset, **kwargs):
  args = dict(dataset=dataset, global_batch_size=4, shuffle_seed=11, epoch=0,
              process_index=0, process_count=1)
  args.update(kwargs)
  return _batches(ip.make_image_dataset(builder, 'train', **args))


@pytest.mark.parametrize('in_memory', [True, False])
def test_order_is_a_pure_function_of_seed_and_epoch(mnist_local, in_memory):
  builder, _, root = mnist_local
  run = lambda b, **kw: _epoch(b, 'mnist', in_memory=in_memory, **kw)
  epoch0, epoch1 = run(builder, epoch=0), run(builder, epoch=1)
  assert len(epoch0) == N_TRAIN // 4
  np.testing.assert_array_equal(run(builder, epoch=0), epoch0)
  assert not np.array_equal(epoch0, epoch1)
  ids = lambda batches: sorted(np.concatenate(batches)[:, 0, 0, 0].round(6))
  assert ids(epoch0) == ids(epoch1)  # A permutation of the same examples.
  assert not np.array_equal(run(builder, shuffle_seed=12), epoch0)
  # A fresh builder (nothing cached, nothing iterated before) sees the same epoch 1.
  fresh = ip.get_builder('mnist', data_dir=str(root / 'data'), manual_dir=str(root / 'x'))
  np.testing.assert_array_equal(run(fresh, epoch=1), epoch1)
  # Resuming at (epoch 1, batch 3) gives the rest of the uninterrupted epoch 1.
  np.testing.assert_array_equal(run(builder, epoch=1, skip_batches=3), epoch1[3:])
  assert run(builder, epoch=1, skip_batches=len(epoch1)) == []


def test_streaming_resume_celeba(celeba_local):
  builder, _ = celeba_local
  full = _epoch(builder, 'celeba', global_batch_size=1, epoch=2)
  assert len(full) == 4
  np.testing.assert_array_equal(_epoch(builder, 'celeba', global_batch_size=1, epoch=2), full)
  np.testing.assert_array_equal(
      _epoch(builder, 'celeba', global_batch_size=1, epoch=2, skip_batches=1), full[1:])


@pytest.mark.parametrize('in_memory', [True, False])
def test_process_shards_are_disjoint_and_cover_the_split(mnist_local, in_memory):
  builder, data, _ = mnist_local
  ids = []
  for process_index in range(2):
    batches = _epoch(builder, 'mnist', global_batch_size=4, process_index=process_index,
                     process_count=2, in_memory=in_memory)
    assert {b.shape for b in batches} == {(2, 28, 28, 1)}  # Local batch = 4 // 2.
    assert len(batches) == N_TRAIN // 4  # Same number of batches on every process.
    ids.append({int(round(x * 255)) for x in np.concatenate(batches)[:, 0, 0, 0]})
  assert not ids[0] & ids[1]
  assert ids[0] | ids[1] == set(data['train'][0][:, 0, 0].tolist())


def test_eval_subset(mnist_local):
  builder, data, _ = mnist_local
  ds = ip.make_eval_dataset(builder, 'train', 'mnist', batch_size=4, as_uint8=True,
                            num_examples=10, seed=1)
  batches = _batches(ds)
  assert [b.shape[0] for b in batches] == [4, 4, 2]  # Last batch partial.
  ids = np.concatenate(batches)[:, 0, 0, 0]
  assert len(set(ids.tolist())) == 10 and list(ids) == sorted(ids)  # Split order.
  again = np.concatenate(_batches(ip.make_eval_dataset(builder, 'train', 'mnist', 4, True, 10,
                                                       1)))[:, 0, 0, 0]
  np.testing.assert_array_equal(ids, again)
  with pytest.raises(ValueError, match='num_examples'):
    ip.make_eval_dataset(builder, 'train', 'mnist', 4, num_examples=N_TRAIN + 1)


# ---------------------------------------------------------------------------------------------
# Stage-2 latent datasets.


def _latents(n=26, k=5, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, k)).astype(np.float32),
          rng.uniform(0.01, 1, size=(n, k)).astype(np.float32))


def _check_latent_round_trip(directory, file_format='npz'):
  mu, sigma = _latents()
  assert ip.write_latent_dataset(directory, mu, sigma, file_format) == os.path.abspath(directory)
  latents = ip.read_latent_dataset_builder(directory)
  assert latents.file_format == file_format
  assert (latents.num_examples, latents.latent_dim) == (26, 5)
  assert ip.num_examples(latents, 'train') == 26
  ds = ip.make_latent_dataset(latents, global_batch_size=4, shuffle_seed=None, epoch=0,
                              skip_batches=0, drop_remainder=False, process_index=0,
                              process_count=1)
  batches = list(ds.as_numpy_iterator())
  assert [b['mu'].shape for b in batches] == [(4, 5)] * 6 + [(2, 5)]
  np.testing.assert_array_equal(np.concatenate([b['mu'] for b in batches]), mu)
  np.testing.assert_array_equal(np.concatenate([b['sigma'] for b in batches]), sigma)
  return latents, mu, sigma


@pytest.mark.parametrize('file_format', ['npz', 'tfrecord'])
def test_latent_round_trip_determinism_and_sharding(tmp_path, file_format):
  directory = str(tmp_path / 'latents')
  latents, mu, sigma = _check_latent_round_trip(directory, file_format)
  if file_format == 'tfrecord':  # Readable as an ordinary tfds dataset too.
    stored = list(tfds.as_numpy(latents.as_tfds_builder().as_dataset(split='train')))
    np.testing.assert_array_equal(np.stack([ex['mu'] for ex in stored]), mu)

  def epoch(**kwargs):
    args = dict(global_batch_size=4, shuffle_seed=3, epoch=0, skip_batches=0, process_index=0,
                process_count=1)
    args.update(kwargs)
    return list(ip.make_latent_dataset(directory, **args).as_numpy_iterator())

  e0, e1 = epoch(), epoch(epoch=1)
  assert len(e0) == 6 and all(b['mu'].shape == (4, 5) for b in e0)  # 26 = 6 * 4 + 2 dropped.
  for a, b in zip(epoch(), e0):
    np.testing.assert_array_equal(a['mu'], b['mu'])
  assert not np.array_equal(e0[0]['mu'], e1[0]['mu'])
  for a, b in zip(epoch(epoch=1, skip_batches=2), e1[2:]):
    np.testing.assert_array_equal(a['sigma'], b['sigma'])
  # Rows stay paired: each (mu, sigma) row is one of the written rows.
  pairs = {tuple(m) + tuple(s) for m, s in zip(mu, sigma)}
  for b in e0:
    assert all(tuple(m) + tuple(s) in pairs for m, s in zip(b['mu'], b['sigma']))
  shards = [np.concatenate([b['mu'] for b in epoch(global_batch_size=2, process_index=i,
                                                   process_count=2, shuffle_seed=None)])
            for i in range(2)]
  # Process p holds the p-th half of every global batch: interleaved, they are the rows in order.
  np.testing.assert_array_equal(np.stack(shards, 1).reshape(-1, 5), mu)
  # The global batches do not depend on the process count.
  one = np.concatenate([b['mu'] for b in epoch(global_batch_size=4)])
  two = [np.concatenate([b['mu'] for b in epoch(global_batch_size=4, process_index=i,
                                                process_count=2)]) for i in range(2)]
  np.testing.assert_array_equal(np.stack([t.reshape(-1, 2, 5) for t in two], 1).reshape(-1, 5),
                                one)
  # Rewriting replaces the data as a whole.
  mu2, sigma2 = _latents(n=8, k=5, seed=1)
  ip.write_latent_dataset(directory, mu2, sigma2)
  np.testing.assert_array_equal(ip.read_latent_dataset_builder(directory).load()['mu'], mu2)
  assert sorted(os.listdir(tmp_path)) == ['latents']  # No temporary folders left behind.


def test_latent_dataset_absent_or_incomplete(tmp_path):
  with pytest.raises(DataError, match='does not exist'):
    ip.read_latent_dataset_builder(str(tmp_path / 'nothing'))
  with pytest.raises(DataError, match='does not exist'):
    ip.make_latent_dataset(str(tmp_path / 'nothing'), global_batch_size=2, shuffle_seed=0,
                           epoch=0, skip_batches=0, process_index=0, process_count=1)
  directory = tmp_path / 'latents'
  ip.write_latent_dataset(str(directory), *_latents(), 'tfrecord')
  shard = next(p for p in directory.iterdir() if '.tfrecord-' in p.name)
  shard.write_bytes(shard.read_bytes()[:-10])  # Truncated after it was complete: corrupt.
  with pytest.raises(ip.CorruptLatents, match=f'is corrupt: {shard.name} has'):
    ip.read_latent_dataset_builder(str(directory))
  os.remove(directory / 'tsvae_latents.json')  # As if the writer died before the end.
  with pytest.raises(DataError, match='incomplete'):
    ip.read_latent_dataset_builder(str(directory))


def test_latents_are_real_under_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=3):
    _check_latent_round_trip(str(tmp_path / 'latents'))
    _check_latent_round_trip(str(tmp_path / 'tf_latents'), 'tfrecord')


# ---------------------------------------------------------------------------------------------
# Outlier corruption of the training split (robust-PCA demo).

FRACTION = 0.25


def _pairs(builder, dataset, **kwargs):
  """(clean, corrupted) images of one epoch, matched by position (the order is the same)."""
  clean = np.concatenate(_epoch(builder, dataset, **kwargs))
  dirty = np.concatenate(_epoch(builder, dataset, outlier_fraction=FRACTION, **kwargs))
  return clean, dirty


def _changed_pixels(clean, dirty):
  return np.any(clean != dirty, axis=-1).reshape(len(clean), -1).sum(axis=1)


@pytest.mark.parametrize('in_memory', [True, False])
def test_outliers_fraction_determinism_and_process_count(mnist_local, in_memory):
  builder, data, _ = mnist_local
  k = ip.outlier_pixel_count(FRACTION, 28, 28)
  assert k == 196
  by_id = {}
  for epoch in (0, 1):
    clean, dirty = _pairs(builder, 'mnist', epoch=epoch, in_memory=in_memory)
    assert dirty.shape == clean.shape and dirty.dtype == np.float32
    np.testing.assert_array_equal(_changed_pixels(clean, dirty), k)  # The share, exactly.
    assert 0.0 <= dirty.min() and dirty.max() <= 1.0
    for c, d in zip(clean, dirty):
      image_id = int(round(c[0, 0, 0] * 255))
      if image_id in by_id:  # The same image is corrupted the same way in every epoch.
        np.testing.assert_array_equal(d, by_id[image_id])
      by_id[image_id] = d
  assert len(by_id) == N_TRAIN
  # Two processes see the same corruption of each image (and other images than one process).
  for process_index in range(2):
    clean, dirty = _pairs(builder, 'mnist', epoch=1, in_memory=in_memory,
                          process_index=process_index, process_count=2)
    for c, d in zip(clean, dirty):
      np.testing.assert_array_equal(d, by_id[int(round(c[0, 0, 0] * 255))])
  other_seed = np.concatenate(_epoch(builder, 'mnist', epoch=1, in_memory=in_memory,
                                     outlier_fraction=FRACTION, outlier_seed=1))
  assert not np.array_equal(other_seed, dirty)
  if in_memory:  # What corrupt_images gives for (stored index) keys: the benchmark's reference.
    images = data['train'][0][..., None].astype(np.float32) / 255
    expected = ip.corrupt_images(images, np.arange(N_TRAIN), FRACTION, 0)
    for i in range(N_TRAIN):
      np.testing.assert_array_equal(by_id[int(data['train'][0][i, 0, 0])], expected[i])


def test_outliers_leave_the_test_split_and_zero_fraction_alone(mnist_local):
  builder, data, _ = mnist_local
  for fraction in (FRACTION, 1.0):
    batches = ip.make_image_dataset(builder, 'test', dataset='mnist', global_batch_size=4,
                                    process_index=0, process_count=1, outlier_fraction=fraction)
    np.testing.assert_array_equal(np.concatenate(_batches(batches))[..., 0],
                                  data['test'][0][:N_TEST // 4 * 4] / np.float32(255))
  clean = _epoch(builder, 'mnist', epoch=0)
  np.testing.assert_array_equal(_epoch(builder, 'mnist', epoch=0, outlier_fraction=0.0), clean)
  everything = np.concatenate(_epoch(builder, 'mnist', epoch=0, outlier_fraction=1.0))
  assert np.all(_changed_pixels(np.concatenate(clean), everything) >= 780)  # ~all 784 pixels.
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    ip.outlier_pixel_count(1.5, 28, 28)


def test_outliers_streamed_celeba(celeba_local):
  builder, _ = celeba_local
  k = ip.outlier_pixel_count(FRACTION, 64, 64)
  by_image = {}
  for epoch in (2, 3):
    clean, dirty = _pairs(builder, 'celeba', global_batch_size=1, epoch=epoch)
    assert len(clean) == 4
    np.testing.assert_array_equal(_changed_pixels(clean, dirty), k)
    for c, d in zip(clean, dirty):
      key = c.tobytes()
      if key in by_image:
        np.testing.assert_array_equal(d, by_image[key])
      by_image[key] = d
  assert len(by_image) == 4


def test_outlier_config_keys_validated_and_implicit(tmp_path):
  from testdata import tiny_config  # pylint: disable=g-import-not-at-top
  from tsvae import config_lib  # pylint: disable=g-import-not-at-top
  from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from tsvae import stages  # pylint: disable=g-import-not-at-top
  from tsvae import validation  # pylint: disable=g-import-not-at-top
  for key, value, match in (('data.outlier_fraction', 1.5, r'outlier_fraction.*\[0, 1\]'),
                            ('data.outlier_fraction', -0.1, r'outlier_fraction.*\[0, 1\]'),
                            ('data.outlier_seed', -1, 'outlier_seed'),
                            ('eval.expost_gmm_components', -1, 'expost_gmm_components')):
    with pytest.raises(config_lib.ConfigError, match=match):
      validation.validate_config(tiny_config(**{key.replace('.', '__'): value}), num_devices=1)
  # A workdir recorded before the keys existed is the clean-data experiment.
  config_lib.record_config(tiny_config(), str(tmp_path))
  path = tmp_path / config_lib.CONFIG_FILENAME
  recorded = json.loads(path.read_text())
  del recorded['data.outlier_fraction'], recorded['data.outlier_seed']
  path.write_text(json.dumps(recorded))
  config_lib.check_workdir(tiny_config(), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match='data.outlier_fraction'):
    config_lib.check_workdir(tiny_config(data__outlier_fraction=0.1), str(tmp_path))
  # Stage 1 trains on the corrupted images.
  config = tiny_config(data__outlier_fraction=FRACTION, data__outlier_seed=3)
  with tfds.testing.mock_data(num_examples=16):
    spec = stages.stage1_spec(experiment_lib.setup(config, str(tmp_path / 'run')))
    got = np.concatenate([b['image'] for b in spec.epoch_batches(0, 0)])

    def epoch0(**outliers):
      return np.concatenate(_batches(ip.make_image_dataset(
          ip.get_builder('mnist'), 'train', dataset='mnist', process_index=0, process_count=1,
          global_batch_size=config.batch_size, shuffle_seed=config.seed, **outliers)))

    np.testing.assert_array_equal(got, epoch0(outlier_fraction=FRACTION, outlier_seed=3))
    assert not np.array_equal(got, epoch0())
