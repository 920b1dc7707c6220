"""Workdir I/O on a remote file system: everything but Orbax, against TensorFlow's `ram://`.

`ram://` is TensorFlow's in-memory file system, reached through the same `tf.io.gfile` calls that
`tsvae.fileio` makes for gs://, so these tests run the remote code paths (temporary object +
rename, marker-last latent upload, whole-file metrics rewrites) without a bucket. Each test gets
its own `ram://` root, created first like a bucket. Orbax cannot open `ram://` (etils.epath has
no such scheme and tensorstore no such driver), so the whole-run test keeps the checkpoints in a
local folder and puts everything else in `ram://` (with a one-layer stage-1 network, to keep it
fast). Not covered: a real gs:// bucket (latency, credentials, GCS's own rename), and Orbax on
gs://.
"""

import io
import json
import uuid

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import testdata
from testdata import tiny_config
from tsvae import checkpointing
from tsvae import config_lib
from tsvae import fileio
from tsvae import images
from tsvae import input_pipeline as ip
from tsvae import metric_logging
from tsvae import models
from tsvae import pipeline
from tsvae import cli

gfile = tf.io.gfile


@pytest.fixture
def ram():
  """A fresh ram:// root that exists (as a bucket would); deleted afterwards."""
  root = f'ram://tsvae-test-{uuid.uuid4().hex[:12]}'
  gfile.makedirs(root)
  yield root
  if gfile.exists(root):
    gfile.rmtree(root)


def _files(root):
  """Every file below `root`, relative to it."""
  out = []
  for directory, _, names in gfile.walk(root):
    out.extend(f'{directory}/{name}'[len(root) + 1:] for name in names)
  return sorted(out)


# ------------------------------------------------------------------------------- fileio


def test_paths_are_classified():
  assert fileio.is_remote('gs://bucket/run') and fileio.is_remote('ram://x')
  assert not fileio.is_remote('/tmp/run') and not fileio.is_remote('run')
  assert not fileio.is_remote('file:///tmp/run')
  assert fileio.abspath('gs://bucket/run') == 'gs://bucket/run'
  assert fileio.abspath('file:///tmp/run') == '/tmp/run'


def test_atomic_writes_replace_whole_objects_and_leave_no_temporaries(ram):
  path = f'{ram}/run/config.json'
  assert fileio.read_json(path) is None and not fileio.exists(path)
  fileio.atomic_write_json(path, {'a': 1, 'long': 'x' * 100})
  fileio.atomic_write_json(path, {'a': 2})  # Shorter: must not keep a tail of the old one.
  assert fileio.read_json(path) == {'a': 2}
  assert fileio.listdir(f'{ram}/run') == ['config.json']
  assert fileio.getsize(path) == len(fileio.read_bytes(path))
  assert fileio.isdir(f'{ram}/run') and not fileio.isdir(path)
  with pytest.raises(FileNotFoundError):
    fileio.read_bytes(f'{ram}/run/absent.json')
  fileio.remove(path)
  fileio.remove(path)  # missing_ok
  assert not fileio.exists(path)


def test_failed_rename_keeps_the_old_object(ram, monkeypatch):
  path = f'{ram}/COMPLETE'
  fileio.atomic_write_json(path, {'step': 1})

  def broken_rename(*args, **kwargs):
    raise tf.errors.UnavailableError(None, None, 'connection reset')

  monkeypatch.setattr(gfile, 'rename', broken_rename)
  with pytest.raises(OSError, match='connection reset'):
    fileio.atomic_write_json(path, {'step': 2})
  assert fileio.read_json(path) == {'step': 1}
  assert fileio.listdir(ram) == ['COMPLETE']  # The temporary object was removed.


def test_check_writable_needs_an_existing_root_and_creates_nothing(ram):
  fileio.check_writable(f'{ram}/a/b/run')
  assert _files(ram) == [] and not fileio.exists(f'{ram}/a')
  missing = f'ram://tsvae-absent-{uuid.uuid4().hex[:12]}/run'
  with pytest.raises(PermissionError, match='create the bucket'):
    fileio.check_writable(missing)
  fileio.atomic_write_bytes(f'{ram}/file', b'x')
  with pytest.raises(PermissionError, match='is a file'):
    fileio.check_writable(f'{ram}/file/run')


# ------------------------------------------------------------------------------- config


def test_config_record_check_and_load(ram):
  workdir = f'{ram}/run'
  config = tiny_config()
  config_lib.check_workdir(config, workdir)
  assert _files(ram) == []  # Checking creates nothing.
  config_lib.record_config(config, workdir)
  recorded = fileio.read_bytes(f'{workdir}/config.json')
  config_lib.check_workdir(tiny_config(stage2__num_epochs=5), workdir)  # Run-control: fine.
  config_lib.record_config(tiny_config(stage2__num_epochs=5), workdir)
  assert fileio.read_bytes(f'{workdir}/config.json') == recorded  # Never replaced.
  with pytest.raises(config_lib.ConfigError, match='latent_dim: workdir has 8'):
    config_lib.check_workdir(tiny_config(latent_dim=16), workdir)
  loaded = cli.config_from_workdir(workdir)
  assert loaded.latent_dim == 8 and loaded.stage2.num_epochs == config.stage2.num_epochs
  assert _files(ram) == ['run/config.json']


def test_workdir_checks_refuse_untouched(ram):
  orphan = f'{ram}/orphan'
  fileio.atomic_write_json(f'{orphan}/stage1/COMPLETE', {'step': 1})
  with pytest.raises(config_lib.ConfigError, match='no config.json'):
    config_lib.check_workdir(tiny_config(), orphan)
  fileio.atomic_write_bytes(f'{ram}/bad/config.json', b'{not json')
  with pytest.raises(config_lib.ConfigError, match='unreadable'):
    config_lib.check_workdir(tiny_config(), f'{ram}/bad')
  missing = f'ram://tsvae-absent-{uuid.uuid4().hex[:12]}/run'
  with pytest.raises(config_lib.ConfigError, match='writable --workdir'):
    config_lib.check_workdir(tiny_config(), missing)
  assert not gfile.exists(missing)
  with pytest.raises(config_lib.ConfigError, match='no config.json'):
    cli.config_from_workdir(f'{ram}/nothing')


def test_record_config_failure_is_a_config_error(ram, monkeypatch):
  def denied(*args, **kwargs):
    raise tf.errors.PermissionDeniedError(None, None, 'bucket is read-only')

  monkeypatch.setattr(gfile, 'rename', denied)
  with pytest.raises(config_lib.ConfigError, match='read-only'):
    config_lib.record_config(tiny_config(), f'{ram}/run')
  assert _files(ram) == []


def test_complete_markers(ram):
  workdir = f'{ram}/run'
  assert not checkpointing.is_complete(workdir, 'stage1')
  checkpointing.mark_complete(workdir, 'stage1', {'step': 7})
  assert checkpointing.is_complete(workdir, 'stage1')
  assert not checkpointing.is_complete(workdir, 'stage2')
  assert fileio.read_json(f'{workdir}/stage1/COMPLETE') == {'step': 7}


# ------------------------------------------------------------------------------- metrics


def _lines(path):
  return [json.loads(line) for line in fileio.read_bytes(path).decode().splitlines()]


def test_metrics_jsonl_is_rewritten_whole_and_appended_across_writers(ram):
  path = f'{ram}/run/metrics.jsonl'
  writer = metric_logging.JsonlWriter(path, extra={'stage': 'stage1'},
                                      remote_upload_secs=3600)
  writer.write_scalars(1, {'loss': 3.0})  # The first record is uploaded at once.
  assert [r['step'] for r in _lines(path)] == [1]
  writer.write_scalars(2, {'loss': np.float32(2.5)})
  assert [r['step'] for r in _lines(path)] == [1]  # Waits for the interval or a flush.
  writer.flush()
  records = _lines(path)
  assert [(r['stage'], r['step'], r['loss']) for r in records] == [('stage1', 1, 3.0),
                                                                   ('stage1', 2, 2.5)]
  writer.close()
  # A later writer (the next stage, or a resumed run) keeps what is there.
  writer = metric_logging.JsonlWriter(path, extra={'stage': 'stage2'}, remote_upload_secs=0)
  writer.write_scalars(1, {'loss': 1.0})
  writer.write_scalars(2, {'loss': 0.5})
  assert [(r['stage'], r['step']) for r in _lines(path)] == [
      ('stage1', 1), ('stage1', 2), ('stage2', 1), ('stage2', 2)]
  assert fileio.listdir(f'{ram}/run') == ['metrics.jsonl']


def test_create_writer_writes_tensorboard_and_jsonl(ram):
  workdir = f'{ram}/run'
  writer = metric_logging.create_writer(workdir, 'stage1')
  writer.write_scalars(4, {'loss': 1.5})
  writer.flush()
  assert _lines(f'{workdir}/metrics.jsonl')[0]['step'] == 4
  assert gfile.glob(f'{workdir}/tensorboard/stage1/events.out.tfevents.*')


# ------------------------------------------------------------------------------- images


def test_image_grid(ram):
  path = f'{ram}/run/samples/stage2_samples.png'
  pictures = np.random.default_rng(0).uniform(size=(4, 5, 5, 1)).astype(np.float32)
  images.save_grid(path, pictures, 2)
  grid = np.asarray(Image.open(io.BytesIO(fileio.read_bytes(path))))
  np.testing.assert_array_equal(grid, images.make_grid(pictures, 2)[..., 0])
  assert fileio.listdir(f'{ram}/run/samples') == ['stage2_samples.png']


# ------------------------------------------------------------------------------- latents


def _latents(n, k=5, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((n, k)).astype(np.float32),
          rng.uniform(0.1, 1.0, (n, k)).astype(np.float32))


@pytest.mark.parametrize('file_format', ['npz', 'tfrecord'])
def test_latent_dataset_round_trip(ram, file_format):
  directory = f'{ram}/run/latents'
  mu, sigma = _latents(26)
  assert ip.write_latent_dataset(directory, mu, sigma, file_format) == directory
  latents = ip.read_latent_dataset_builder(directory)
  assert (latents.num_examples, latents.latent_dim) == (26, 5)
  np.testing.assert_array_equal(latents.load()['mu'], mu)
  np.testing.assert_array_equal(latents.load()['sigma'], sigma)
  batches = list(ip.make_latent_dataset(directory, global_batch_size=4, shuffle_seed=3,
                                        epoch=1).as_numpy_iterator())
  seen = np.concatenate([b['mu'] for b in batches])
  assert len(seen) == 24 and len({row.tobytes() for row in seen}) == 24
  assert {row.tobytes() for row in seen} <= {row.tobytes() for row in mu}
  files = set(fileio.listdir(directory))
  assert files == {'tsvae_latents.json', 'tsvae_latents.npz'} if file_format == 'npz' else (
      {'dataset_info.json', 'features.json', 'tsvae_latents.json'} <= files)
  # A new version replaces the old one whole (no stale shard or temporary left).
  mu2, sigma2 = _latents(8, seed=1)
  ip.write_latent_dataset(directory, mu2, sigma2)
  np.testing.assert_array_equal(ip.read_latent_dataset_builder(directory).load()['mu'], mu2)
  assert fileio.listdir(f'{ram}/run') == ['latents']


def test_half_uploaded_latents_are_not_complete(ram, monkeypatch):
  directory = f'{ram}/run/latents'
  ip.write_latent_dataset(directory, *_latents(26), 'tfrecord')

  class Died(Exception):
    pass

  def die_at(point, step=None):
    del step
    if point == 'latents.write':
      raise Died()

  # The writer dies after the shards were uploaded, before the marker.
  monkeypatch.setattr(ip.faults, 'kill_here', die_at)
  with pytest.raises(Died):
    ip.write_latent_dataset(directory, *_latents(30, seed=2), 'tfrecord')
  monkeypatch.undo()
  shards = [f for f in fileio.listdir(directory) if '.tfrecord-' in f]
  assert shards and 'tsvae_latents.json' not in fileio.listdir(directory)
  with pytest.raises(ip.DataError, match='incomplete: cannot read tsvae_latents.json'):
    ip.read_latent_dataset_builder(directory)
  mu, sigma = _latents(30, seed=2)  # The rerun writes it again.
  ip.write_latent_dataset(directory, mu, sigma)
  np.testing.assert_array_equal(ip.read_latent_dataset_builder(directory).load()['mu'], mu)


def test_truncated_or_missing_latent_files_are_refused(ram):
  directory = f'{ram}/run/latents'
  with pytest.raises(ip.DataError, match='does not exist'):
    ip.read_latent_dataset_builder(directory)
  ip.write_latent_dataset(directory, *_latents(26), 'tfrecord')
  shard = next(f for f in fileio.listdir(directory) if '.tfrecord-' in f)
  data = fileio.read_bytes(f'{directory}/{shard}')
  fileio.atomic_write_bytes(f'{directory}/{shard}', data[:-7])
  with pytest.raises(ip.DataError, match=f'{shard} has {len(data) - 7} bytes'):
    ip.read_latent_dataset_builder(directory)
  fileio.remove(f'{directory}/{shard}')
  fileio.remove(f'{directory}/features.json')
  with pytest.raises(ip.DataError, match='features.json is missing.*is missing'):
    ip.read_latent_dataset_builder(directory)


def test_flipped_byte_in_a_latent_shard_is_corrupt_not_incomplete(ram):
  directory = f'{ram}/run/latents'
  mu, sigma = _latents(26)
  ip.write_latent_dataset(directory, mu, sigma, 'tfrecord')
  shard = next(f for f in fileio.listdir(directory) if '.tfrecord-' in f)
  data = bytearray(fileio.read_bytes(f'{directory}/{shard}'))
  data[len(data) // 2] ^= 0x01  # Same size: only the checksum can tell.
  fileio.atomic_write_bytes(f'{directory}/{shard}', bytes(data))
  with pytest.raises(ip.CorruptLatents, match=f'is corrupt: {shard} does not match the SHA-256 '
                     'recorded when it was written.*move it aside'):
    ip.read_latent_dataset_builder(directory)
  fileio.atomic_write_bytes(f'{directory}/{shard}', bytes(data[:-1]))  # Truncated: named so.
  with pytest.raises(ip.CorruptLatents, match=f'{shard} has {len(data) - 1} bytes'):
    ip.read_latent_dataset_builder(directory)


# ------------------------------------------------------------------------------- a whole run


def test_tiny_run_on_a_remote_workdir(ram, tmp_path, monkeypatch):
  """two_stage.run with its workdir on ram://, Orbax's checkpoints in a local folder.

  Orbax cannot open ram:// (see the top). The stage-1 network is a one-layer stand-in: compiling
  the real InfoGAN train step takes most of a minute on a loaded 2-core machine, and what is
  tested here is the run's workdir I/O (main_test.py runs the real nets end to end, locally).
  """
  local_checkpoints = tmp_path / 'orbax'

  class LocalCheckpointer(checkpointing.StageCheckpointer):

    def __init__(self, workdir, stage, **kwargs):
      assert workdir.startswith('ram://')
      super().__init__(str(local_checkpoints), stage, **kwargs)

  monkeypatch.setattr(checkpointing, 'StageCheckpointer', LocalCheckpointer)
  monkeypatch.setattr(models, 'make_stage1_model', testdata.tiny_stage1_model)
  workdir = f'{ram}/run'
  config = tiny_config(stage1__max_steps=2, stage2__num_epochs=1, stage2__max_steps=2,
                       sampling__num_grid_images=4)
  with tfds.testing.mock_data(num_examples=16):
    result = pipeline.run(config, workdir)
  assert int(result['state1'].step) == 2 and int(result['state2'].step) == 2
  files = _files(workdir)
  for name in ('config.json', 'stage1/COMPLETE', 'stage2/COMPLETE', 'metrics.jsonl',
               'latents/tsvae_latents.json', 'samples/stage2_samples.png',
               'samples/stage1_samples.png', 'samples/reconstructions.png'):
    assert name in files, (name, files)
  assert any(f.startswith('tensorboard/stage2/events.out.tfevents.') for f in files)
  assert not any('.tmp-' in f for f in files)
  assert fileio.read_json(f'{workdir}/stage2/COMPLETE') == {'step': 2}
  records = _lines(f'{workdir}/metrics.jsonl')
  assert [(r['stage'], r['step']) for r in records] == [('stage1', 2), ('stage2', 2)]
  assert ip.read_latent_dataset_builder(f'{workdir}/latents').num_examples == 16
  assert sorted(p.name for p in local_checkpoints.iterdir()) == ['stage1', 'stage2']
  # A rerun finds every phase done (markers, config.json and latents read from ram://): it
  # trains nothing and rewrites none of them.
  before = {f: fileio.read_bytes(f'{workdir}/{f}') for f in files}
  with tfds.testing.mock_data(num_examples=16):
    again = pipeline.run(config, workdir)
  assert int(again['state2'].step) == 2
  assert len(_lines(f'{workdir}/metrics.jsonl')) == 2
  for f in ('config.json', 'stage1/COMPLETE', 'stage2/COMPLETE', 'latents/tsvae_latents.json'):
    assert fileio.read_bytes(f'{workdir}/{f}') == before[f]
  with pytest.raises(config_lib.ConfigError, match='latent_dim'):
    pipeline.run(tiny_config(latent_dim=16), workdir)
