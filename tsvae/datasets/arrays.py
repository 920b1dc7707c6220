r"""Prepared arrays: a data set as one NumPy `.npz`, read with NumPy alone (no tfds, no TF).

For machines that have JAX but neither TensorFlow nor tensorflow-datasets (nor a network), e.g.
a lent GPU machine. Prepare the file where tfds is installed, from the local builder's
array_record files (the same pixels and order every tsvae reader sees):

  python -m tsvae.datasets.arrays --dataset=mnist --manual_dir=../shared/data/mnist \
      --out_dir=/tmp/mnist_arrays

then train there with `--config.data.manual_dir=/tmp/mnist_arrays`: a manual dir holding
`tsvae_<dataset>.npz` is read as prepared arrays (`tsvae.input_pipeline.get_builder`). The file
holds `train_image`, `test_image` (uint8 [N, H, W, C], stored order), `train_label`,
`test_label` (int64 [N]) and `meta` (JSON: dataset, source builder and version, sha256 of the
images). MNIST is 11 MB compressed. In-memory data sets only (MNIST, Fashion-MNIST, CIFAR-10).
"""

import hashlib
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np

from tsvae.datasets.errors import DataError

SPLITS = ('train', 'test')
ARRAY_DATASETS = {'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}


def arrays_file(manual_dir: str, dataset: str) -> str:
  return os.path.join(os.fspath(manual_dir), f'tsvae_{dataset}.npz')


def has_arrays(manual_dir: Optional[str], dataset: str) -> bool:
  """Whether `manual_dir` holds prepared arrays of `dataset`."""
  return bool(manual_dir) and os.path.isfile(arrays_file(manual_dir, dataset))


class ArraysBuilder:
  """Builder-like handle on `tsvae_<dataset>.npz` (what tsvae.input_pipeline reads from it)."""

  def __init__(self, manual_dir: str, dataset: str):
    self.path = arrays_file(manual_dir, dataset)
    self.dataset = dataset
    self.name = f'tsvae_arrays_{dataset}'
    self._arrays: Optional[Dict[str, np.ndarray]] = None

  def __repr__(self):
    return f'ArraysBuilder({self.path!r})'

  def _load(self) -> Dict[str, np.ndarray]:
    if self._arrays is None:
      self._arrays = load_arrays(self.path, self.dataset)
    return self._arrays

  def split(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], int64 labels [N]) of `split` (read-only arrays)."""
    split = str(split)
    if split not in SPLITS:
      raise DataError(f'{self.path} holds the splits {SPLITS}; {split!r} was asked for '
                      '(split slicing is not supported on prepared arrays).')
    a = self._load()
    return a[f'{split}_image'], a[f'{split}_label']

  def num_examples(self, split: str) -> int:
    return len(self.split(split)[1])


def load_arrays(path: str, dataset: str) -> Dict[str, np.ndarray]:
  """The checked arrays of a prepared file (DataError naming the problem)."""
  want = ARRAY_DATASETS.get(dataset)
  if want is None:
    raise DataError(f'Prepared arrays exist for {sorted(ARRAY_DATASETS)} only, not {dataset!r}.')
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise DataError(f'{path} is not a readable .npz of prepared arrays ({e}); write it again '
                    'with python -m tsvae.datasets.arrays.') from e
  problems = []
  for split in SPLITS:
    images, labels = arrays.get(f'{split}_image'), arrays.get(f'{split}_label')
    if images is None or labels is None:
      problems.append(f'{split}_image or {split}_label is missing')
    elif images.dtype != np.uint8 or images.shape[1:] != want or len(images) != len(labels):
      problems.append(f'{split}_image is {images.dtype} {images.shape} with {len(labels)} '
                      f'labels (expected uint8 [N, {", ".join(map(str, want))}])')
  meta = json.loads(str(arrays['meta'])) if 'meta' in arrays else {}
  if meta.get('dataset', dataset) != dataset:
    problems.append(f'it holds {meta["dataset"]!r}')
  if problems:
    raise DataError(f'{path} (prepared {dataset} arrays): {"; ".join(problems)}. Write it '
                    'again with python -m tsvae.datasets.arrays.')
  for v in arrays.values():
    v.setflags(write=False)
  return arrays


def validate(manual_dir: str, dataset: str):
  """Cheap check of a prepared file: it opens and lists the expected arrays (DataError)."""
  path = arrays_file(manual_dir, dataset)
  try:
    with np.load(path, allow_pickle=False) as z:
      names = set(z.files)
  except (OSError, ValueError) as e:
    raise DataError(f'{path} is not a readable .npz of prepared arrays ({e}).') from e
  missing = [f'{s}_{k}' for s in SPLITS for k in ('image', 'label') if f'{s}_{k}' not in names]
  if missing:
    raise DataError(f'{path} (prepared {dataset} arrays) lacks {", ".join(missing)}; write it '
                    'again with python -m tsvae.datasets.arrays.')


def write_arrays(out_dir: str, dataset: str, splits: Dict[str, Tuple[np.ndarray, np.ndarray]],
                 source: str = '') -> str:
  """Writes `tsvae_<dataset>.npz` (compressed) into `out_dir` atomically; its path."""
  arrays, digests = {}, {}
  for split in SPLITS:
    images, labels = splits[split]
    arrays[f'{split}_image'] = np.ascontiguousarray(images, np.uint8)
    arrays[f'{split}_label'] = np.asarray(labels, np.int64)
    digests[split] = hashlib.sha256(arrays[f'{split}_image'].tobytes()).hexdigest()
  meta = {'dataset': dataset, 'source': source, 'sha256_images': digests,
          'num_examples': {s: int(len(arrays[f'{s}_label'])) for s in SPLITS}}
  os.makedirs(out_dir, exist_ok=True)
  path = arrays_file(out_dir, dataset)
  tmp = f'{path}.tmp-{os.getpid()}.npz'
  np.savez_compressed(tmp, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
  os.replace(tmp, path)
  load_arrays(path, dataset)  # Reads back.
  return path


def prepare(dataset: str, manual_dir: str, out_dir: str, data_dir: Optional[str] = None) -> str:
  """Builds the local tfds data set of `manual_dir` and writes its arrays into `out_dir`."""
  from tsvae import input_pipeline  # pylint: disable=g-import-not-at-top  (tfds)
  if dataset not in ARRAY_DATASETS:
    raise DataError(f'Prepared arrays exist for {sorted(ARRAY_DATASETS)} only, not {dataset!r}.')
  builder = input_pipeline.get_builder(dataset, data_dir=data_dir, manual_dir=manual_dir)
  splits = {s: input_pipeline.labeled_images(builder, s, dataset) for s in SPLITS}
  return write_arrays(out_dir, dataset, splits,
                      source=f'{builder.name} {builder.version} from {manual_dir}')


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--dataset', required=True, choices=sorted(ARRAY_DATASETS))
  p.add_argument('--manual_dir', required=True, help='local copy of the data (as for tsvae.main)')
  p.add_argument('--out_dir', required=True, help='where tsvae_<dataset>.npz is written')
  p.add_argument('--data_dir', default=None, help='tfds data_dir (default: the tfds default)')
  args = p.parse_args(argv)
  print(prepare(args.dataset, args.manual_dir, args.out_dir, args.data_dir))


if __name__ == '__main__':
  main()
