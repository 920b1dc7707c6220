"""End to end: tsvae.main on mock data and on a tiny local dataset, resume, bad input."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from testdata import tiny_config, tiny_flags, write_mnist_dir
from tsvae import checkpointing
from tsvae import config_lib
from tsvae import input_pipeline
from tsvae import train
from tsvae import experiment as experiment_lib
from tsvae import pipeline
from tsvae import stages

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(directory):
  """{relative path: (size, mtime)} of every file below `directory`."""
  out = {}
  for path in glob.glob(os.path.join(directory, '**'), recursive=True):
    if os.path.isfile(path):
      st = os.stat(path)
      out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
  return out


def _metric_lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def mock_run(tmp_path_factory):
  """One complete two-stage run on tfds mock MNIST (40 examples), shared by several tests."""
  workdir = str(tmp_path_factory.mktemp('mock_run'))
  config = tiny_config()
  with tfds.testing.mock_data(num_examples=40):
    result = pipeline.run(config, workdir)
  return config, workdir, result


def test_full_run_writes_everything(mock_run):
  config, workdir, result = mock_run
  for name in ('stage2_samples', 'stage1_samples', 'reconstructions'):
    path = result['samples'][name]
    assert os.path.exists(path), path
    grid = np.asarray(Image.open(path))
    assert grid.ndim == 2 and grid.shape[0] > 4 * 28  # 4x4 grid of 28-px grayscale images.
    assert grid.std() > 0  # Not a blank picture.
  assert checkpointing.is_complete(workdir, 'stage1')
  assert checkpointing.is_complete(workdir, 'stage2')
  latents = input_pipeline.read_latent_dataset_builder(os.path.join(workdir, 'latents'))
  assert latents.num_examples == 40 and latents.latent_dim == config.latent_dim
  records = _metric_lines(workdir)
  assert {r['stage'] for r in records} == {'stage1', 'stage2'}
  stage1_steps = [r['step'] for r in records if r['stage'] == 'stage1']
  assert stage1_steps[-1] == 5  # 40 // 8 steps in the one epoch (max_steps 6 not reached).
  stage2_steps = [r['step'] for r in records if r['stage'] == 'stage2']
  assert stage2_steps[-1] == 10  # Two epochs of 5 steps.
  for key in ('loss', 'kl', 'gen', 'loggamma', 'steps_per_sec', 'learning_rate'):
    assert key in records[-1]
  assert int(result['state1'].step) == 5 and int(result['state2'].step) == 10
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'stage1', 'events.out.tfevents.*'))


def test_sample_grids_reach_tensorboard_as_images(mock_run):
  """The three grids, at the final stage-2 step, as TensorBoard images equal to the PNGs (written
  by tensorboardX, read here with TensorFlow's event reader, as TensorBoard reads them)."""
  import io  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _, workdir, result = mock_run
  images = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'samples', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        images[value.tag] = (event.step, value.image.encoded_image_string)
  assert set(images) == {'stage2_samples', 'stage1_samples', 'reconstructions'}
  for name, (step, encoded) in images.items():
    assert step == 10, name  # The final stage-2 step.
    decoded = np.asarray(Image.open(io.BytesIO(encoded)))
    png = np.asarray(Image.open(result['samples'][name]))
    np.testing.assert_array_equal(decoded[..., 0] if decoded.ndim == 3 else decoded, png)


def test_scalars_reach_tensorboard(mock_run):
  """Every logged metrics.jsonl scalar is in the stage's TensorBoard events, at its step."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _, workdir, _ = mock_run
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  logged = {(r['step'], 'loss'): r['loss'] for r in rows if r['stage'] == 'stage1'}
  seen = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'stage1', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'loss':
          seen[(event.step, 'loss')] = value.simple_value
  assert seen.keys() == logged.keys() and logged
  for key, value in logged.items():
    assert seen[key] == pytest.approx(value, rel=1e-6)


def test_restore_final_needs_neither_data_nor_latents(mock_run, tmp_path):
  """A finished stage restores from its checkpoint alone: no data set, no latents."""
  import shutil  # pylint: disable=g-import-not-at-top
  config, workdir, result = mock_run
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('latents'))
  # Outside tfds mock data: building the data set would fail here.
  setup = experiment_lib.setup(config, copy)
  for stage in ('stage1', 'stage2'):
    state = stages.restore_final(setup, stage)
    for got, want in zip(jax.tree_util.tree_leaves(jax.device_get(state.params)),
                         jax.tree_util.tree_leaves(jax.device_get(result[f'state{stage[-1]}'].params))):
      np.testing.assert_array_equal(got, want)
  with pytest.raises(checkpointing.CheckpointError, match='not complete'):
    stages.restore_final(experiment_lib.setup(config, str(tmp_path / 'empty')), 'stage2')


def test_streams_are_distinct():
  values = [int(s) for s in experiment_lib.Stream]
  assert len(values) == len(set(values))


def test_rerun_of_finished_workdir_skips_all_training(mock_run):
  config, workdir, _ = mock_run
  lines_before = len(_metric_lines(workdir))
  with tfds.testing.mock_data(num_examples=40):
    again = pipeline.run(config, workdir)
  assert len(_metric_lines(workdir)) == lines_before  # No step was trained.
  assert int(again['state1'].step) == 5 and int(again['state2'].step) == 10


def test_stage2_batch_size_sets_stage2_steps_only(tmp_path):
  config = tiny_config(stage2__batch_size=16)
  with tfds.testing.mock_data(num_examples=40):
    result = pipeline.run(config, str(tmp_path))
  assert int(result['state1'].step) == 5  # Stage 1 keeps config.batch_size = 8.
  assert int(result['state2'].step) == 4  # 40 // 16 = 2 steps per epoch, two epochs.
  rows = [r for r in _metric_lines(str(tmp_path)) if r['stage'] == 'stage2']
  assert rows[-1]['step'] == 4
  # 0 (the default) is config.batch_size, so runs from before the key keep their fingerprint.
  assert config_lib.stage2_batch_size(tiny_config()) == 8
  assert config_lib.experiment_keys(tiny_config()) == config_lib.experiment_keys(
      tiny_config(stage2__batch_size=0))


def test_plan_line_gives_each_stages_steps_before_training(mock_run):
  config, workdir, _ = mock_run
  with tfds.testing.mock_data(num_examples=40):
    plan = pipeline.plan(experiment_lib.setup(config, workdir))
  assert 'stage 1 5 steps (1 epochs x 5 steps of batch 8)' in plan
  assert 'stage 2 10 steps (2 epochs x 5 steps of batch 8)' in plan
  assert 'no evaluation' in plan
  single = tiny_config(stage1__max_steps=3, stage2__enabled=False)
  with tfds.testing.mock_data(num_examples=40):
    plan = pipeline.plan(experiment_lib.setup(single, str(workdir) + '_other'))
  assert 'stage 1 3 steps (max_steps cap)' in plan and 'stage 2 off' in plan


def test_eta_probe_times_the_steps_after_the_compiling_one():
  probe = train.EtaProbe('stage1', first_step=40, num_steps=1000, examples_per_batch=64)
  for step in range(41, 41 + train.EtaProbe.PROBE_STEPS):
    probe.after_step(step, {'loss': np.float32(1.0)})
    assert probe.steps_per_sec is None  # Not yet: step 41 compiled, 41..51 are timed.
  probe.after_step(41 + train.EtaProbe.PROBE_STEPS, {'loss': np.float32(1.0)})
  assert probe.steps_per_sec > 0
  short = train.EtaProbe('stage2', first_step=0, num_steps=5, examples_per_batch=8)
  for step in range(1, 6):  # A stage shorter than the probe: no estimate, no error.
    short.after_step(step, {})
  assert short.steps_per_sec is None


def test_workdir_of_another_experiment_is_refused_untouched(mock_run):
  _, workdir, _ = mock_run
  before = _snapshot(workdir)
  with pytest.raises(config_lib.ConfigError, match='latent_dim'):
    pipeline.run(tiny_config(latent_dim=16), workdir)
  assert _snapshot(workdir) == before


def test_run_control_keys_may_change_on_resume(mock_run):
  config, workdir, _ = mock_run
  config = tiny_config(log_every_steps=5, stage2__num_epochs=2)
  experiment_lib.setup(config, workdir)  # Validates without complaint.


@pytest.mark.parametrize('overrides, error, match', [
    (dict(dataset='mnsit'), config_lib.ConfigError, "Did you mean 'mnist'"),
    (dict(arch='resnt'), config_lib.ConfigError, "Did you mean 'resnet'"),
    (dict(arch='wae'), config_lib.ConfigError, '64x64'),
    (dict(batch_size=7), config_lib.ConfigError, 'divisible by the 2 devices'),
    (dict(latent_dim=0), config_lib.ConfigError, 'latent_dim must be a positive'),
    (dict(stage1__max_steps=0), config_lib.ConfigError, 'max_steps'),
    (dict(stage1__reconstruction_loss='l2'), config_lib.ConfigError, 'reconstruction_loss'),
    (dict(stage2__batch_size=-8), config_lib.ConfigError, 'stage2.batch_size must be'),
    (dict(stage2__batch_size=7), config_lib.ConfigError,
     'stage2.batch_size=7 is not divisible by the 2 devices'),
    (dict(data__manual_dir='/nonexistent/mnist'), input_pipeline.DataError,
     'train-images-idx3-ubyte'),
])
def test_bad_input_fails_before_anything_is_written(tmp_path, overrides, error, match):
  workdir = tmp_path / 'workdir'
  with pytest.raises(error, match=match):
    pipeline.run(tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


def test_unwritable_workdir(tmp_path):
  # A workdir below a regular file cannot be created, whoever runs the test (root included).
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(config_lib.ConfigError, match='cannot be written'):
    pipeline.run(tiny_config(), str(blocker / 'run'))
  assert blocker.read_text() == 'not a directory'


# ------------------------------------------------------------------------------ the CLI


def _cli(workdir, manual_dir, data_dir, *extra):
  return [sys.executable, '-m', 'tsvae.main', '--config=configs/default.py',
          f'--workdir={workdir}', f'--config.data.manual_dir={manual_dir}',
          f'--config.data.data_dir={data_dir}', *tiny_flags(**dict(extra))]


@pytest.fixture(scope='module')
def local_mnist(tmp_path_factory):
  directory = tmp_path_factory.mktemp('local_mnist')
  write_mnist_dir(str(directory / 'manual'), n_train=64, n_test=16)
  return str(directory / 'manual'), str(directory / 'tfds')


def test_cli_sigterm_then_resume(tmp_path, local_mnist):
  """SIGTERM mid stage 1 → checkpoint + exit 75; the rerun resumes there and finishes."""
  manual_dir, data_dir = local_mnist
  workdir = str(tmp_path / 'run')
  cmd = _cli(workdir, manual_dir, data_dir, ('stage1.max_steps', 40), ('stage1.num_epochs', 10),
             ('checkpoint_every_steps', 1000), ('log_every_steps', 1))
  proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and len(_metric_lines(workdir)) >= 3:
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()[0][-3000:]
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode == train.PREEMPTED_EXIT_CODE, output[-3000:]
  assert 'stopped by SIGTERM' in output
  saved = checkpointing.StageCheckpointer(workdir, 'stage1', experiment_fingerprint='').latest_step()
  assert saved is not None and 3 <= saved < 40
  assert not checkpointing.is_complete(workdir, 'stage1')

  result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'stage1: step {saved} of 40' in result.stderr
  stage1_steps = [r['step'] for r in _metric_lines(workdir) if r['stage'] == 'stage1']
  assert stage1_steps[-1] == 40
  assert sorted(set(stage1_steps)) == list(range(1, 41))  # Every step logged exactly once...
  assert len(stage1_steps) == 40  # ...so the resumed run continued rather than restarted.
  for name in ('stage2_samples.png', 'stage1_samples.png', 'reconstructions.png'):
    assert os.path.exists(os.path.join(workdir, 'samples', name))


def test_cli_bad_config_key_and_bad_dir(tmp_path, local_mnist):
  manual_dir, data_dir = local_mnist
  workdir = str(tmp_path / 'run')
  typo = subprocess.run(_cli(workdir, manual_dir, data_dir) + ['--config.stage1.num_epoch=3'],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert typo.returncode != 0
  assert 'num_epochs' in typo.stderr  # The "did you mean" suggestion.
  missing = subprocess.run(_cli(workdir, str(tmp_path / 'nowhere'), data_dir), cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=120)
  assert missing.returncode == 2
  assert 'train-images-idx3-ubyte.gz' in missing.stderr
  assert not os.path.exists(workdir)


def test_mean_vs_ancestral_grid(mock_run):
  from tsvae import generation  # pylint: disable=g-import-not-at-top
  config, workdir, result = mock_run
  setup = experiment_lib.setup(config, workdir)
  path = generation.write_mean_vs_ancestral(setup, result['state1'], result['state2'])
  grid = np.asarray(Image.open(path))
  single = np.asarray(Image.open(result['samples']['stage2_samples']))
  assert grid.shape[0] == single.shape[0] and grid.shape[1] == 2 * single.shape[1] + 8
  left, right = grid[:, :single.shape[1]], grid[:, -single.shape[1]:]
  assert not np.array_equal(left, right)  # Pixel noise (γ_x ≈ 1 after a few steps) shows.
  # A single-stage model (no stage 2): the same grid from stage-1 prior samples.
  single_stage = generation.write_mean_vs_ancestral(setup, result['state1'], None)
  grid1 = np.asarray(Image.open(single_stage))
  assert grid1.shape == grid.shape and not np.array_equal(grid1, grid)


def test_keys_added_later_at_their_implicit_default_keep_old_workdirs_valid(mock_run):
  config, workdir, _ = mock_run
  recorded = json.load(open(os.path.join(workdir, 'config.json')))
  old = {k: v for k, v in recorded.items() if k not in config_lib.IMPLICIT_DEFAULTS}
  # An old workdir ran with every such key at its implicit value: today's default for all but
  # stage1.bn_zero_debias, whose default became the reference's True (issue #13).
  as_old = tiny_config(stage1__bn_zero_debias=False)
  assert config_lib._defining(old) == config_lib.experiment_keys(as_old)
  assert config_lib._defining(old) != config_lib.experiment_keys(config)
  # ...but a non-default value of such a key is a different experiment.
  changed = tiny_config(stage1__gamma_mode='optimal')
  assert config_lib.experiment_keys(changed) != config_lib.experiment_keys(config)
