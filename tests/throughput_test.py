"""Smoke tests of `benchmarks/step_throughput.py` (tiny settings; no timing assertions), and of
the host allocator setting (tsvae.hostmem) that the throughput of XLA:CPU steps depends on.

The fast paths behind the throughput are tested against the plain formulations where they live:
the layers in layers_test.py, the whole train step in train_test.py.
"""

import json
import os
import sys

import pytest

from tsvae import hostmem

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_benchmark_stage1_smoke(tmp_path):
  out = tmp_path / 'stage1.json'
  record = step_throughput.main(
      ['stage1', '--batch_size', '4', '--latent_dim', '8', '--steps', '1', '--reps', '2',
       '--warmup', '0', '--out', str(out)])
  saved = json.loads(out.read_text())
  assert saved['config']['batch_size'] == 4 and saved['config']['arch'] == 'infogan'
  assert saved['config']['bn_zero_debias'] is True  # The training default.
  assert saved['result']['images_per_sec'] > 0 and len(saved['result']['rates']) == 2
  assert saved['result']['finite']
  for key in ('machine', 'versions', 'git', 'peak_rss_mib', 'loadavg_before'):
    assert key in saved
  assert record['result'] == saved['result']


def test_cpu_identity_reads_family_and_vector_flags(tmp_path):
  """The machine record tells the Zen-1 (AVX2) and AVX-512 "AMD EPYC"s apart."""
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(
      'processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n'
      'model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 sha_ni\n\n'
      'processor\t: 1\ncpu family\t: 99\nmodel name\t: other\n')
  assert step_throughput.cpu_identity(str(cpuinfo)) == {
      'cpu_family': '26', 'cpu_model_number': '2', 'cpu_model': 'AMD EPYC',
      'cpu_vector_flags': ['avx', 'avx2', 'avx512_bf16', 'avx512f', 'fma']}


def test_benchmark_stage2_smoke():
  record = step_throughput.main(
      ['stage2', '--batch_size', '8', '--latent_dim', '4', '--width', '16', '--steps', '1',
       '--reps', '1', '--warmup', '0'])
  assert record['result']['images_per_sec'] > 0


def test_benchmark_scanned_bf16_smoke():
  """--steps_per_call: the trainer's scanned path over device-resident batches; --compute_dtype
  reaches the model (both recorded in the config)."""
  args = ['stage2', '--batch_size', '8', '--latent_dim', '4', '--width', '16', '--reps', '1',
          '--warmup', '1', '--compute_dtype', 'bfloat16']
  record = step_throughput.main(args + ['--steps', '4', '--steps_per_call', '2'])
  assert record['config']['steps_per_call'] == 2
  assert record['config']['compute_dtype'] == 'bfloat16'
  assert record['result']['finite'] and record['result']['images_per_sec'] > 0
  with pytest.raises(SystemExit, match='multiple of --steps_per_call'):
    step_throughput.main(args + ['--steps', '3', '--steps_per_call', '2'])


def test_benchmark_input_smoke(tmp_path):
  from testdata import write_mnist_dir  # pylint: disable=g-import-not-at-top
  write_mnist_dir(str(tmp_path / 'manual'))
  record = step_throughput.main(
      ['input', '--dataset', 'mnist', '--manual_dir', str(tmp_path / 'manual'), '--data_dir',
       str(tmp_path / 'tfds'), '--batch_size', '8', '--epochs', '1', '--to_device'])
  assert record['result']['images_per_sec'] > 0
  assert record['result']['train_examples'] == 40


def test_hostmem_switch_and_glibc_effect():
  """tsvae.main's allocator setting: off with TSVAE_TUNE_MALLOC=0, applied on glibc otherwise.

  Run in a fresh interpreter (the setting is process-wide) that then allocates and frees a
  64 MB block twice: with the setting, the second allocation reuses the mapped heap (its pages
  are already resident, so it causes almost no new minor page faults).
  """
  import subprocess  # pylint: disable=g-import-not-at-top
  code = r'''
import ctypes, json, resource, sys
from tsvae import hostmem
status = hostmem.tune_malloc_for_training()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch_and_free(n=64 << 20):
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
touch_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free()
status['faults_second'] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps(status))
'''
  def run(env_value):
    env = dict(os.environ, TSVAE_TUNE_MALLOC=env_value)
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])

  on, off = run('1'), run('0')
  assert off == {'applied': False, 'late': False, 'faults_second': off['faults_second']}
  assert hostmem.describe(off).startswith('Host malloc tuned for XLA:CPU temp buffers: False ')
  assert hostmem.describe({'applied': True, 'late': True}) == (
      'Host malloc tuned for XLA:CPU temp buffers: True (after JAX import) '
      '(TSVAE_TUNE_MALLOC=0 turns it off).')
  if not on['applied']:
    pytest.skip('not glibc: the allocator setting does not apply')
  assert not on['late']
  pages = (64 << 20) // 4096
  assert off['faults_second'] > pages // 2  # glibc mmaps the block afresh: every page faults.
  assert on['faults_second'] < pages // 10  # The heap keeps it mapped.
