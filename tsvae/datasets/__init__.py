"""Local ("manual dir") tfds builders for the tsvae benchmark data sets.

Importing `tsvae.datasets.local_builders` registers four tfds builders whose names do not clash
with the stock ones: `tsvae_mnist`, `tsvae_fashion_mnist`, `tsvae_cifar10` and `tsvae_celeb_a`.
Each reads its data from a local folder passed as `tfds.download.DownloadConfig(manual_dir=...)`.
The folder can be checked cheaply beforehand with `validate_manual_dir`, which raises `DataError`
saying exactly which files to put where. The builders (and tensorflow_datasets) are imported on
first use, so `tsvae.datasets.arrays` (prepared NumPy arrays) works where tfds is not installed.
"""

import importlib

from tsvae.datasets.errors import DataError

__all__ = [
    'DataError',
    'LOCAL_BUILDERS',
    'TsvaeCelebA',
    'TsvaeCifar10',
    'TsvaeFashionMnist',
    'TsvaeMnist',
    'validate_manual_dir',
]

_LAZY = ('LOCAL_BUILDERS', 'TsvaeCelebA', 'TsvaeCifar10', 'TsvaeFashionMnist', 'TsvaeMnist',
         'validate_manual_dir')


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module('tsvae.datasets.local_builders'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
