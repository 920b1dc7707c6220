"""benchmarks/stage2_study.py on a tiny local MNIST: phases, resumption, records and the plot.

The FID path of the study is tsvae's own (tests/fid_test.py); here it runs with --no_fid so that
the bookkeeping, the stage-2 milestones and their records are what is exercised.
"""

import json
import os
import sys

import numpy as np
import pytest

from testdata import write_mnist_dir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import stage2_residuals  # pylint: disable=g-import-not-at-top,wrong-import-position
import stage2_study  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = ['latent_dim=8', 'batch_size=8', 'stage1.max_steps=6', 'stage2.depth=1',
        'stage2.width=32', 'sampling.num_grid_images=16', 'log_every_steps=2',
        'checkpoint_every_steps=3', 'eval.batch_size=64', 'eval.classifier_epochs=1',
        'eval.allow_download=false']


def _argv(tmp_path, schedule):
  return ([f'--manual_dir={tmp_path / "mnist"}', f'--root={tmp_path / "root"}',
           f'--cache_dir={tmp_path / "cache"}', '--stage1_epochs=1', f'--schedule={schedule}',
           '--num_samples=12', '--no_fid', f'--out={tmp_path / "out"}'] +
          [f'--override={o}' for o in TINY])


def _points(tmp_path):
  return {p['point']: p for p in stage2_study.load_points(str(tmp_path / 'out'))}


def test_study_records_every_point_then_resumes_without_retraining(tmp_path):
  write_mnist_dir(str(tmp_path / 'mnist'))  # 40 train, 12 test images.
  stage2_study.main(_argv(tmp_path, 'reference:1,2 high_lr:1'))
  points = _points(tmp_path)
  assert set(points) == {'stage1', 'gmm', 'recon'} | {
      f'stage2_{r}_e{e}_noise{s}' for r, e in (('reference', 1), ('reference', 2),
                                                ('high_lr', 1)) for s in (1, 0)}
  stage1 = points['stage1']
  assert stage1['stage1_step'] == 5 and stage1['active_dims'] >= 0
  assert stage1['fid'] is None and stage1['proxy_fd'] > 0  # --no_fid: proxy FD only.
  assert 'commit' in stage1 and 'machine' in stage1
  s2 = points['stage2_reference_e2_noise1']
  assert s2['stage2_step'] == 10 and s2['stage2_batch_size'] == 8  # 40 // 8 steps per epoch.
  assert s2['gamma_z'] > 0 and s2['mmd_u'] is not None and s2['loss'] is not None
  assert points['stage2_high_lr_e1_noise1']['recipe_overrides'] == {'stage2.learning_rate': 1e-3}
  # The same u and ε at both noise scales; the scales differ only in the noise.
  assert points['stage2_reference_e2_noise0']['gamma_z'] == s2['gamma_z']
  assert os.path.exists(tmp_path / 'out' / 'stage2_study.png')
  rows = stage2_study.table(str(tmp_path / 'out')).splitlines()
  assert len(rows) == 2 + 3 + 6  # Header, stage1/gmm/recon, three milestones x two scales.
  assert rows[2].startswith('| stage 1 prior') and 'stage 2, reference, noise 1 | 1 |' in rows[5]
  assert os.path.exists(tmp_path / 'out' / 'grids' / 'stage2_reference_e2_noise1.png')

  # A longer schedule resumes: stage 2 continues from epoch 2 and nothing else is redone.
  metrics = tmp_path / 'root' / 'mnist_s2_reference' / 'metrics.jsonl'
  rows_before = len(metrics.read_text().splitlines())
  stage1_before = (tmp_path / 'out' / 'stage1.json').read_text()
  floor_file = _floor_file(tmp_path, fid=1.25)
  stage2_study.main(_argv(tmp_path, 'reference:1,2,3') + [f'--floor_from={floor_file}'])
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert min(r['step'] for r in rows[rows_before:]) > 10  # Only steps after epoch 2 trained.
  assert _points(tmp_path)['stage2_reference_e3_noise1']['stage2_step'] == 15
  assert (tmp_path / 'out' / 'stage1.json').read_text() == stage1_before
  # An earlier milestone is scored again from its snapshot, not from the later checkpoint.
  out = tmp_path / 'out'
  e1 = json.loads((out / 'stage2_reference_e1_noise1.json').read_text())
  for scale in (1, 0):
    (out / f'stage2_reference_e1_noise{scale}.json').unlink()
  stage2_study.main(_argv(tmp_path, 'reference:1,2,3'))
  again = _points(tmp_path)['stage2_reference_e1_noise1']
  assert again['stage2_step'] == 5 and again['gamma_z'] == e1['gamma_z']
  assert again['proxy_fd'] == pytest.approx(e1['proxy_fd'], rel=1e-6)
  # Without the snapshot the point is skipped (and left unwritten), never mis-scored.
  (tmp_path / 'root' / 'mnist_s2_reference' / 'milestones' / 'stage2_step5.msgpack').unlink()
  for scale in (1, 0):
    (out / f'stage2_reference_e1_noise{scale}.json').unlink()
  stage2_study.main(_argv(tmp_path, 'reference:1,2,3'))
  assert 'stage2_reference_e1_noise1' not in _points(tmp_path)

  # The floor point takes the committed FID and computes its own proxy FD.
  train = _points(tmp_path)['train']
  assert train['fid'] == 1.25 and train['fid_source']['protocol'] == 'tf_graph:bfloat16'
  assert train['proxy_fd'] > 0
  assert '| real training images (floor) | | | 1.2 |' in stage2_study.table(str(tmp_path / 'out'))

  # The residual diagnostic reads the same workdirs.
  res = tmp_path / 'res.json'
  stage2_residuals.main([f'--root={tmp_path / "root"}', '--recipe=reference', '--epochs=3',
                         f'--manual_dir={tmp_path / "mnist"}', '--stage1_epochs=1', '--num=12',
                         f'--out={res}'] + [f'--override={o}' for o in TINY])
  record = json.loads(res.read_text())
  assert record['stage2_epochs'] == 3 and len(record['residual_per_dim']) == 8
  assert record['gamma_z_learned'] == pytest.approx(
      _points(tmp_path)['stage2_reference_e3_noise1']['gamma_z'], rel=1e-5)


def _floor_file(tmp_path, fid, **changes):
  record = {'benchmark': 'fid_floor', 'dataset': 'mnist', 'num': 12, 'subset_seed': 0,
            'commit': {'commit': 'abc'},
            'runs': {'tf_graph:bfloat16': {'fid_train_vs_test': fid}}}
  record.update(changes)
  path = tmp_path / 'floor.json'
  path.write_text(json.dumps(record))
  return path


@pytest.mark.parametrize('changes, match', [
    ({'num': 10_000}, "'num': 10000"),
    ({'dataset': 'fashion_mnist'}, "'dataset': 'fashion_mnist'"),
    ({'runs': {'tf_graph:float32': {'fid_train_vs_test': 1.0}}}, "'tf_graph:bfloat16' run"),
])
def test_floor_from_another_protocol_fails_before_any_work(tmp_path, changes, match):
  floor_file = _floor_file(tmp_path, fid=1.0, **changes)
  with pytest.raises(SystemExit, match=match):
    stage2_study.main(_argv(tmp_path, 'reference:1') + [f'--floor_from={floor_file}'])
  assert not (tmp_path / 'root').exists() and not (tmp_path / 'out').exists()


@pytest.mark.parametrize('schedule, match', [
    ('nonsense:10', 'Unknown stage-2 recipe'),
    ('reference:25,10', 'increasing positive'),
    ('reference:', 'increasing positive'),
])
def test_bad_schedule_fails_before_any_work(tmp_path, schedule, match):
  with pytest.raises(SystemExit, match=match):
    stage2_study.parse_args(['--out', str(tmp_path), f'--schedule={schedule}'])
  assert not os.listdir(tmp_path)


def test_fid_queue_scores_most_telling_first_into_the_written_points(tmp_path):
  """FIDs come after all training, in priority order, into the points already written."""

  class RecordingScorer:
    order = []

    def fid(self, images):
      RecordingScorer.order.append(float(images[0, 0, 0, 0]))
      return float(images.mean()), 0.5

  args = stage2_study.parse_args(['--out', str(tmp_path), '--no_fid',
                                  '--schedule=reference:1,2 high_lr:1'])
  queue = stage2_study.FidQueue()
  names = []
  for i, (recipe, epochs, scale, last) in enumerate([
      ('high_lr', 1, 0.0, True), ('reference', 2, 1.0, True), ('reference', 1, 1.0, False),
      ('high_lr', 1, 1.0, True)]):
    name = f'p{i}'
    record = {'benchmark': 'stage2_study', 'point': name, 'fid': None, 'proxy_fd': 3.0}
    stage2_study._write(args, name, record)
    images = np.full((4, 2, 2, 1), float(i), np.float32)
    images[1] += 1.0  # Min-max stretched per image: image 0 stays 0, image 1 becomes 0.
    queue.add(stage2_study._fid_priority(args, recipe, epochs, scale, last), name, images,
              record)
    names.append(name)
  queue.add((0,), 'stage1', np.zeros((2, 2, 2, 1), np.float32),
            {'benchmark': 'stage2_study', 'point': 'stage1', 'fid': None, 'proxy_fd': 1.0})
  queue.run(args, RecordingScorer())
  assert len(RecordingScorer.order) == 5 and not queue.items
  points = {p['point']: p for p in stage2_study.load_points(str(tmp_path))}
  assert all(points[name]['fid'] == 0.0 and points[name]['fid_seconds'] == 0.5
             for name in names + ['stage1'])
  assert points['p0']['proxy_fd'] == 3.0
  # stage 1, the first recipe's last milestone at noise 1, the other recipe's at noise 1, the
  # noise-0 point, then intermediate milestones, every one at noise 1 before any at noise 0.
  priorities = sorted(stage2_study._fid_priority(args, r, e, s, l) for r, e, s, l in [
      ('high_lr', 1, 0.0, True), ('reference', 2, 1.0, True), ('reference', 1, 1.0, False),
      ('high_lr', 1, 1.0, True)])
  assert priorities == [(1, 0), (3, 1), (5, 1, 1), (6, 0, 0, 1)]
  assert (stage2_study._fid_priority(args, 'high_lr', 3, 1.0, False) <
          stage2_study._fid_priority(args, 'reference', 1, 0.0, False))


def test_unknown_fid_set_is_refused(tmp_path):
  with pytest.raises(SystemExit, match='unknown'):
    stage2_study.parse_args(['--out', str(tmp_path), '--fid_sets=stage1,stage3'])


@pytest.mark.parametrize('user_flags', [None, '--xla_cpu_use_thunk_runtime=true'])
def test_stage1_runs_under_the_callers_xla_flags(tmp_path, monkeypatch, user_flags):
  """The study's two host devices (for Inception) do not reach the stage-1 subprocess."""
  from tsvae import checkpointing  # pylint: disable=g-import-not-at-top
  seen = {}
  monkeypatch.setattr(checkpointing, 'is_complete', lambda workdir, stage: False)
  monkeypatch.setattr(stage2_study.subprocess, 'run',
                      lambda command, **kwargs: seen.update(kwargs['env']))
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  args = stage2_study.parse_args(['--out', str(tmp_path), '--no_fid'])
  stage2_study.run_stage1(args, user_flags)
  assert seen.get('XLA_FLAGS') == user_flags
