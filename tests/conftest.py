"""Test set-up: two host CPU devices (set before JAX is imported) and shared fixtures."""

import os
import shutil
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# One JAX persistent compilation cache for the whole session: the xdist workers and every
# `tsvae.main` subprocess inherit it through the environment, so the same tiny InfoGAN and
# stage-2 programs, which dozens of tests and subprocess runs build, compile once. A cached
# executable is the one a fresh compilation makes, so bitwise tests are unaffected. The
# controller (or a run without xdist) creates it and removes it at the end; a cache the user
# set already is used as it is.
_OWN_COMPILATION_CACHE = None
if 'PYTEST_XDIST_WORKER' not in os.environ and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_COMPILATION_CACHE = tempfile.mkdtemp(prefix='tsvae-tests-jax-cache-')
  os.environ.update({'JAX_COMPILATION_CACHE_DIR': _OWN_COMPILATION_CACHE,
                     'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                     'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'})

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO_ROOT, '..', 'shared', 'data')


@pytest.fixture(autouse=True, scope='session')
def _hide_gpus_from_tensorflow():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
  except Exception:  # pylint: disable=broad-except
    pass
  yield


# Fixtures that each cost a whole training run (or a weights conversion). Under xdist a session-
# or module-scoped fixture is built once per worker that runs a test using it, so the tests that
# share one are kept on one worker (`--dist loadgroup`, setup.cfg); the other tests spread freely.
SHARED_RUN_FIXTURES = ('evaluated_run', 'finished_run', 'runs', 'mock_run', 'real_variables')


@pytest.hookimpl(tryfirst=True)  # Before xdist's own hook reads the groups.
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    for name in SHARED_RUN_FIXTURES:
      if name in getattr(item, 'fixturenames', ()):
        item.add_marker(pytest.mark.xdist_group(name))
        break


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_COMPILATION_CACHE:
    shutil.rmtree(_OWN_COMPILATION_CACHE, ignore_errors=True)


def shared_data(name: str) -> str:
  """Path of ../shared/data/<name>; skips the test when it is absent."""
  path = os.path.join(SHARED_DATA, name)
  if not os.path.isdir(path):
    pytest.skip(f'{path} not present (offline data copies live beside the checkout)')
  return path


@pytest.fixture(scope='session')
def evaluated_run(tmp_path_factory):
  """A tiny mock-data two-stage run with evaluation enabled (tsvae's own call site at the end of
  a run), shared by the evaluation tests: (config, workdir, cache_dir, result). Treat the
  workdir as read-only (copy it to change it): other tests evaluate it again."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from testdata import eval_overrides, tiny_config  # pylint: disable=g-import-not-at-top
  from tsvae import pipeline  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('eval_run'))
  cache_dir = str(tmp_path_factory.mktemp('eval_cache'))
  config = tiny_config(**eval_overrides(cache_dir))
  with tfds.testing.mock_data(num_examples=40):
    result = pipeline.run(config, workdir)
  return config, workdir, cache_dir, result


@pytest.fixture(scope='session')
def random_inception(tmp_path_factory):
  """Random FID-Inception weights written as a .pth with torch's names, and read back:
  (variables, path), shared by the Inception and the evaluation tests. Treat both as read-only."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from torch_writer import write_pth  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import inception  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import inception_weights  # pylint: disable=g-import-not-at-top
  variables = inception.random_variables(seed=1)
  state = inception.state_dict_from_variables(variables)
  rng = np.random.default_rng(2)
  extra = {'fc.weight': rng.normal(size=(1008, 2048)).astype(np.float32),
           'fc.bias': np.zeros(1008, np.float32)}
  tracked = {k.replace('running_mean', 'num_batches_tracked'): np.array(5, np.int64)
             for k in state if k.endswith('running_mean')}
  path = str(tmp_path_factory.mktemp('inception') / inception_weights.PYTORCH_FID_PTH.cache_name)
  write_pth(path, {**state, **extra, **tracked}, fmt='zip')
  return variables, path
