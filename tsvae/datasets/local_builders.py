"""tfds builders that prepare the benchmark data sets from local files (no download).

| builder               | manual_dir holds                                                      |
| --------------------- | --------------------------------------------------------------------- |
| `tsvae_mnist`         | the four canonical IDX files `train-images-idx3-ubyte.gz`, ...        |
| `tsvae_fashion_mnist` | the same four IDX file names, Fashion-MNIST content                   |
| `tsvae_cifar10`       | `cifar10_jpg_q75.zip` or extracted `train/<class>/*.jpg`, `test/...`  |
| `tsvae_celeb_a`       | `img_align_celeba/` (or `img_align_celeba.zip`), `list_eval_partition.txt` |

Usage:

  builder = TsvaeMnist(data_dir=data_dir)
  validate_manual_dir('mnist', manual_dir)  # cheap; raises DataError naming what is missing
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))

All builders keep the source order (`disable_shuffling=True`): MNIST / Fashion-MNIST in IDX
order, CIFAR-10 in sorted member-path order, CelebA in sorted file-name order within each
official split. The stock tfds builders instead write examples in hashed-key order, and the
stock `mnist` builder rejects re-gzipped IDX files on checksum, hence these builders.

CelebA images are stored as the original JPEG bytes (178x218, as the stock `celeb_a` builder
does); the crop and resize to 64x64 happen in `tsvae.input_pipeline`, so "celeba" and
"celeba140" share one prepared data set. CIFAR-10 images are decoded with PIL here and stored
losslessly (PNG), so every reader sees PIL's decoding of the JPEGs.

No TensorFlow needed (version 1.1.0): MNIST, Fashion-MNIST and CIFAR-10 are written as
array_record files (`tfds.data_source` reads them; tf.data's `as_dataset` cannot) with every
image already PNG-encoded by Pillow (tfds would encode NumPy images with `tf.image.encode_png`).
PNG is lossless, so the pixels are the source's exactly. CelebA stays tfrecord: it is streamed
with tf.data (TensorFlow), being too large for memory on small hosts.
"""

import gzip
import io
import os
import re
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from tsvae.datasets.errors import DataError

# ---------------------------------------------------------------------------------------------
# Expected files.

IDX_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions.
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension.

_IDX_SOURCES = {
    'mnist': ('MNIST', 'http://yann.lecun.com/exdb/mnist/ or its mirror '
              'https://storage.googleapis.com/cvdf-datasets/mnist/'),
    'fashion_mnist': ('Fashion-MNIST', 'https://github.com/zalandoresearch/fashion-mnist, '
                      'e.g. http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'),
}

CIFAR10_ZIP = 'cifar10_jpg_q75.zip'
# The standard CIFAR-10 label names; alphabetical, so label = index in sorted class-name order.
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')
_CIFAR_MEMBER_RE = re.compile(r'^(?:.*/)?(train|test)/([^/]+)/([^/]+\.(?:jpe?g|png))$',
                              re.IGNORECASE)

CELEBA_IMAGES_DIR = 'img_align_celeba'
CELEBA_IMAGES_ZIP = 'img_align_celeba.zip'
CELEBA_PARTITION = 'list_eval_partition.txt'
CELEBA_IMAGE_SIZE = (178, 218)  # PIL (width, height).
CELEBA_SPLITS = ('train', 'validation', 'test')  # Partition values 0, 1, 2.

_CANONICAL = {
    'mnist': 'mnist',
    'fashion_mnist': 'fashion_mnist',
    'cifar10': 'cifar10',
    'celeba': 'celeb_a',
    'celeba140': 'celeb_a',
    'celeb_a': 'celeb_a',
}


def _idx_instructions(dataset: str) -> str:
  title, url = _IDX_SOURCES[dataset]
  names = ', '.join(IDX_FILES['train'] + IDX_FILES['test'])
  return f'must contain {names} (the canonical {title} IDX .gz files from {url})'


_CIFAR_INSTRUCTIONS = (
    f'must contain {CIFAR10_ZIP} (a zip of train/<class>/*.jpg and test/<class>/*.jpg with the '
    f'class folders {", ".join(CIFAR10_CLASSES)}) or those train/ and test/ folders extracted')

_CELEBA_INSTRUCTIONS = (
    f'must contain {CELEBA_PARTITION} and the aligned images, either as the folder '
    f'{CELEBA_IMAGES_DIR}/ (000001.jpg ... 202599.jpg, 178x218 pixels) or as '
    f'{CELEBA_IMAGES_ZIP} (both from the official CelebA release, '
    'https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html: "Align&Cropped Images" and '
    f'"Eval/{CELEBA_PARTITION}")')


def _instructions(dataset: str) -> str:
  if dataset in _IDX_SOURCES:
    return _idx_instructions(dataset)
  return _CIFAR_INSTRUCTIONS if dataset == 'cifar10' else _CELEBA_INSTRUCTIONS


def _title(dataset: str) -> str:
  return {'mnist': 'MNIST', 'fashion_mnist': 'Fashion-MNIST', 'cifar10': 'CIFAR-10',
          'celeb_a': 'CelebA'}[dataset]


def _fail(dataset: str, manual_dir: Any, problem: str) -> DataError:
  return DataError(f'{_title(dataset)} manual dir {manual_dir} {_instructions(dataset)}; '
                   f'{problem}')


# ---------------------------------------------------------------------------------------------
# Validation (cheap: file existence, IDX headers, zip member lists, one image header).


def validate_manual_dir(dataset: str, manual_dir: Any) -> Dict[str, Any]:
  """Checks that `manual_dir` holds the files of `dataset`; raises one `DataError` if not.

  Cheap enough to call before training starts: it checks file existence, IDX header magic
  numbers and shapes, zip member lists and the size of one image, without decoding the data.

  Args:
    dataset: 'mnist', 'fashion_mnist', 'cifar10', 'celeba' / 'celeba140' (or 'celeb_a').
    manual_dir: the folder to check.

  Returns:
    A description of what was found (used by the builders to generate examples).
  """
  if dataset not in _CANONICAL:
    raise ValueError(f'No local builder for dataset {dataset!r}; known: {sorted(_CANONICAL)}')
  dataset = _CANONICAL[dataset]
  if manual_dir is None or not str(manual_dir):
    raise _fail(dataset, '(none given)', 'no manual dir was given (pass '
                'tfds.download.DownloadConfig(manual_dir=...) / --config.data.manual_dir).')
  manual_dir = os.fspath(manual_dir)
  if not os.path.isdir(manual_dir):
    raise _fail(dataset, manual_dir, 'that folder does not exist.')
  if dataset in _IDX_SOURCES:
    return _validate_idx(dataset, manual_dir)
  if dataset == 'cifar10':
    return _validate_cifar10(manual_dir)
  return _validate_celeba(manual_dir)


def _open_maybe_gzip(path: str):
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def _read_idx_header(path: str) -> Tuple[int, Tuple[int, ...]]:
  """(magic, dims) of an IDX file, reading only its header."""
  with _open_maybe_gzip(path) as f:
    head = f.read(4)
    if len(head) < 4:
      raise ValueError('file too short for an IDX header')
    magic = int.from_bytes(head, 'big')
    ndim = head[3]
    if head[:2] != b'\x00\x00' or head[2] != 0x08 or ndim not in (1, 3):
      return magic, ()
    dims_bytes = f.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
      raise ValueError('file too short for an IDX header')
    dims = tuple(int.from_bytes(dims_bytes[4 * i:4 * i + 4], 'big') for i in range(ndim))
  return magic, dims


def _validate_idx(dataset: str, manual_dir: str) -> Dict[str, Any]:
  paths, missing = {}, []
  for name in IDX_FILES['train'] + IDX_FILES['test']:
    path = os.path.join(manual_dir, name)
    if os.path.isfile(path):
      paths[name] = path
    elif os.path.isfile(path[:-len('.gz')]):  # An already decompressed copy is fine too.
      paths[name] = path[:-len('.gz')]
    else:
      missing.append(name)
  if missing:
    raise _fail(dataset, manual_dir, f'missing: {", ".join(missing)}.')

  problems, result = [], {}
  for split, (images_name, labels_name) in IDX_FILES.items():
    counts = {}
    for name, want_magic, want_dims in ((images_name, _IDX_IMAGES_MAGIC, 3),
                                        (labels_name, _IDX_LABELS_MAGIC, 1)):
      try:
        magic, dims = _read_idx_header(paths[name])
      except (OSError, EOFError, ValueError) as e:  # gzip.BadGzipFile is an OSError.
        problems.append(f'{name} is not a readable IDX file ({e})')
        continue
      if magic != want_magic or len(dims) != want_dims:
        problems.append(f'{name} has IDX magic number {magic} (expected {want_magic}: '
                        f'{"images" if want_dims == 3 else "labels"})')
        continue
      if want_dims == 3 and dims[1:] != (28, 28):
        problems.append(f'{name} holds {dims[1]}x{dims[2]} images (expected 28x28)')
        continue
      counts[name] = dims[0]
    if len(counts) == 2:
      if counts[images_name] != counts[labels_name]:
        problems.append(f'{images_name} holds {counts[images_name]} images but {labels_name} '
                        f'{counts[labels_name]} labels')
      elif counts[images_name] == 0:
        problems.append(f'{images_name} holds no images')
      result[split] = dict(images=paths[images_name], labels=paths[labels_name],
                           num_examples=counts[images_name])
  if problems:
    raise _fail(dataset, manual_dir, 'problems: ' + '; '.join(problems) + '.')
  return result


def _check_image_bytes(data: bytes, size: Tuple[int, int]) -> Optional[str]:
  """None if `data` is an image of PIL size `size` (header only), else what is wrong."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.size != size:
        return f'is {im.size[0]}x{im.size[1]} pixels (expected {size[0]}x{size[1]})'
  except Exception as e:  # pylint: disable=broad-except
    return f'is not a readable image ({e})'
  return None


def _validate_cifar10(manual_dir: str) -> Dict[str, Any]:
  zip_path = os.path.join(manual_dir, CIFAR10_ZIP)
  if os.path.isfile(zip_path):
    try:
      with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
      raise _fail('cifar10', manual_dir, f'{CIFAR10_ZIP} is not a readable zip ({e}).') from e
    source = ('zip', zip_path)
  elif (os.path.isdir(os.path.join(manual_dir, 'train')) and
        os.path.isdir(os.path.join(manual_dir, 'test'))):
    names = []
    for split in ('train', 'test'):
      for root, _, files in os.walk(os.path.join(manual_dir, split)):
        rel = os.path.relpath(root, manual_dir).replace(os.sep, '/')
        names.extend(f'{rel}/{f}' for f in files)
    source = ('dir', manual_dir)
  else:
    raise _fail('cifar10', manual_dir,
                f'found neither {CIFAR10_ZIP} nor train/ and test/ folders.')

  files: Dict[str, List[Tuple[str, int]]] = {'train': [], 'test': []}
  unknown = set()
  for name in names:
    m = _CIFAR_MEMBER_RE.match(name)
    if not m:
      continue
    split, cls = m.group(1).lower(), m.group(2)
    if cls not in CIFAR10_CLASSES:
      unknown.add(cls)
      continue
    files[split].append((name, CIFAR10_CLASSES.index(cls)))
  problems = []
  if unknown:
    problems.append(f'unknown class folders {sorted(unknown)}')
  for split in ('train', 'test'):
    if not files[split]:
      problems.append(f'no {split}/<class>/*.jpg images found')
  if not problems:
    for split in ('train', 'test'):
      files[split].sort()
      first = files[split][0][0]
      if source[0] == 'zip':
        with zipfile.ZipFile(zip_path) as z:
          data = z.read(first)
      else:
        with open(os.path.join(manual_dir, first), 'rb') as f:
          data = f.read()
      problem = _check_image_bytes(data, (32, 32))
      if problem:
        problems.append(f'{first} {problem}')
  if problems:
    raise _fail('cifar10', manual_dir, 'problems: ' + '; '.join(problems) + '.')
  return dict(source=source, files=files,
              num_examples={s: len(v) for s, v in files.items()})


def _validate_celeba(manual_dir: str) -> Dict[str, Any]:
  partition_path = os.path.join(manual_dir, CELEBA_PARTITION)
  images_dir = os.path.join(manual_dir, CELEBA_IMAGES_DIR)
  images_zip = os.path.join(manual_dir, CELEBA_IMAGES_ZIP)
  missing = []
  if not os.path.isfile(partition_path):
    missing.append(CELEBA_PARTITION)
  if os.path.isdir(images_dir):
    source = ('dir', images_dir)
  elif os.path.isfile(images_zip):
    source = ('zip', images_zip)
  else:
    missing.append(f'{CELEBA_IMAGES_DIR}/ (or {CELEBA_IMAGES_ZIP})')
  if missing:
    raise _fail('celeb_a', manual_dir, f'missing: {", ".join(missing)}.')

  splits: Dict[str, List[str]] = {s: [] for s in CELEBA_SPLITS}
  with open(partition_path) as f:
    for lineno, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 2 or parts[1] not in ('0', '1', '2'):
        raise _fail('celeb_a', manual_dir, f'{CELEBA_PARTITION} line {lineno} is {line!r}; '
                    'expected lines like "000001.jpg 0" (0 train, 1 validation, 2 test).')
      splits[CELEBA_SPLITS[int(parts[1])]].append(parts[0])
  listed = [n for s in CELEBA_SPLITS for n in splits[s]]
  if not listed:
    raise _fail('celeb_a', manual_dir, f'{CELEBA_PARTITION} lists no images.')

  if source[0] == 'dir':
    available = {n: n for n in os.listdir(images_dir)}
  else:
    try:
      with zipfile.ZipFile(images_zip) as z:
        available = {os.path.basename(n): n for n in z.namelist() if not n.endswith('/')}
    except (zipfile.BadZipFile, OSError) as e:
      raise _fail('celeb_a', manual_dir, f'{CELEBA_IMAGES_ZIP} is not a readable zip '
                  f'({e}).') from e
  absent = [n for n in listed if n not in available]
  if absent:
    raise _fail('celeb_a', manual_dir, f'{len(absent)} of the {len(listed)} images listed in '
                f'{CELEBA_PARTITION} are missing from {os.path.basename(source[1])}, e.g. '
                f'{", ".join(absent[:5])}.')
  first = min(listed)
  data = _read_celeba_image(source, available[first])
  problem = _check_image_bytes(data, CELEBA_IMAGE_SIZE)
  if problem:
    raise _fail('celeb_a', manual_dir, f'{first} {problem}.')
  return dict(source=source, members={n: available[n] for n in listed},
              splits={s: sorted(v) for s, v in splits.items()},
              num_examples={s: len(v) for s, v in splits.items()})


def _read_celeba_image(source: Tuple[str, str], member: str, zf=None) -> bytes:
  if source[0] == 'dir':
    with open(os.path.join(source[1], member), 'rb') as f:
      return f.read()
  if zf is not None:
    return zf.read(member)
  with zipfile.ZipFile(source[1]) as z:
    return z.read(member)


# ---------------------------------------------------------------------------------------------
# Builders.


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 [H, W, 1] or [H, W, 3] → PNG bytes (Pillow; lossless, no TensorFlow needed)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'png_bytes takes uint8 [H, W, 1|3], got {image.dtype} {image.shape}.')
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format='PNG')
  return buf.getvalue()


#: The file format of the in-memory data sets' local builders (readable without TensorFlow).
ARRAY_RECORD = 'array_record'


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing: manual dir lookup, validation, DataError instead of AssertionError."""

  DATASET = ''  # Key of validate_manual_dir.
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release (tsvae local builder).'}

  def _checked_manual_dir(self, dl_manager) -> Dict[str, Any]:
    try:
      manual_dir = dl_manager.manual_dir
    except (AssertionError, ValueError):
      # tfds raises AssertionError for a missing or empty manual dir; say what belongs there.
      manual_dir = getattr(dl_manager, '_manual_dir', None)
    return validate_manual_dir(self.DATASET, manual_dir)


class _ArrayRecordBuilder(_LocalBuilder, skip_registration=True):
  """Written as array_record with PNG-encoded images: prepared and read without TensorFlow."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release (tsvae local builder).',
      '1.1.0': 'array_record files, images PNG-encoded by Pillow (no TensorFlow needed).',
  }

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or ARRAY_RECORD, **kwargs)


class _IdxBuilder(_ArrayRecordBuilder, skip_registration=True):
  """MNIST-format (IDX) data sets."""

  def _split_generators(self, dl_manager):
    spec = self._checked_manual_dir(dl_manager)
    return {split: self._generate_examples(spec[split]) for split in ('train', 'test')}

  def _generate_examples(self, split_spec):
    n = split_spec['num_examples']
    images = _read_idx_array(self.DATASET, split_spec['images'], n, (28, 28))
    labels = _read_idx_array(self.DATASET, split_spec['labels'], n, ())
    if labels.size and labels.max() > 9:
      raise DataError(f'{split_spec["labels"]} holds label {labels.max()}; expected 0..9.')
    for i in range(n):
      yield i, {'image': png_bytes(images[i][..., None]), 'label': int(labels[i])}


def _read_idx_array(dataset: str, path: str, n: int, shape: Tuple[int, ...]) -> np.ndarray:
  header = 4 + 4 * (1 + len(shape))
  with _open_maybe_gzip(path) as f:
    data = f.read()
  expected = header + n * int(np.prod(shape, dtype=np.int64))
  if len(data) != expected:
    raise DataError(f'{_title(dataset)} file {path} holds {len(data)} bytes after '
                    f'decompression; its header promises {expected} (truncated or corrupt '
                    'download?). Replace it with the canonical file: '
                    f'{_instructions(dataset)}.')
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape((n,) + shape)


class TsvaeMnist(_IdxBuilder):
  """MNIST from the four canonical IDX files in the manual dir."""

  name = 'tsvae_mnist'
  DATASET = 'mnist'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'The manual dir {_idx_instructions("mnist")}.'

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description='MNIST handwritten digits, read from local IDX files, in IDX order.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='http://yann.lecun.com/exdb/mnist/',
        disable_shuffling=True,
    )


class TsvaeFashionMnist(_IdxBuilder):
  """Fashion-MNIST from the four canonical IDX files in the manual dir."""

  name = 'tsvae_fashion_mnist'
  DATASET = 'fashion_mnist'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'The manual dir {_idx_instructions("fashion_mnist")}.'

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description='Fashion-MNIST, read from local IDX files, in IDX order.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(names=[
                'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                'Sneaker', 'Bag', 'Ankle boot'
            ]),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/zalandoresearch/fashion-mnist',
        disable_shuffling=True,
    )


def cifar10_info_fields() -> Dict[str, Any]:
  """DatasetInfo fields shared by both CIFAR-10 builders (local files, download route)."""
  return dict(
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(32, 32, 3)),
          'label': tfds.features.ClassLabel(names=list(CIFAR10_CLASSES)),
      }),
      supervised_keys=('image', 'label'),
      homepage='https://www.cs.toronto.edu/~kriz/cifar.html',
      disable_shuffling=True,
  )


class TsvaeCifar10(_ArrayRecordBuilder):
  """CIFAR-10 from a zip (or folders) of per-class JPEGs in the manual dir."""

  name = 'tsvae_cifar10'
  DATASET = 'cifar10'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'The manual dir {_CIFAR_INSTRUCTIONS}.'

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=('CIFAR-10 read from local per-class image files (decoded with PIL, '
                     'stored losslessly), in sorted path order.'),
        **cifar10_info_fields())

  def _split_generators(self, dl_manager):
    spec = self._checked_manual_dir(dl_manager)
    return {split: self._generate_examples(spec['source'], spec['files'][split])
            for split in ('train', 'test')}

  def _generate_examples(self, source, files):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    zf = zipfile.ZipFile(source[1]) if source[0] == 'zip' else None
    try:
      for i, (name, label) in enumerate(files):
        if zf is not None:
          data = zf.read(name)
        else:
          with open(os.path.join(source[1], name), 'rb') as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
          image = np.asarray(im.convert('RGB'), dtype=np.uint8)
        if image.shape != (32, 32, 3):
          raise DataError(f'CIFAR-10 image {name} in {source[1]} has shape {image.shape}; '
                          f'expected 32x32x3. The manual dir {_CIFAR_INSTRUCTIONS}.')
        yield i, {'image': png_bytes(image), 'label': label}
    finally:
      if zf is not None:
        zf.close()


class TsvaeCelebA(_LocalBuilder):
  """CelebA aligned images (178x218 JPEGs, stored as is) with the official split."""

  name = 'tsvae_celeb_a'
  DATASET = 'celeb_a'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'The manual dir {_CELEBA_INSTRUCTIONS}.'

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=('CelebA aligned-and-cropped images (original 178x218 JPEG bytes), '
                     'official train/validation/test split from list_eval_partition.txt, '
                     'sorted file-name order within each split.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(218, 178, 3), encoding_format='jpeg'),
        }),
        homepage='https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    spec = self._checked_manual_dir(dl_manager)
    return {split: self._generate_examples(spec['source'], spec['members'], spec['splits'][split])
            for split in CELEBA_SPLITS}

  def _generate_examples(self, source, members, names):
    zf = zipfile.ZipFile(source[1]) if source[0] == 'zip' else None
    try:
      for i, name in enumerate(names):
        data = _read_celeba_image(source, members[name], zf)
        problem = _check_image_bytes(data, CELEBA_IMAGE_SIZE)
        if problem:
          raise DataError(f'CelebA image {name} in {source[1]} {problem}. The manual dir '
                          f'{_CELEBA_INSTRUCTIONS}.')
        yield i, {'image': data}
    finally:
      if zf is not None:
        zf.close()


# Dataset name (as used by tsvae configs) -> local builder class.
LOCAL_BUILDERS = {
    'mnist': TsvaeMnist,
    'fashion_mnist': TsvaeFashionMnist,
    'cifar10': TsvaeCifar10,
    'celeba': TsvaeCelebA,
    'celeba140': TsvaeCelebA,
}
