"""Hides installed packages from this interpreter, as if they were not installed.

A Python started with this folder first on PYTHONPATH cannot import the top-level modules named
in TSVAE_HIDE_MODULES (comma-separated; default "tensorflow"), nor their submodules:
`import tensorflow` raises ModuleNotFoundError and `importlib.util.find_spec('tensorflow')` is
None, which is what tfds and etils check. tests/no_tensorflow_test.py and
tests/gpu_check_test.py use it to run tsvae as a base install (no TensorFlow) and as on the lent
GPU machine (no TensorFlow, tensorflow-datasets, array_record or clu).
"""

import importlib.machinery
import os
import sys

_HIDDEN = tuple(m.strip() for m in os.environ.get('TSVAE_HIDE_MODULES', 'tensorflow').split(',')
                if m.strip())


class _HidingPathFinder(importlib.machinery.PathFinder):

  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.split('.', 1)[0] in _HIDDEN:
      return None
    return super().find_spec(name, path, target)


sys.meta_path[:] = [_HidingPathFinder if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
