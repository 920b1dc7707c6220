"""A real 2-process jax.distributed run on localhost matches the 1-process run."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from testdata import tiny_config, tiny_flags, write_mnist_dir
from tsvae import experiment as experiment_lib
from tsvae import stages

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = dict(stage1__num_epochs=1, stage1__max_steps=6, stage2__num_epochs=1,
           checkpoint_every_steps=4, log_every_steps=2)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _cmd(workdir, manual_dir, data_dir, *extra):
  return [sys.executable, '-m', 'tsvae.main', '--config=configs/default.py',
          f'--workdir={workdir}', f'--config.data.manual_dir={manual_dir}',
          f'--config.data.data_dir={data_dir}', *tiny_flags(**RUN), *extra]


def _env(devices):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _final_states(workdir, manual_dir, data_dir):
  config = tiny_config(data__manual_dir=manual_dir, data__data_dir=data_dir, **RUN)
  setup = experiment_lib.setup(config, workdir)
  return [jax.device_get(stages.restore_final(setup, s)) for s in ('stage1', 'stage2')]


def test_two_processes_match_one_process(tmp_path):
  manual_dir, data_dir = str(tmp_path / 'manual'), str(tmp_path / 'tfds')
  write_mnist_dir(manual_dir, n_train=64, n_test=16)

  # One step per call (host batches), then scanned calls on the data sharded over the devices,
  # each epoch's order computed there: the 2-process runs match the 1-process (2-device) runs.
  # (Scanned and one-step runs agree only to float tolerance: tests/scan_test.py.)
  for name, extra in (('', ()), ('_scanned', ('--config.steps_per_call=2',))):
    single = str(tmp_path / f'single{name}')
    result = subprocess.run(_cmd(single, manual_dir, data_dir, *extra), cwd=REPO_ROOT,
                            env=_env(2), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    multi = str(tmp_path / f'multi{name}')
    port = _free_port()
    procs = [subprocess.Popen(
        _cmd(multi, manual_dir, data_dir, *extra, '--distributed',
             f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
             f'--process_id={i}'),
        cwd=REPO_ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
      assert p.returncode == 0, out[-4000:]
    assert 'process_count=2' in outputs[0] or '2 process(es)' in outputs[0]
    assert ('up to 2 scanned steps per call' in outputs[0]) == bool(extra)
    for image in ('stage2_samples.png', 'stage1_samples.png', 'reconstructions.png'):
      assert os.path.exists(os.path.join(multi, 'samples', image))

    for a, b in zip(_final_states(single, manual_dir, data_dir),
                    _final_states(multi, manual_dir, data_dir)):
      assert int(a.step) == int(b.step)
      for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
