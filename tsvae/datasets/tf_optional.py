"""TensorFlow is optional: the one place that imports it for the data layer.

A base install (`pip install tsvae`) has no TensorFlow. It trains on MNIST, Fashion-MNIST and
CIFAR-10 and their stage-2 latents: the local builders write array_record files with PNG-encoded
images, `tfds.data_source` reads them (Pillow decodes), and epochs are NumPy batches. The `tf`
extra (`pip install 'tsvae[tf]'`) adds what only TensorFlow does here: tf.data streaming of data
sets kept out of memory (CelebA), the stock tfds builders that encode with TensorFlow (the
download route), the outlier corruption of the robust-PCA demo, TensorBoard summaries (clu) and
gs:// workdirs (`tf.io.gfile`). Asking for one of those without TensorFlow raises
`TensorFlowRequired` (a `DataError`), naming the extra.
"""

import importlib
from typing import Any, Optional

from tsvae.datasets.errors import DataError

#: What to install for the TensorFlow-only features.
TF_EXTRA = "pip install 'tsvae[tf]'"

_MISSING = object()
_TF: Any = None  # The module once imported, _MISSING when it cannot be.


class TensorFlowRequired(DataError):
  """A feature that needs TensorFlow was requested, and TensorFlow cannot be imported."""


def _import() -> Any:
  global _TF
  if _TF is None:
    try:
      tf = importlib.import_module('tensorflow')
    except ImportError:
      _TF = _MISSING
    else:
      # This process feeds JAX; keep TensorFlow off any accelerator.
      for kind in ('GPU', 'TPU'):
        try:
          tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):  # Already initialised, or no such device type.
          pass
      _TF = tf
  return None if _TF is _MISSING else _TF


def available() -> bool:
  """Whether `import tensorflow` works in this process (imports it on the first call)."""
  return _import() is not None


def require(what: str) -> Any:
  """The tensorflow module; `TensorFlowRequired` naming `what` and the extra when it is absent."""
  tf = _import()
  if tf is None:
    raise TensorFlowRequired(
        f'{what} needs TensorFlow, which is not installed here (`import tensorflow` fails). '
        f'Install the extra: {TF_EXTRA} (or pip install tensorflow-cpu). Without TensorFlow, '
        'tsvae trains MNIST, Fashion-MNIST and CIFAR-10 from a local copy '
        '(--config.data.manual_dir) held in memory.')
  return tf


def tfds(what: Optional[str] = None) -> Any:
  """The tensorflow_datasets module (DataError naming `what` if it is not installed)."""
  try:
    return importlib.import_module('tensorflow_datasets')
  except ImportError as e:
    raise DataError(
        f'{what or "This data route"} needs tensorflow-datasets, which is not installed here '
        f'({e}); pip install tsvae installs it. A prepared array file '
        '(python -m tsvae.datasets.arrays, see docs/no-tensorflow.md) needs only NumPy.') from e
