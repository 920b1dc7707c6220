r"""Issue #13's closing figures: proxy FD of a short MNIST run with and without the reference's
bias-corrected BatchNorm averages (stage1.bn_zero_debias), each at stage-2 noise scales 1 and 0.

  python benchmarks/bn_debias_noise_scale.py --manual_dir=../shared/data/mnist \
      --root=/tmp/bn_debias --data_dir=/tmp/tfds_bn --cache_dir=/tmp/tsvae_cache \
      --stage1_epochs=2 --stage2_epochs=4 \
      --out=benchmarks/results/bn_debias_noise_scale_mnist.json

Two trainings with the same budget and seed (`tsvae.main`, evaluation off), one after the other,
in <root>/debias_on and <root>/debias_off; each workdir is then evaluated (`tsvae.evaluate`,
proxy FD only: no Inception download) once per noise scale, and each metrics.json is kept as
<workdir>/eval/metrics_noise_scale_<s>.json. A rerun resumes finished trainings (tsvae.main
skips completed stages). The JSON holds the commands, the commit, the machine and the figures.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position  (git_commit, machine_info, write_record)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE_SCALES = (1.0, 0.0)
# What the JSON keeps of each metrics.json.
KEPT_METRICS = ('proxy_fd_stage2', 'proxy_fd_stage1', 'proxy_fd_recon', 'proxy_fd_gmm',
                'proxy_fd_train', 'loggamma_x', 'loggamma_z', 'active_dims', 'mmd_z', 'mmd_u',
                'stage1_step', 'stage2_step', 'num_samples', 'stage2_noise_scale',
                'bn_zero_debias', 'classifier_test_accuracy')


def _run(cmd):
  print('+', ' '.join(cmd), flush=True)
  start = time.time()
  subprocess.run(cmd, cwd=REPO_ROOT, check=True)
  return round(time.time() - start, 1)


def _data_flags(args):
  flags = [f'--config.data.manual_dir={args.manual_dir}']
  if args.data_dir:
    flags.append(f'--config.data.data_dir={args.data_dir}')
  return flags


def _train_command(args, workdir, debias):
  return [sys.executable, '-m', 'tsvae.main', '--config=configs/mnist.py', f'--workdir={workdir}',
          *_data_flags(args), f'--config.stage1.num_epochs={args.stage1_epochs}',
          f'--config.stage2.num_epochs={args.stage2_epochs}',
          f'--config.stage1.bn_zero_debias={debias}', f'--config.seed={args.seed}',
          '--config.eval.enabled=False']


def _eval_command(args, workdir, scale):
  return [sys.executable, '-m', 'tsvae.evaluate', f'--workdir={workdir}', *_data_flags(args),
          f'--config.sampling.stage2_noise_scale={scale}', '--config.eval.allow_download=False',
          f'--config.eval.cache_dir={args.cache_dir}',
          f'--config.eval.num_samples={args.num_samples}']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--manual_dir', required=True, help='Offline MNIST (tsvae.datasets).')
  parser.add_argument('--root', required=True, help='Folder of the two workdirs.')
  parser.add_argument('--data_dir', default='', help='tfds data_dir.')
  parser.add_argument('--cache_dir', default=os.path.expanduser('~/.cache/tsvae'),
                      help='Proxy-classifier cache.')
  parser.add_argument('--stage1_epochs', type=int, default=2)
  parser.add_argument('--stage2_epochs', type=int, default=4)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_samples', type=int, default=10_000)
  parser.add_argument('--out', default='', help='JSON result path.')
  args = parser.parse_args()
  if args.stage1_epochs <= 0 or args.stage2_epochs <= 0 or args.num_samples < 2:
    parser.error('--stage1_epochs and --stage2_epochs must be positive, --num_samples >= 2')

  started = time.strftime('%Y-%m-%dT%H:%M:%S%z')
  runs = []
  for debias in (True, False):
    workdir = os.path.join(args.root, 'debias_on' if debias else 'debias_off')
    train_cmd = _train_command(args, workdir, debias)
    run = {'bn_zero_debias': debias, 'workdir': workdir, 'train_command': ' '.join(train_cmd),
           'train_wall_s': _run(train_cmd), 'by_noise_scale': {}}
    for scale in NOISE_SCALES:
      eval_cmd = _eval_command(args, workdir, scale)
      wall = _run(eval_cmd)
      metrics_path = os.path.join(workdir, 'eval', 'metrics.json')
      kept = os.path.join(workdir, 'eval', f'metrics_noise_scale_{scale:g}.json')
      shutil.copyfile(metrics_path, kept)
      with open(kept) as f:
        metrics = json.load(f)
      run['by_noise_scale'][f'{scale:g}'] = {
          'eval_command': ' '.join(eval_cmd), 'eval_wall_s': wall,
          **{k: metrics.get(k) for k in KEPT_METRICS}}
    runs.append(run)
  record = {
      'benchmark': 'bn_debias_noise_scale',
      'command': ' '.join([os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:]),
      'budget': {'dataset': 'mnist', 'stage1_epochs': args.stage1_epochs,
                 'stage2_epochs': args.stage2_epochs, 'seed': args.seed,
                 'eval_num_samples': args.num_samples},
      'metric': 'proxy FD (penultimate features of the project classifier; not FID)',
      'started': started, 'finished': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
      **step_throughput.git_commit(), 'machine': step_throughput.machine_info(),
      'runs': runs,
  }
  step_throughput.write_record(record, args.out)


if __name__ == '__main__':
  main()
