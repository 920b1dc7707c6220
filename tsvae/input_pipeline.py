"""Data input pipeline: tfds builders, per-process sharded deterministic batches, stage-2 latents.

Datasets: 'mnist', 'fashion_mnist', 'cifar10', 'celeba', 'celeba140'.

* `get_builder` returns the stock tfds builder (downloads when online) or, given `manual_dir`,
  one of the local builders of `tsvae.datasets` (offline; see `validate_manual_dir`).
* `make_image_dataset` gives ONE epoch of training batches `{'image': float32 [b, H, W, C]}` in
  [0, 1], b = global_batch_size // process_count, each process reading its own disjoint,
  equally sized shard of the split. With a `shuffle_seed` the order of epoch `e` is a pure
  function of (shuffle_seed, e, process index/count): a run resumed at (epoch, skip_batches)
  sees exactly the batches an uninterrupted run would have seen from there on.
  - Small datasets (MNIST, Fashion-MNIST, CIFAR-10) are decoded once into host memory as uint8
    (kept per builder object) and each epoch is an exact full permutation of the shard drawn
    with NumPy from (seed, epoch, process_index); skipping batches is free.
  - CelebA streams: tfds file shuffling seeded via `tfds.ReadConfig(shuffle_seed=...)`, then a
    `shuffle(shuffle_buffer, seed, reshuffle_each_iteration=False)` over still-encoded JPEG
    bytes, skipping resumed batches before decoding, crop and resize.
* `training_images` and `epoch_rows` give the in-memory split and each epoch's global batches as
  row indices into it: the same order, for the train loop's device-resident data
  (`steps_per_call` > 1), which gathers its batches on the devices.
* `make_eval_dataset` gives deterministic batches in split order (last one may be partial),
  optionally of a seeded random subset.
* Stage-2 latents are stored by `write_latent_dataset` (atomically; one `.npz` by default, or
  a tfds-format tfrecord directory) and read back with `read_latent_dataset_builder` /
  `make_latent_dataset`. Reading goes straight to the files (never through
  `DatasetBuilder.as_dataset`), so the true values come back even inside
  `tfds.testing.mock_data`, which replaces every builder's `as_dataset` with random data.

TensorFlow is needed only where nothing else does the work (`tsvae.datasets.tf_optional`):
in-memory data sets (MNIST, Fashion-MNIST, CIFAR-10, and CelebA on a large host) are read from
the local builders' array_record files with `tfds.data_source` (or from prepared arrays,
`tsvae.datasets.arrays`), and `make_image_dataset`, `make_eval_dataset` and
`make_latent_dataset` return their epochs as `NumpyBatches`, with or without TensorFlow
installed; `as_numpy` iterates them and tf.data datasets alike. Streaming (CelebA,
`in_memory=False`), the stock builders that encode with TensorFlow, outlier corruption and
tfrecord files use tf.data, and raise `TensorFlowRequired` naming the `tf` extra without it.

Every data problem a user can fix (missing / malformed files) raises `DataError`.
"""

import difflib
import io
import json
import os
import shutil
import tempfile
import uuid
import weakref
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from tsvae import config_lib
from tsvae import epoch_order
from tsvae import faults
from tsvae import fileio
from tsvae.datasets import arrays as prepared_arrays
from tsvae.datasets import tf_optional
from tsvae.datasets import DataError
from tsvae.datasets.tf_optional import TensorFlowRequired

__all__ = [
    'DATASETS', 'DataError', 'LatentDataset', 'check_dataset', 'corrupt_images', 'epoch_rows',
    'get_builder', 'image_shape', 'make_eval_dataset', 'make_image_dataset', 'make_latent_dataset',
    'num_examples', 'outlier_pixel_count', 'preprocess_image', 'read_latent_dataset_builder',
    'training_images', 'validate_manual_dir', 'write_latent_dataset', 'CorruptLatents',
    'NumpyBatches', 'TensorFlowRequired', 'as_numpy', 'labeled_images'
]


def _tfds(what: Optional[str] = None):
  return tf_optional.tfds(what)


def _tf(what: str):
  return tf_optional.require(what)

DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'celeba', 'celeba140')

_IMAGE_SHAPES = {
    'mnist': (28, 28, 1),
    'fashion_mnist': (28, 28, 1),
    'cifar10': (32, 32, 3),
    'celeba': (64, 64, 3),
    'celeba140': (64, 64, 3),
}

# tfds builder used when no manual_dir is given (downloads when online).
STOCK_BUILDERS = {
    'mnist': 'mnist',
    'fashion_mnist': 'fashion_mnist',
    'cifar10': 'cifar10',
    'celeba': 'celeb_a',
    'celeba140': 'celeb_a',
}

# (y0, y1, x0, x1) crops of the 218x178 aligned CelebA images, then resized to 64x64.
CELEBA_CROPS = {
    'celeba': (45, 173, 25, 153),  # 128x128, the Two-Stage VAE authors' crop.
    'celeba140': (39, 179, 19, 159),  # 140x140, the WAE protocol.
}

# Datasets whose decoded uint8 split fits comfortably in host memory by default.
IN_MEMORY_DATASETS = ('mnist', 'fashion_mnist', 'cifar10')
DEFAULT_SHUFFLE_BUFFER = 50_000

LATENT_DATASET_NAME = 'tsvae_latents'
_LATENT_META_FILE = 'tsvae_latents.json'
_LATENT_FORMAT_VERSION = 1
_LATENT_NPZ_FILE = 'tsvae_latents.npz'  # The rows (file_format='npz', the default).
_SHARD_BYTES = 256 << 20


class CorruptLatents(DataError):
  """A latent dataset that was complete (its marker lists every file) but no longer matches."""


# ---------------------------------------------------------------------------------------------
# Dataset names and shapes.


def check_dataset(dataset: str) -> str:
  """Returns `dataset` if known, else raises ValueError listing the known names."""
  if dataset in DATASETS:
    return dataset
  close = difflib.get_close_matches(str(dataset), DATASETS, n=1)
  hint = f' Did you mean {close[0]!r}?' if close else ''
  raise ValueError(f'Unknown dataset {dataset!r}; known datasets: {", ".join(DATASETS)}.{hint}')


def image_shape(dataset: str) -> Tuple[int, int, int]:
  """(H, W, C) of the model's input images for `dataset`."""
  return _IMAGE_SHAPES[check_dataset(dataset)]


def validate_config(config):
  """Checks the data's keys of `config` (config.dataset, config.data.outlier_*); raises
  config_lib.ConfigError. (tsvae.validation runs these with every other check.)"""
  validate_dataset_config(config)
  validate_outlier_config(config)


def validate_dataset_config(config):
  config_lib.check_choice(config.dataset, DATASETS, 'dataset')


def validate_outlier_config(config):
  fraction = config.data.get('outlier_fraction', 0.0)
  if (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
      or not 0.0 <= fraction <= 1.0):
    raise config_lib.ConfigError(
        'config.data.outlier_fraction is the share of each training image\'s pixels replaced '
        f'by noise and must be in [0, 1], got {fraction!r}.')
  seed = config.data.get('outlier_seed', 0)
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    raise config_lib.ConfigError(
        f'config.data.outlier_seed must be a non-negative integer, got {seed!r}.')


# ---------------------------------------------------------------------------------------------
# Builders.


def validate_manual_dir(dataset: str, manual_dir: Any):
  """Cheap check of `manual_dir` for `dataset` (raises DataError saying what belongs there).

  A folder holding prepared arrays (`tsvae_<dataset>.npz`, `tsvae.datasets.arrays`) is checked
  as such; otherwise `tsvae.datasets.validate_manual_dir` checks the source files.
  """
  check_dataset(dataset)
  if prepared_arrays.has_arrays(manual_dir, dataset):
    return prepared_arrays.validate(manual_dir, dataset)
  from tsvae.datasets import local_builders  # pylint: disable=g-import-not-at-top  (tfds)
  return local_builders.validate_manual_dir(dataset, manual_dir)


def get_builder(dataset: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None):
  """A prepared tfds builder for `dataset`.

  Args:
    dataset: one of `DATASETS`; 'celeba' and 'celeba140' share one builder (the crop differs
      only in `preprocess_image`).
    data_dir: where tfds keeps prepared data (None or '' = the tfds default).
    manual_dir: folder with local copies of the data (see `tsvae.datasets`); selects the local
      builder (`tsvae_mnist`, ...), prepared on the first call and reused afterwards. The folder
      is validated (cheaply) before any preparation; problems raise `DataError`. A manual dir
      holding `tsvae_<dataset>.npz` gives prepared arrays instead (`tsvae.datasets.arrays`;
      NumPy only). None or '' = the stock tfds builder (`mnist`, `fashion_mnist`, `celeb_a`),
      which downloads; for 'cifar10' the stock `cifar10` through the authors' JPEG q75 round
      trip (`tsvae_cifar10_jpeg_q75`, tsvae/datasets/online_builders.py), as the offline zip
      holds. The stock builders encode images with TensorFlow (`TensorFlowRequired` without it).
  """
  check_dataset(dataset)
  data_dir = os.fspath(data_dir) if data_dir else None
  manual_dir = os.fspath(manual_dir) if manual_dir else None
  if manual_dir and prepared_arrays.has_arrays(manual_dir, dataset):
    return prepared_arrays.ArraysBuilder(manual_dir, dataset)
  tfds = _tfds(f'Reading {dataset} through its tfds builder')
  if manual_dir:
    from tsvae.datasets import local_builders  # pylint: disable=g-import-not-at-top
    builder = local_builders.LOCAL_BUILDERS[dataset](data_dir=data_dir)
    if not builder.is_prepared():
      validate_manual_dir(dataset, manual_dir)
      if not _is_array_record(builder):
        _tf(f'Preparing {builder.name} (tfrecord files, streamed with tf.data)')
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder
  from tsvae.datasets.online_builders import ONLINE_BUILDERS  # pylint: disable=g-import-not-at-top
  name = STOCK_BUILDERS[dataset]
  _tf(f'The download route of {dataset} (the stock tfds builder {name!r}, which encodes '
      'images with TensorFlow; without it pass --config.data.manual_dir with local files)')
  if dataset in ONLINE_BUILDERS:
    builder = ONLINE_BUILDERS[dataset](data_dir=data_dir)
  else:
    builder = tfds.builder(name, data_dir=data_dir)
  try:
    builder.download_and_prepare()
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
        f'Could not download and prepare the tfds dataset {name!r} into {builder.data_dir} '
        f'({type(e).__name__}: {e}). Without internet access, pass manual_dir '
        '(--config.data.manual_dir) pointing at local copies of the files; see '
        'tsvae.datasets.validate_manual_dir for what it must contain.') from e
  return builder


# ---------------------------------------------------------------------------------------------
# Preprocessing.


def preprocess_image(image, dataset: str, as_uint8: bool = False):
  """Maps a stored uint8 image (or batch) `[..., H, W, C]` to model input.

  MNIST / Fashion-MNIST / CIFAR-10: unchanged. CelebA: crop the 218x178 aligned image
  ('celeba': img[45:173, 25:153], 'celeba140': img[39:179, 19:159]) and resize to 64x64 with
  `tf.image.resize(method='bilinear', antialias=True)`, rounded back to uint8. The authors used
  scipy's `imresize(..., interp='bilinear')`, i.e. PIL's BILINEAR resize, which also widens the
  filter when downsampling; the antialiased TF bilinear kernel is the same triangle filter
  (tested to agree with PIL within a few grey levels).

  Returns:
    uint8 in [0, 255] if `as_uint8`, else float32 in [0, 1] (= uint8 / 255). A tf.Tensor
    (TensorFlow is needed).
  """
  check_dataset(dataset)
  tf = _tf('preprocess_image')
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise ValueError(f'preprocess_image expects uint8 images, got {image.dtype}.')
  if dataset in CELEBA_CROPS:
    y0, y1, x0, x1 = CELEBA_CROPS[dataset]
    crop = tf.cast(image[..., y0:y1, x0:x1, :], tf.float32)
    h, w, _ = _IMAGE_SHAPES[dataset]
    resized = tf.image.resize(crop, (h, w), method='bilinear', antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
  if as_uint8:
    return image
  return tf.cast(image, tf.float32) / 255.0


def _to_float(image):
  tf = _tf('tf.data batches')
  return tf.cast(image, tf.float32) / 255.0


def _to_float_np(image: np.ndarray) -> np.ndarray:
  """uint8 → float32 / 255, correctly rounded: the same values as `_to_float`."""
  return image.astype(np.float32) / np.float32(255.0)


def _is_array_record(builder) -> bool:
  """Whether a tfds builder's files are array_record (read with `tfds.data_source`, no TF)."""
  file_format = getattr(getattr(builder, 'info', None), 'file_format', None)
  return file_format is not None and getattr(file_format, 'value', file_format) == 'array_record'


def _random_access(builder) -> bool:
  """Read without tf.data: prepared arrays or array_record files."""
  return isinstance(builder, prepared_arrays.ArraysBuilder) or _is_array_record(builder)


def _data_source(builder, split: str):
  return builder.as_data_source(split=split)


def _read_source(builder, split: str, keys: Tuple[str, ...]) -> Dict[str, np.ndarray]:
  """`keys` of every example of `split` of an array_record builder, stacked, in stored order.

  `tfds.data_source` decodes each PNG with Pillow: no TensorFlow.
  """
  source = _data_source(builder, split)
  n = len(source)
  chunks = {k: [] for k in keys}
  for start in range(0, n, 4096):
    examples = source.__getitems__(list(range(start, min(n, start + 4096))))
    for k in keys:
      chunks[k].append(np.stack([np.asarray(ex[k]) for ex in examples]))
  return {k: (np.concatenate(v) if v else None) for k, v in chunks.items()}


def labeled_images(builder, split: str, dataset: str) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, H, W, C] preprocessed as the model sees them, int64 labels [N]).

  Prepared arrays and array_record builders need no TensorFlow; other builders are read with
  tf.data. DataError when `dataset` has no labels (CelebA) or the split is empty.
  """
  check_dataset(dataset)
  if isinstance(builder, prepared_arrays.ArraysBuilder):
    images, labels = builder.split(split)
  elif 'label' not in builder.info.features:
    raise DataError(f'{dataset} ({builder.name}) has no "label" feature.')
  elif _is_array_record(builder) and dataset not in CELEBA_CROPS:
    got = _read_source(builder, split, ('image', 'label'))
    images, labels = got['image'], got['label']
  else:
    tf, tfds = _tf(f'Reading the labelled {dataset} split {split!r} with tf.data'), _tfds()
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(try_autocache=False))
    ds = ds.map(lambda ex: (preprocess_image(ex['image'], dataset, as_uint8=True),
                            tf.cast(ex['label'], tf.int64)),
                num_parallel_calls=tf.data.AUTOTUNE)
    parts = list(ds.batch(4096).as_numpy_iterator())
    images = np.concatenate([x for x, _ in parts]) if parts else None
    labels = np.concatenate([y for _, y in parts]) if parts else None
  if images is None or not len(images):
    raise DataError(f'{dataset}[{split}] is empty.')
  return np.asarray(images, np.uint8), np.asarray(labels, np.int64)


class NumpyBatches:
  """One epoch of batches (dicts of NumPy arrays): what the pipeline gives for in-memory data.

  Re-iterable; `len()` and `cardinality()` give the number of batches (as a tf.data.Dataset's
  cardinality would), `as_numpy_iterator()` iterates, like tf.data's.
  """

  def __init__(self, arrays: Dict[str, np.ndarray], order: np.ndarray, batch_size: int,
               drop_remainder: bool, transform=None):
    self._arrays = arrays
    self._order = np.asarray(order, np.int64)
    self._batch = int(batch_size)
    n = len(self._order)
    self._len = n // self._batch if drop_remainder else -(-n // self._batch)
    self._transform = transform

  def __len__(self) -> int:
    return self._len

  @property
  def order(self) -> np.ndarray:
    """The rows of the epoch's batches, concatenated."""
    return self._order

  def cardinality(self) -> int:
    return self._len

  def __iter__(self):
    for b in range(self._len):
      rows = self._order[b * self._batch:(b + 1) * self._batch]
      batch = {k: v[rows] for k, v in self._arrays.items()}
      yield self._transform(batch) if self._transform else batch

  def as_numpy_iterator(self):
    return iter(self)


def as_numpy(ds):
  """An iterable of NumPy batches from what the pipeline returns (tf.data or `NumpyBatches`)."""
  if isinstance(ds, NumpyBatches):
    return ds
  return _tfds().as_numpy(ds)


def _batches(arrays: Dict[str, np.ndarray], order: np.ndarray, batch_size: int,
             drop_remainder: bool, to_float: Tuple[str, ...] = ()) -> 'NumpyBatches':
  """Rows `order` of `arrays` in batches (uint8 `to_float` keys → float32 / 255), as
  `NumpyBatches`: in-memory data needs no tf.data, with or without TensorFlow installed."""
  def transform(batch):
    for k in to_float:
      batch[k] = _to_float_np(batch[k])
    return batch
  return NumpyBatches(arrays, order, batch_size, drop_remainder, transform if to_float else None)


def _finish(ds):
  """Deterministic options and prefetching for a tf.data pipeline; `NumpyBatches` as is."""
  if isinstance(ds, NumpyBatches):
    return ds
  tf = _tf('tf.data')
  ds = ds.with_options(_deterministic_options())
  return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# Helpers: counts, processes, seeds, read configs.


def num_examples(builder, split: str = 'train') -> int:
  """Number of examples `builder` actually yields for `split` (a tfds builder or LatentDataset).

  Uses the cardinality of `as_dataset` (which tfds asserts from its metadata), so it stays true
  under `tfds.testing.mock_data`, where the metadata may describe the real data set.
  """
  return _count_examples(builder, split)


def _count_examples(builder, split) -> int:
  if isinstance(builder, LatentDataset):
    if split not in ('train', None):
      raise ValueError(f'A latent dataset has only the split "train", not {split!r}.')
    return builder.num_examples
  if isinstance(builder, prepared_arrays.ArraysBuilder):
    return builder.num_examples(split)
  if _is_array_record(builder):
    return len(_data_source(builder, split))
  tfds = _tfds()
  _tf(f'Counting the examples of {builder.name} (tfrecord files)')
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=tfds.ReadConfig(try_autocache=False))
  card = int(ds.cardinality())
  if card >= 0:
    return card
  return int(builder.info.splits[split].num_examples)


def _process_args(process_index: Optional[int],
                  process_count: Optional[int]) -> Tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  process_index, process_count = int(process_index), int(process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Invalid process_index={process_index} / process_count={process_count}.')
  return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  global_batch_size = int(global_batch_size)
  if global_batch_size < 1:
    raise ValueError(f'global_batch_size must be positive, got {global_batch_size}.')
  if global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} is not divisible by '
                     f'process_count={process_count}.')
  return global_batch_size // process_count


def _check_epoch_args(epoch: int, skip_batches: int):
  if int(epoch) < 0:
    raise ValueError(f'epoch must be >= 0, got {epoch}.')
  if int(skip_batches) < 0:
    raise ValueError(f'skip_batches must be >= 0, got {skip_batches}.')


def _seed_sequence(seed: int, epoch: int, process_index: int, purpose: int):
  return np.random.SeedSequence(
      [int(seed) & 0xFFFF_FFFF_FFFF_FFFF, int(epoch), int(process_index), purpose])


def _tf_seed(seed: int, epoch: int, process_index: int) -> int:
  """A non-negative int64 seed that is a pure function of its arguments."""
  state = _seed_sequence(seed, epoch, process_index, 1).generate_state(1, np.uint64)[0]
  return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def _deterministic_options():
  tf = _tf('tf.data')
  options = tf.data.Options()
  options.deterministic = True
  return options


def _sequential_read_config():
  """Reads a split's files one after another: the stored example order, exactly."""
  return _tfds().ReadConfig(options=_deterministic_options(), try_autocache=False,
                         interleave_cycle_length=1, enable_ordering_guard=False)


def _process_split(split: str, process_index: int, process_count: int):
  if process_count == 1:
    return split
  # drop_remainder: every process gets the same number of examples, hence of batches.
  return _tfds().split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count, drop_remainder=True)


# ---------------------------------------------------------------------------------------------
# Decoded uint8 splits kept in host memory (small datasets).

_UINT8_CACHE: 'weakref.WeakKeyDictionary[Any, Dict[Any, np.ndarray]]' = (
    weakref.WeakKeyDictionary())


def _load_uint8(builder, split: str, dataset: str, process_index: int, process_count: int,
                cache: bool) -> np.ndarray:
  """The preprocessed uint8 images of this process's shard of `split`, in stored order."""
  key = (str(split), dataset, process_index, process_count)
  try:
    per_builder = _UINT8_CACHE.setdefault(builder, {}) if cache else None
  except TypeError:  # Builder not weak-referenceable / hashable: no caching.
    per_builder = None
  if per_builder is not None and key in per_builder:
    return per_builder[key]
  if _random_access(builder) and dataset not in CELEBA_CROPS:  # No TensorFlow needed.
    if process_count != 1:
      raise ValueError('In-memory splits are loaded whole (process_count=1).')
    if isinstance(builder, prepared_arrays.ArraysBuilder):
      images = builder.split(split)[0]
    else:
      images = _read_source(builder, split, ('image',))['image']
    if images is None:
      images = np.zeros((0,) + image_shape(dataset), np.uint8)
    images = np.asarray(images, np.uint8)
  else:
    images = _load_uint8_tf(builder, split, dataset, process_index, process_count)
  if images.shape[1:] != image_shape(dataset):
    raise DataError(f'{dataset}[{split}] of {builder!r} holds images of shape '
                    f'{images.shape[1:]}; expected {image_shape(dataset)}.')
  images.setflags(write=False)
  if per_builder is not None:
    per_builder[key] = images
  return images


def _load_uint8_tf(builder, split: str, dataset: str, process_index: int,
                   process_count: int) -> np.ndarray:
  """`_load_uint8` through tf.data (tfrecord files: stock builders, CelebA)."""
  tf = _tf(f'Reading {dataset} from {builder.name} (tfrecord files, tf.data)')
  tfds = _tfds()
  ds = builder.as_dataset(split=_process_split(split, process_index, process_count),
                          shuffle_files=False, read_config=_sequential_read_config(),
                          decoders={'image': tfds.decode.SkipDecoding()})
  decode = _image_decoder(builder)
  ds = ds.map(lambda ex: preprocess_image(decode(ex['image']), dataset, as_uint8=True),
              num_parallel_calls=tf.data.AUTOTUNE)
  chunks = list(ds.batch(4096).as_numpy_iterator())
  if chunks:
    return np.concatenate(chunks)
  return np.zeros((0,) + image_shape(dataset), np.uint8)


def _in_memory_epoch(arrays: Dict[str, np.ndarray], global_batch: int,
                     shuffle_seed: Optional[int], epoch: int, process_index: int,
                     process_count: int, skip_batches: int, drop_remainder: bool,
                     to_float: Tuple[str, ...] = ()):
  """This process's slice of one epoch of *global* batches of `arrays` (the whole split).

  Every process holds the whole (small) split and draws the same global permutation from
  (shuffle_seed, epoch); global batch b is rows [b·G, (b+1)·G) of it and process p takes the
  p-th 1/P of every global batch. So the global batches, and hence training, are the same for
  any process count (tests/multiprocess_test.py checks 1 vs 2 processes).
  """
  n = len(next(iter(arrays.values())))
  local_batch = global_batch // process_count
  order = epoch_order.host_order(n, shuffle_seed, epoch)
  num_batches = n // global_batch if drop_remainder else -(-n // global_batch)
  rows = []
  for b in range(min(skip_batches, num_batches), num_batches):
    start = b * global_batch + process_index * local_batch
    rows.append(order[start:min(start + local_batch, n)])
  order = np.concatenate(rows) if rows else np.zeros((0,), np.int64)
  return _batches(arrays, order, local_batch, drop_remainder, to_float)


def epoch_rows(num_examples: int, global_batch_size: int, shuffle_seed: Optional[int],
               epoch: int) -> np.ndarray:
  """int32 [num_examples // global_batch_size, global_batch_size]: the rows of each global batch.

  Row b holds the indices (into the whole stored split) of the examples of global batch b of
  `epoch`: the batches `make_image_dataset` and `make_latent_dataset` yield for an in-memory
  data set (process p's slice of batch b is its p-th 1/P), the last partial batch dropped. The
  scanned train loop gathers these rows from the device-resident split.
  """
  return epoch_order.host_global_batches(num_examples, global_batch_size, shuffle_seed, epoch)


def training_images(builder, split: str, dataset: str) -> np.ndarray:
  """uint8 [N, H, W, C]: the whole preprocessed `split` of an in-memory data set, stored order.

  The array `make_image_dataset` draws its in-memory batches from (cached per builder object).
  """
  check_dataset(dataset)
  return _load_uint8(builder, split, dataset, 0, 1, cache=True)


def _check_nonempty_epoch(n_local: int, local_batch: int, drop_remainder: bool, what: str):
  if drop_remainder and 0 <= n_local < local_batch:
    raise ValueError(f'{what}: this process has {n_local} examples, fewer than one batch of '
                     f'{local_batch}; an epoch would have no batches.')


# ---------------------------------------------------------------------------------------------
# Outlier corruption of training images (the robust-PCA view; benchmarks/robust_pca.py).

_OUTLIER_PURPOSE = 7  # Separates the outlier stream from the shuffling streams of a seed.


def outlier_pixel_count(fraction: float, height: int, width: int) -> int:
  """Pixels (spatial positions) replaced per image: round(fraction · H · W)."""
  fraction = float(fraction)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'outlier_fraction must be in [0, 1], got {fraction}.')
  return int(round(fraction * int(height) * int(width)))


def _outlier_base_seed(outlier_seed: int) -> int:
  state = np.random.SeedSequence(
      [int(outlier_seed) & 0xFFFF_FFFF_FFFF_FFFF, _OUTLIER_PURPOSE]).generate_state(1, np.uint64)
  return int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF


def _corrupt_one(image, key, count: int, base_seed: int):
  """Replaces `count` pixels of one float image [H, W, C], chosen from (base_seed, key)."""
  if count == 0:
    return image
  tf = _tf('Outlier corruption (data.outlier_fraction > 0)')
  h, w, c = image.shape
  seeds = tf.random.experimental.stateless_split(
      tf.stack([tf.constant(base_seed, tf.int64), tf.cast(key, tf.int64)]), 2)
  scores = tf.random.stateless_uniform([h * w], seed=seeds[0])
  _, where = tf.math.top_k(scores, k=count)  # `count` distinct positions, uniformly at random.
  mask = tf.scatter_nd(where[:, None], tf.ones([count], tf.bool), [h * w])
  noise = tf.random.stateless_uniform([h, w, c], seed=seeds[1], dtype=image.dtype)
  return tf.where(tf.reshape(mask, [h, w, 1]), noise, image)


def corrupt_images(images, keys, outlier_fraction: float, outlier_seed: int) -> np.ndarray:
  """The outlier model, applied to float images [N, H, W, C] in [0, 1] (NumPy in, NumPy out).

  In image i, exactly round(outlier_fraction · H · W) pixel positions, drawn uniformly without
  replacement, get every channel replaced by independent Uniform[0, 1) noise; the other pixels
  are unchanged. Positions and noise are a pure function of (outlier_seed, keys[i]). The
  training pipeline (`make_image_dataset(..., outlier_fraction=...)`) applies exactly this with
  keys = the index of the image in the stored training split (in-memory datasets).
  """
  images = np.asarray(images, np.float32)
  keys = np.asarray(keys, np.int64)
  if len(images) == 0:
    return images.copy()
  count = outlier_pixel_count(outlier_fraction, images.shape[1], images.shape[2])
  base = _outlier_base_seed(outlier_seed)
  tf = _tf('Outlier corruption (corrupt_images)')
  ds = tf.data.Dataset.from_tensor_slices((images, keys)).map(
      lambda image, key: _corrupt_one(image, key, count, base),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(4096)
  return np.concatenate(list(ds.as_numpy_iterator()))


def _is_train_split(split: str) -> bool:
  return str(split).split('[', 1)[0].strip() == 'train'


# ---------------------------------------------------------------------------------------------
# Training and evaluation image datasets.


def _in_memory_image_epoch(builder, split, dataset, global_batch_size, shuffle_seed, epoch,
                           skip_batches, drop_remainder, process_index, process_count, cache,
                           outliers, base_seed):
  """`make_image_dataset`'s epoch of an in-memory data set (the whole split held as uint8)."""
  tf = _tf('Outlier corruption (data.outlier_fraction > 0)') if outliers else None
  local_batch = _local_batch_size(global_batch_size, process_count)
  images = _load_uint8(builder, split, dataset, 0, 1, cache)  # Whole split: see below.
  _check_nonempty_epoch(len(images) // process_count, local_batch, drop_remainder,
                        f'{dataset}[{split}]')
  arrays = {'image': images}
  if outliers:  # The global index in the stored split identifies the example.
    arrays['index'] = np.arange(len(images), dtype=np.int64)
  if not outliers:
    return _in_memory_epoch(arrays, global_batch_size, shuffle_seed, epoch, process_index,
                            process_count, int(skip_batches), drop_remainder, ('image',))
  rows = _in_memory_epoch(arrays, global_batch_size, shuffle_seed, epoch, process_index,
                          process_count, int(skip_batches), drop_remainder).order
  ds = tf.data.Dataset.from_tensor_slices({k: v[rows] for k, v in arrays.items()})
  return ds.map(
      lambda ex: {'image': _corrupt_one(_to_float(ex['image']), ex['index'], outliers,
                                        base_seed)},
      num_parallel_calls=tf.data.AUTOTUNE).batch(local_batch, drop_remainder=drop_remainder)


def _streamed_image_epoch(builder, split, dataset, local_batch, shuffle_seed, epoch,
                          skip_batches, drop_remainder, process_index, process_count,
                          shuffle_buffer, outliers, base_seed):
  """`make_image_dataset`'s epoch of a streamed data set (this process's shard of `split`)."""
  tf = _tf(f'Streaming {dataset} with tf.data (in_memory=False)')
  ds = _streaming_examples(builder, _process_split(split, process_index, process_count),
                           shuffle_seed=shuffle_seed, epoch=epoch,
                           process_index=process_index, shuffle_buffer=shuffle_buffer,
                           with_ids=bool(outliers))
  _check_nonempty_epoch(int(ds.cardinality()), local_batch, drop_remainder,
                        f'{dataset}[{split}]')
  ds = ds.skip(int(skip_batches) * local_batch)
  decode = _image_decoder(builder)
  if outliers:
    # The tfds id ('<file>__<record>') names the example whatever the order or sharding.
    id_key = [base_seed & 0xFFFF_FFFF, base_seed >> 32]
    ds = ds.map(lambda tfds_id, encoded: {'image': _corrupt_one(
        preprocess_image(decode(encoded), dataset),
        tf.strings.to_hash_bucket_strong(tfds_id, 2**62, key=id_key), outliers, base_seed)},
                num_parallel_calls=tf.data.AUTOTUNE)
  else:
    ds = ds.map(lambda encoded: {'image': preprocess_image(decode(encoded), dataset)},
                num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(local_batch, drop_remainder=drop_remainder)


def make_image_dataset(builder,
                       split: str,
                       *,
                       dataset: str,
                       global_batch_size: int,
                       shuffle_seed: Optional[int] = None,
                       epoch: int = 0,
                       skip_batches: int = 0,
                       drop_remainder: bool = True,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None,
                       cache: bool = True,
                       shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                       in_memory: Optional[bool] = None,
                       outlier_fraction: float = 0.0,
                       outlier_seed: int = 0):
  """ONE epoch of training batches `{'image': float32 [local_batch, H, W, C]}` in [0, 1].

  Args:
    builder: from `get_builder`.
    split: tfds split name, e.g. 'train'.
    dataset: one of `DATASETS` (selects the preprocessing).
    global_batch_size: batch over all processes; local_batch = global_batch_size //
      process_count (must divide evenly).
    shuffle_seed: None = stored order; else the order of epoch `epoch` is a pure function of
      (shuffle_seed, epoch, process_index, process_count), independent of earlier epochs.
    epoch: epoch number (>= 0), only used to derive the shuffle.
    skip_batches: batches of this epoch to skip (resume); skipped before decoding.
    drop_remainder: drop the last partial batch (the reference does).
    process_index / process_count: default jax.process_index() / jax.process_count(). Each
      process reads its own disjoint shard of `split`; shards have equal size (up to
      process_count - 1 examples of the split are left out) so every process yields the same
      number of batches.
    cache: keep the decoded uint8 shard in host memory (per builder object) for later epochs
      (in-memory datasets only).
    shuffle_buffer: shuffle buffer of the streaming path (CelebA).
    in_memory: None = automatic (MNIST, Fashion-MNIST, CIFAR-10 in memory, CelebA streamed).
    outlier_fraction: > 0 corrupts the images of the *training* split (other splits are never
      touched): in every image exactly round(outlier_fraction · H · W) pixels get uniform
      [0, 1) noise (see `corrupt_images`). Which pixels and which noise is a pure function of
      (outlier_seed, the example): the same in every epoch, for any process count and order.
      The example is its index in the stored split (in-memory datasets) or its tfds id
      (streamed datasets).
    outlier_seed: seeds the corruption.

  Returns:
    The batches of this epoch (after skipping): `NumpyBatches` for in-memory data, a finite
    `tf.data.Dataset` with known cardinality when streamed. Iterate either with `as_numpy`.
  """
  check_dataset(dataset)
  _check_epoch_args(epoch, skip_batches)
  process_index, process_count = _process_args(process_index, process_count)
  local_batch = _local_batch_size(global_batch_size, process_count)
  in_memory = _resolve_in_memory(builder, dataset, in_memory)
  h, w, _ = image_shape(dataset)
  outliers = (outlier_pixel_count(outlier_fraction, h, w) if _is_train_split(split) else 0)
  base_seed = _outlier_base_seed(outlier_seed)

  if in_memory:
    ds = _in_memory_image_epoch(builder, split, dataset, global_batch_size, shuffle_seed, epoch,
                                skip_batches, drop_remainder, process_index, process_count,
                                cache, outliers, base_seed)
  else:
    ds = _streamed_image_epoch(builder, split, dataset, local_batch, shuffle_seed, epoch,
                               skip_batches, drop_remainder, process_index, process_count,
                               shuffle_buffer, outliers, base_seed)
  return _finish(ds)


def _resolve_in_memory(builder, dataset: str, in_memory: Optional[bool]) -> bool:
  """None = automatic; array_record files and prepared arrays are always read whole (tf.data
  cannot stream array_record)."""
  if in_memory is None:
    in_memory = dataset in IN_MEMORY_DATASETS
  return bool(in_memory) or (_random_access(builder) and dataset not in CELEBA_CROPS)


def _image_decoder(builder):
  """Decodes the stored image bytes of `builder`'s 'image' feature to uint8 [H, W, C].

  JPEGs are decoded with `dct_method='INTEGER_ACCURATE'`, which reproduces PIL's decoding
  exactly; TensorFlow's default (what tfds' own decoding uses) is INTEGER_FAST and differs
  from PIL by up to ~4-9 grey levels per pixel.
  """
  tf = _tf('Decoding images with tf.data')
  feature = builder.info.features['image']
  shape = tuple(feature.shape)
  channels = shape[-1]

  def decode(encoded):
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=channels, dct_method='INTEGER_ACCURATE'),
        lambda: tf.io.decode_image(encoded, channels=channels, expand_animations=False))
    image.set_shape(shape)
    return image

  return decode


def _streaming_examples(builder, split, *, shuffle_seed, epoch, process_index,
                        shuffle_buffer, with_ids: bool = False):
  """Encoded image bytes of `split`; seeded file and buffer shuffles when shuffle_seed given.

  With `with_ids`, elements are (tfds id, encoded bytes) pairs, in the same order.
  """
  tfds = _tfds()
  if shuffle_seed is None:
    read_config = _sequential_read_config()
  else:
    seed = _tf_seed(shuffle_seed, epoch, process_index)
    read_config = tfds.ReadConfig(options=_deterministic_options(), try_autocache=False,
                                  shuffle_seed=seed, shuffle_reshuffle_each_iteration=False,
                                  enable_ordering_guard=False)
  read_config.add_tfds_id = bool(with_ids)
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                          read_config=read_config,
                          decoders={'image': tfds.decode.SkipDecoding()})
  if with_ids:
    ds = ds.map(lambda ex: (ex['tfds_id'], ex['image']))
  else:
    ds = ds.map(lambda ex: ex['image'])
  if shuffle_seed is not None:
    ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=False)
  return ds


def make_eval_dataset(builder,
                      split: str,
                      dataset: str,
                      batch_size: int,
                      as_uint8: bool = False,
                      num_examples: Optional[int] = None,  # pylint: disable=redefined-outer-name
                      seed: Optional[int] = None,
                      *,
                      cache: bool = True,
                      in_memory: Optional[bool] = None):
  """Deterministic batches `{'image': [<=batch_size, H, W, C]}` in stored split order.

  Not sharded across processes; the last batch may be partial.

  Args:
    as_uint8: images as uint8 in [0, 255] (for FID) instead of float32 in [0, 1].
    num_examples: None = the whole split; else a random subset of this many examples (without
      replacement, kept in split order), chosen from `seed` (None = 0).

  Returns:
    `NumpyBatches` for in-memory data, a `tf.data.Dataset` when streamed (iterate either with
    `as_numpy`).
  """
  check_dataset(dataset)
  batch_size = int(batch_size)
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  in_memory = _resolve_in_memory(builder, dataset, in_memory)
  if in_memory:
    images = _load_uint8(builder, split, dataset, 0, 1, cache)
  selected = None
  if num_examples is not None:
    total = len(images) if in_memory else _count_examples(builder, split)
    num_examples = int(num_examples)
    if not 0 < num_examples <= total:
      raise ValueError(f'num_examples={num_examples} must be in [1, {total}] for '
                       f'{dataset}[{split}].')
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed or 0) & 0xFFFF_FFFF_FFFF_FFFF, 2])))
    selected = np.sort(rng.choice(total, size=num_examples, replace=False))

  if in_memory:
    order = np.arange(len(images)) if selected is None else selected
    return _finish(_batches({'image': images}, order, batch_size, False,
                            () if as_uint8 else ('image',)))
  tf, tfds = _tf(f'Streaming {dataset} with tf.data (in_memory=False)'), _tfds()
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=_sequential_read_config(),
                          decoders={'image': tfds.decode.SkipDecoding()})
  ds = ds.map(lambda ex: ex['image'])
  if selected is not None:
    mask = np.zeros(total, bool)
    mask[selected] = True
    mask = tf.constant(mask)
    ds = ds.enumerate()
    ds = ds.filter(lambda i, _: tf.gather(mask, i))
    ds = ds.map(lambda _, x: x)
  decode = _image_decoder(builder)
  ds = ds.map(lambda x: {'image': preprocess_image(decode(x), dataset, as_uint8=as_uint8)},
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size)
  return _finish(ds)


# ---------------------------------------------------------------------------------------------
# Stage-2 latent datasets.


def _latent_features(latent_dim: int):
  tfds = _tfds()
  return tfds.features.FeaturesDict({
      'mu': tfds.features.Tensor(shape=(latent_dim,), dtype=np.float32),
      'sigma': tfds.features.Tensor(shape=(latent_dim,), dtype=np.float32),
  })


def _fsync_file(path: str):
  with open(path, 'rb') as f:
    os.fsync(f.fileno())


def _fsync_dir(path: str):
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_latent_dataset(directory: str, mu: np.ndarray, sigma: np.ndarray,
                         file_format: str = 'npz') -> str:
  """Stores stage-1 encodings (μ, σ) of the training images, atomically.

  `file_format='npz'` (the default, no TensorFlow needed): one uncompressed `tsvae_latents.npz`
  (float32 `mu`, `sigma`, rows in the given order). `'tfrecord'` (needs TensorFlow; what tsvae
  wrote before 2026-12-03 where TensorFlow was installed): a tfds dataset directory (tfrecord
  shards, `dataset_info.json`, `features.json`; features {'mu': Tensor((κ,), float32),
  'sigma': Tensor((κ,), float32)}, split 'train'), loadable with `tfds.builder_from_directory`.
  Either way `tsvae_latents.json` (counts, `file_format`, and the size and SHA-256 of every other
  file) is the marker that readers require and verify; the readers take both formats (a marker
  without `file_format` is tfrecord).

  `directory` is either absent, the previous complete version, or the new complete version;
  never taken as complete while half written:
  * local: the dataset is written into a temporary sibling folder and renamed into place;
  * remote (gs://, see `tsvae.fileio`; object stores cannot rename a folder atomically): it is
    built in a local temporary folder, the marker of an existing version is deleted first (so
    that version stops counting as complete), the shards and tfds metadata are uploaded, and
    the marker is uploaded last (one atomic object); `read_latent_dataset_builder` requires the
    marker and checks every file's size against it.
  In a multi-process run, let one process write.

  Returns:
    The absolute path (or the URL) of `directory`.
  """
  if file_format not in _LATENT_WRITERS:
    raise ValueError(f'unknown latent file_format {file_format!r} (one of '
                     f'{sorted(_LATENT_WRITERS)}).')
  mu = np.asarray(mu)
  sigma = np.asarray(sigma)
  if mu.ndim != 2 or mu.shape != sigma.shape or mu.shape[0] == 0 or mu.shape[1] == 0:
    raise ValueError('mu and sigma must be non-empty float arrays of the same shape [N, κ]; '
                     f'got {mu.shape} and {sigma.shape}.')
  mu = mu.astype(np.float32, copy=False)
  sigma = sigma.astype(np.float32, copy=False)
  directory = fileio.abspath(os.fspath(directory))
  if fileio.is_remote(directory):
    tmp = tempfile.mkdtemp(prefix='tsvae-latents-')
    try:
      _build_latent_dataset(tmp, mu, sigma, file_format)
      _upload_latent_dataset(tmp, directory)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    return directory
  parent, base = os.path.split(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{base}.tmp-', dir=parent)
  try:
    _build_latent_dataset(tmp, mu, sigma, file_format)
    faults.kill_here('latents.write')
    if os.path.lexists(directory):
      old = os.path.join(parent, f'.{base}.old-{uuid.uuid4().hex}')
      os.rename(directory, old)
      os.rename(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, directory)
    _fsync_dir(parent)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def _build_latent_dataset(tmp: str, mu: np.ndarray, sigma: np.ndarray, file_format: str):
  """Writes the complete dataset (its files, then the marker) into local folder `tmp`."""
  meta = _LATENT_WRITERS[file_format](tmp, mu, sigma)
  meta['checksums'] = fileio.checksums(tmp, sorted(os.listdir(tmp)))
  with open(os.path.join(tmp, _LATENT_META_FILE), 'w') as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  _fsync_dir(tmp)


def _build_latent_npz(tmp: str, mu: np.ndarray, sigma: np.ndarray) -> Dict[str, Any]:
  n, latent_dim = mu.shape
  path = os.path.join(tmp, _LATENT_NPZ_FILE)
  with open(path, 'wb') as f:
    np.savez(f, mu=mu, sigma=sigma)
    f.flush()
    os.fsync(f.fileno())
  return {'format_version': _LATENT_FORMAT_VERSION, 'num_examples': int(n),
          'latent_dim': int(latent_dim), 'file_format': 'npz',
          'files': [{'name': _LATENT_NPZ_FILE, 'bytes': os.path.getsize(path),
                     'examples': int(n)}]}


def _build_latent_tfrecord(tmp: str, mu: np.ndarray, sigma: np.ndarray) -> Dict[str, Any]:
  tf, tfds = _tf('Writing tfrecord latents'), _tfds()
  n, latent_dim = mu.shape
  features = _latent_features(latent_dim)
  template = tfds.core.ShardedFileTemplate(
      data_dir=tmp, template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
      dataset_name=LATENT_DATASET_NAME, split='train', filetype_suffix='tfrecord')
  bytes_per_example = 2 * 4 * latent_dim + 64
  num_shards = max(1, -(-n * bytes_per_example // _SHARD_BYTES))
  bounds = np.linspace(0, n, num_shards + 1).round().astype(int)
  shard_lengths, files, num_bytes = [], [], 0
  for i in range(num_shards):
    path = os.fspath(template.sharded_filepath(shard_index=i, num_shards=num_shards))
    with tf.io.TFRecordWriter(path) as writer:
      for j in range(bounds[i], bounds[i + 1]):
        record = features.serialize_example({'mu': mu[j], 'sigma': sigma[j]})
        writer.write(record)
        num_bytes += len(record)
    _fsync_file(path)
    shard_lengths.append(int(bounds[i + 1] - bounds[i]))
    files.append({'name': os.path.basename(path), 'bytes': os.path.getsize(path),
                  'examples': shard_lengths[-1]})
  split_info = tfds.core.SplitInfo(name='train', shard_lengths=shard_lengths,
                                   num_bytes=num_bytes, filename_template=template)
  # Not a builder: `tfds.testing.mock_data` patches builders (their data_dir,
  # download_and_prepare and as_dataset), not this.
  tfds.folder_dataset.write_metadata(
      data_dir=tmp, features=features, split_infos=[split_info], filename_template=template,
      check_data=False, version='1.0.0',
      description='Stage-1 encoder outputs (mu, sigma) of the training images (tsvae).')
  return {'format_version': _LATENT_FORMAT_VERSION, 'num_examples': int(n),
          'latent_dim': int(latent_dim), 'files': files}


# write_latent_dataset's file formats: a writer of the rows into a local folder, returning the
# marker's fields.
_LATENT_WRITERS = {'npz': _build_latent_npz, 'tfrecord': _build_latent_tfrecord}


def _upload_latent_dataset(tmp: str, directory: str):
  """Publishes the local dataset folder `tmp` as remote `directory`, the marker last."""
  marker = os.path.join(directory, _LATENT_META_FILE)
  fileio.remove(marker)  # An existing version stops being complete before anything changes.
  fileio.rmtree(directory)  # Its shards (their count may differ).
  fileio.makedirs(directory)
  for name in sorted(os.listdir(tmp)):
    if name != _LATENT_META_FILE:
      fileio.upload(os.path.join(tmp, name), os.path.join(directory, name))
  faults.kill_here('latents.write')
  with open(os.path.join(tmp, _LATENT_META_FILE), 'rb') as f:
    fileio.atomic_write_bytes(marker, f.read())


class LatentDataset:
  """A complete latent dataset written by `write_latent_dataset` (builder-like handle).

  Attributes:
    directory: its folder (also a tfds dataset directory: see `as_tfds_builder`).
    num_examples: N.
    latent_dim: κ.
    file_format: 'tfrecord' (shards; reading needs TensorFlow) or 'npz' (NumPy).
    filepaths: the tfrecord shards, in order (or the one .npz).
  """

  def __init__(self, directory: str, meta: Dict[str, Any]):
    self.directory = directory
    self.num_examples = int(meta['num_examples'])
    self.latent_dim = int(meta['latent_dim'])
    self.file_format = str(meta.get('file_format', 'tfrecord'))
    self.filepaths = [os.path.join(directory, f['name']) for f in meta['files']]
    self._shard_lengths = [int(f['examples']) for f in meta['files']]
    self._arrays: Dict[Tuple[int, int], Dict[str, np.ndarray]] = {}

  def __repr__(self):
    return (f'LatentDataset({self.directory!r}, num_examples={self.num_examples}, '
            f'latent_dim={self.latent_dim})')

  @property
  def features(self):
    """The tfds FeaturesDict of one example."""
    return _latent_features(self.latent_dim)

  def as_tfds_builder(self):
    """`tfds.builder_from_directory` on it (does not work inside `tfds.testing.mock_data`;
    tfrecord latents only)."""
    if self.file_format != 'tfrecord':
      raise DataError(f'{self} is stored as {self.file_format}, not as a tfds dataset.')
    return _tfds().builder_from_directory(self.directory)

  def _read(self, start: int, count: int) -> Dict[str, np.ndarray]:
    if self.file_format == 'npz':
      with np.load(io.BytesIO(fileio.read_bytes(self.filepaths[0])), allow_pickle=False) as z:
        return {k: np.array(z[k][start:start + count], np.float32) for k in ('mu', 'sigma')}
    if self.file_format != 'tfrecord':
      raise DataError(f'{self.directory}: unknown latent file_format {self.file_format!r}.')
    tf = _tf(f'Reading the tfrecord latents in {self.directory} (written where TensorFlow was '
             'installed)')
    ds = tf.data.TFRecordDataset(self.filepaths).skip(start).take(count)
    ds = ds.map(self.features.deserialize_example, num_parallel_calls=tf.data.AUTOTUNE)
    chunks = list(ds.batch(65536).as_numpy_iterator())
    return {k: (np.concatenate([c[k] for c in chunks]) if chunks else
                np.zeros((0, self.latent_dim), np.float32)) for k in ('mu', 'sigma')}

  def load(self, start: int = 0, count: Optional[int] = None) -> Dict[str, np.ndarray]:
    """{'mu', 'sigma'}: float32 [count, κ] of rows [start, start + count), read from the files."""
    count = self.num_examples - start if count is None else count
    key = (start, count)
    if key not in self._arrays:
      arrays = self._read(start, count)
      if len(arrays['mu']) != count:
        raise DataError(f'Latent dataset {self.directory} holds fewer examples than its '
                        f'{_LATENT_META_FILE} says; delete it so it is written again.')
      for v in arrays.values():
        v.setflags(write=False)
      self._arrays[key] = arrays
    return self._arrays[key]


def _latent_file_damage(directory: str, meta: Dict[str, Any]) -> List[str]:
  """The files that no longer match the marker `meta`: one phrase each ([] when all match)."""
  if 'checksums' in meta:
    return fileio.checksum_mismatches(directory, meta['checksums'])
  # A marker written before checksums were recorded: the files' presence, the shards' sizes.
  damage = [f'{name} is missing' for name in ('dataset_info.json', 'features.json')
            if not fileio.exists(os.path.join(directory, name))]
  for entry in meta['files']:
    path = os.path.join(directory, entry['name'])
    if not fileio.exists(path) or fileio.isdir(path):
      damage.append(f'{entry["name"]} is missing')
    elif fileio.getsize(path) != entry['bytes']:
      damage.append(f'{entry["name"]} has {fileio.getsize(path)} bytes, expected '
                    f'{entry["bytes"]}')
  return damage


def read_latent_dataset_builder(directory: str) -> LatentDataset:
  """Opens a latent dataset written by `write_latent_dataset`; DataError if absent/incomplete.

  Local or remote (gs://) `directory`; the dataset counts only with its `tsvae_latents.json`
  marker, and every file it lists must have its recorded size and SHA-256. A dataset whose
  marker is there but whose files no longer match raises `CorruptLatents` (a DataError): it was
  complete once, so it is neither trained on nor silently written again.
  """
  directory = fileio.abspath(os.fspath(directory))
  what = (f'Latent dataset {directory} (written by write_latent_dataset after stage 1: '
          f'{_LATENT_META_FILE}, dataset_info.json, features.json and the '
          f'{LATENT_DATASET_NAME}-train.tfrecord-* shards)')
  meta_path = os.path.join(directory, _LATENT_META_FILE)
  try:
    present = fileio.exists(meta_path) or fileio.isdir(directory)
  except OSError as e:
    raise DataError(f'{what} cannot be read ({e}).') from e
  if not present:
    raise DataError(f'{what} does not exist; run stage 1 (or its encoding step) first.')
  try:
    meta = json.loads(fileio.read_bytes(meta_path).decode())
  except (OSError, ValueError) as e:
    raise DataError(f'{what} is incomplete: cannot read {_LATENT_META_FILE} ({e}). Delete it '
                    'so it is written again.') from e
  problems, damage = [], []  # Damage: files that no longer match a complete dataset's marker.
  try:
    if meta.get('format_version') != _LATENT_FORMAT_VERSION:
      problems.append(f'unknown format_version {meta.get("format_version")!r}')
    damage = _latent_file_damage(directory, meta)
    if sum(int(e['examples']) for e in meta['files']) != int(meta['num_examples']):
      problems.append('shard lengths do not add up to num_examples')
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    problems.append(f'{_LATENT_META_FILE} is malformed ({e})')
  except OSError as e:
    problems.append(f'a file cannot be read ({e})')
  if damage:
    raise CorruptLatents(
        f'{what} is corrupt: {"; ".join(damage[:5])}. It was complete when written (its '
        f'{_LATENT_META_FILE} records every file), so it is not used: move it aside (or delete '
        'it) and rerun, which encodes the training set again from the complete stage-1 '
        'checkpoint.')
  if problems:
    raise DataError(f'{what} is incomplete: {"; ".join(problems)}. Delete it so it is written '
                    'again.')
  return LatentDataset(directory, meta)


def make_latent_dataset(builder: Union[LatentDataset, str],
                        *,
                        global_batch_size: int,
                        shuffle_seed: Optional[int],
                        epoch: int = 0,
                        skip_batches: int = 0,
                        drop_remainder: bool = True,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None):
  """ONE epoch of batches `{'mu': float32 [b, κ], 'sigma': float32 [b, κ]}` for stage 2.

  Same sharding (disjoint equal shards per process), determinism (order of epoch e a pure
  function of (shuffle_seed, e, process)), `skip_batches` and drop-remainder rules as
  `make_image_dataset`; the process's shard is held in memory and fully permuted each epoch.
  `builder` is a `LatentDataset` (or its directory). The sample z = μ + σ·ε is drawn later,
  inside the train step.
  """
  if not isinstance(builder, LatentDataset):
    builder = read_latent_dataset_builder(os.fspath(builder))
  _check_epoch_args(epoch, skip_batches)
  process_index, process_count = _process_args(process_index, process_count)
  local_batch = _local_batch_size(global_batch_size, process_count)
  _check_nonempty_epoch(builder.num_examples // process_count, local_batch, drop_remainder,
                        f'latents {builder.directory}')
  arrays = builder.load(0, builder.num_examples)
  return _finish(_in_memory_epoch(arrays, global_batch_size, shuffle_seed, epoch, process_index,
                                  process_count, int(skip_batches), drop_remainder))
