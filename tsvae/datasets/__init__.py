"""Local ("manual dir") tfds builders for the tsvae benchmark data sets.

Importing this package registers four tfds builders whose names do not clash with the stock ones:
`tsvae_mnist`, `tsvae_fashion_mnist`, `tsvae_cifar10` and `tsvae_celeb_a`. Each reads its data
from a local folder passed as `tfds.download.DownloadConfig(manual_dir=...)`. The folder can be
checked cheaply beforehand with `validate_manual_dir`, which raises `DataError` saying exactly
which files to put where.
"""

from tsvae.datasets.errors import DataError
from tsvae.datasets.local_builders import LOCAL_BUILDERS
from tsvae.datasets.local_builders import TsvaeCelebA
from tsvae.datasets.local_builders import TsvaeCifar10
from tsvae.datasets.local_builders import TsvaeFashionMnist
from tsvae.datasets.local_builders import TsvaeMnist
from tsvae.datasets.local_builders import validate_manual_dir

__all__ = [
    'DataError',
    'LOCAL_BUILDERS',
    'TsvaeCelebA',
    'TsvaeCifar10',
    'TsvaeFashionMnist',
    'TsvaeMnist',
    'validate_manual_dir',
]
