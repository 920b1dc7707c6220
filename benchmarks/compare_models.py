r"""The paper's comparison at one equal budget: every model trained by `tsvae.main`, one protocol.

  python benchmarks/compare_models.py --datasets=mnist,fashion_mnist --epochs=1 --seeds=0 \
      --shared_data=../shared/data --runs_dir=/tmp/tsvae_compare \
      --out_dir=benchmarks/results/compare --readme=README.md

Rows (model → how it is run → which number of `eval/metrics.json` is its samples' distance):

| model | run | samples metric |
|---|---|---|
| `two_stage_vae` | `two_stage` run (learned γ, then stage 2) | `proxy_fd_stage2` |
| `vae_learned_gamma` | same run's stage 1, sampled from N(0, I) | `proxy_fd_stage1` |
| `vae_learned_gamma_gmm` | same run's stage 1, ex-post 10-component GMM on μ_z | `proxy_fd_gmm` |
| `vae_fixed_gamma` | `fixed_gamma` run: γ = 1, single stage | `proxy_fd_stage1` |
| `vae_cross_entropy` | `cross_entropy` run: Bernoulli decoder, single stage | `proxy_fd_stage1` |
| `vae_flow` | `flow` run: IAF posterior, single stage | `proxy_fd_stage1` |
| `wae_mmd` | `wae_mmd` run: single stage | `proxy_fd_stage1` |
| `rae_gmm` | `rae` run, ex-post 10-component GMM on z | `proxy_fd_gmm` |

Every run trains stage 1 for `--epochs` epochs with the dataset's config (InfoGAN-SN, κ = 64,
batch 64, lr 1e-4) and only the model's own keys changed; the two-stage run adds
`--stage2_epochs` (default: `--epochs`) of stage 2, which is part of that method. The
evaluation is the project's (`tsvae.evaluate`: 10k samples vs 10k test images, proxy
Fréchet classifier distance; FID where the Inception weights are available).

Each run is its own `python -m tsvae.main` process in `--runs_dir/<dataset>/<run>_seed<s>`; a run
that finished before (its eval/metrics.json exists) is not redone, so the script can be
rerun after an interruption. Outputs: one JSON per (dataset, model) in `--out_dir` with
per-seed values, mean ± std, epochs, wall times, commit and machine; and the Markdown table,
printed and (with --readme) written between the `compare-table` markers of the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(REPO_ROOT, 'benchmarks') not in sys.path:
  sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))

import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position  (git_commit)

# run name -> config overrides (besides the budget) of that run.
RUNS = {
    'two_stage': {},
    'fixed_gamma': {'stage1.gamma_mode': 'fixed', 'stage1.gamma_value': 1.0,
                    'stage2.enabled': False},
    'cross_entropy': {'stage1.reconstruction_loss': 'cross_entropy', 'stage2.enabled': False},
    'flow': {'stage1.model': 'vae_flow', 'stage2.enabled': False},
    'wae_mmd': {'stage1.model': 'wae_mmd', 'stage2.enabled': False},
    'rae': {'stage1.model': 'rae', 'stage2.enabled': False},
}

# model -> (run, metric of its samples, human-readable description).
MODELS = {
    'two_stage_vae': ('two_stage', 'proxy_fd_stage2', 'Two-stage VAE (learned γ)'),
    'vae_learned_gamma': ('two_stage', 'proxy_fd_stage1', 'VAE, learned γ (stage 1 alone)'),
    'vae_learned_gamma_gmm': ('two_stage', 'proxy_fd_gmm', 'VAE, learned γ + ex-post GMM'),
    'vae_fixed_gamma': ('fixed_gamma', 'proxy_fd_stage1', 'VAE, fixed γ = 1'),
    'vae_cross_entropy': ('cross_entropy', 'proxy_fd_stage1', 'VAE, cross-entropy loss'),
    'vae_flow': ('flow', 'proxy_fd_stage1', 'VAE + IAF flow posterior'),
    'wae_mmd': ('wae_mmd', 'proxy_fd_stage1', 'WAE-MMD (IMQ kernel)'),
    'rae_gmm': ('rae', 'proxy_fd_gmm', 'RAE-L2 + ex-post GMM'),
}

TABLE_START = '<!-- compare-table:start -->'
TABLE_END = '<!-- compare-table:end -->'


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--datasets', default='mnist,fashion_mnist')
  p.add_argument('--models', default=','.join(MODELS), help='subset of: ' + ', '.join(MODELS))
  p.add_argument('--epochs', type=int, default=1, help='stage-1 epochs of every model')
  p.add_argument('--stage2_epochs', type=int, default=-1,
                 help='stage-2 epochs of the two-stage run (-1: same as --epochs)')
  p.add_argument('--seeds', default='0', help='comma-separated seeds')
  p.add_argument('--num_samples', type=int, default=10_000, help='eval.num_samples')
  p.add_argument('--max_steps', type=int, default=-1,
                 help='> 0 caps every stage at this many steps (tests; not a real budget)')
  p.add_argument('--shared_data', default=os.path.join(REPO_ROOT, '..', 'shared', 'data'),
                 help='folder with mnist/, fashion_mnist/ (manual dirs)')
  p.add_argument('--data_dir', default='/tmp/tsvae_compare_tfds', help='tfds data_dir')
  p.add_argument('--cache_dir', default='', help="eval.cache_dir ('' = the default cache)")
  p.add_argument('--runs_dir', default='/tmp/tsvae_compare')
  p.add_argument('--out_dir', default=os.path.join(REPO_ROOT, 'benchmarks', 'results',
                                                   'compare'))
  p.add_argument('--readme', default='', help='README to write the table into ("" = no)')
  p.add_argument('--extra', action='append', default=[],
                 help='extra key=value config override for every run (repeatable)')
  args = p.parse_args(argv)
  args.datasets = [d for d in args.datasets.split(',') if d]
  args.models = [m for m in args.models.split(',') if m]
  unknown = sorted(set(args.models) - set(MODELS))
  if unknown:
    p.error(f'unknown models {unknown}; known: {", ".join(MODELS)}')
  args.seeds = [int(s) for s in args.seeds.split(',') if s]
  if args.stage2_epochs < 0:
    args.stage2_epochs = args.epochs
  if args.epochs < 1 or args.stage2_epochs < 1 or not args.seeds:
    p.error('--epochs and --stage2_epochs must be >= 1 and --seeds non-empty')
  return args


def run_overrides(args, dataset: str, run: str, seed: int) -> dict:
  """All `--config.*` overrides of one run (budget, data, seed, the run's own keys)."""
  o = {
      'data.manual_dir': os.path.join(args.shared_data, dataset),
      'data.data_dir': args.data_dir,
      'seed': seed,
      'stage1.num_epochs': args.epochs,
      'stage2.num_epochs': args.stage2_epochs,
      'eval.enabled': True,
      'eval.num_samples': args.num_samples,
  }
  if args.cache_dir:
    o['eval.cache_dir'] = args.cache_dir
  if args.max_steps > 0:
    o['stage1.max_steps'] = o['stage2.max_steps'] = args.max_steps
  o.update(RUNS[run])
  for item in args.extra:
    key, value = item.split('=', 1)
    o[key] = value
  return o


def run_once(args, dataset: str, run: str, seed: int) -> dict:
  """Trains + evaluates one run (or reuses its finished metrics); returns its record."""
  workdir = os.path.join(args.runs_dir, dataset, f'{run}_seed{seed}')
  metrics_path = os.path.join(workdir, 'eval', 'metrics.json')
  timing_path = os.path.join(workdir, 'compare_wall_time.json')
  overrides = run_overrides(args, dataset, run, seed)
  if not os.path.exists(metrics_path):
    cmd = [sys.executable, '-m', 'tsvae.main', f'--config=configs/{dataset}.py',
           f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in overrides.items()]
    print(f'[compare] {dataset} {run} seed {seed}: ' + ' '.join(cmd[1:]), flush=True)
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    with open(os.path.join(workdir, 'compare_run.log'), 'a') as log:
      proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            check=False)
    wall = time.time() - start
    if proc.returncode != 0 or not os.path.exists(metrics_path):
      raise RuntimeError(f'{dataset}/{run} seed {seed} failed (exit {proc.returncode}); see '
                         f'{workdir}/compare_run.log')
    with open(timing_path, 'w') as f:
      json.dump({'wall_time_s': round(wall, 1), 'command': cmd,
                 'commit': step_throughput.git_commit()['commit'],
                 'loadavg_at_end': list(os.getloadavg())}, f)
  with open(metrics_path) as f:
    metrics = json.load(f)
  timing = {}
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      timing = json.load(f)
  return {'workdir': workdir, 'metrics': metrics, 'wall_time_s': timing.get('wall_time_s'),
          'loadavg_at_end': timing.get('loadavg_at_end'), 'commit': timing.get('commit'),
          'overrides': overrides}


def _mean_std(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  mean = statistics.fmean(values)
  std = statistics.stdev(values) if len(values) > 1 else None
  return mean, std


def model_record(args, dataset: str, model: str, runs: dict, commit: str) -> dict:
  run, metric, description = MODELS[model]
  per_seed = []
  for seed in args.seeds:
    r = runs[(dataset, run, seed)]
    m = r['metrics']
    per_seed.append({
        'seed': seed,
        'proxy_fd_samples': m.get(metric),
        'proxy_fd_recon': m.get('proxy_fd_recon'),
        'active_dims': m.get('active_dims'),
        'wall_time_s': r['wall_time_s'],
        'classifier_test_accuracy': m.get('classifier_test_accuracy'),
        'fid_samples': m.get(metric.replace('proxy_fd', 'fid')),
        'workdir': r['workdir'],
        'run_commit': r['commit'],
        'loadavg_at_end': r['loadavg_at_end'],
    })
  summary = {}
  for key in ('proxy_fd_samples', 'proxy_fd_recon', 'active_dims', 'wall_time_s'):
    mean, std = _mean_std([s[key] for s in per_seed])
    summary[key] = {'mean': mean, 'std': std}
  return {
      'model': model, 'description': description, 'dataset': dataset, 'run': run,
      'samples_metric': metric, 'metric_label': 'proxy Fréchet classifier distance (not FID)',
      'epochs_stage1': args.epochs,
      # Only the two-stage VAE is trained (and sampled) through stage 2; the other rows of its
      # run are its stage 1 alone.
      'epochs_stage2': args.stage2_epochs if model == 'two_stage_vae' else 0,
      'num_samples': args.num_samples, 'seeds': args.seeds, 'per_seed': per_seed,
      'summary': summary, 'config_overrides': runs[(dataset, run, args.seeds[0])]['overrides'],
      'commit': commit,
      'machine': {'platform': platform.platform(), 'cpu_count': os.cpu_count()},
      'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }


def _cell(stat, digits=1):
  mean, std = stat['mean'], stat['std']
  if mean is None:
    return 'n/a'
  if std is None:
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ± {std:.{digits}f}'


def markdown_table(records, commit: str, args) -> str:
  seeds = len(args.seeds)
  run_commits = sorted({s['run_commit'] for r in records for s in r['per_seed']
                        if s.get('run_commit')})
  if run_commits:  # The code the runs trained with (a rerun that reuses them may be later).
    commit = ', '.join(c[:10] for c in run_commits)
  lines = [
      f'Budget: {args.epochs} stage-1 epoch(s) for every model (+ {args.stage2_epochs} stage-2 '
      f'epoch(s) for the two-stage VAE); {seeds} seed(s) '
      f'({", ".join(map(str, args.seeds))}){" — mean ± std" if seeds > 1 else ""}; '
      f'{args.num_samples} samples vs {args.num_samples} test images; runs trained at commit '
      f'`{(commit or "unknown")[:22]}`; produced by `benchmarks/compare_models.py`. '
      'FD = proxy Fréchet classifier distance (lower is better; not comparable to FID). '
      'Wall time is the whole `tsvae.main` run the row comes from (training + evaluation).',
      '',
      '| model | dataset | epochs (stage 1 + 2) | proxy FD samples | proxy FD recons | '
      'active dims | wall time (s) |',
      '|---|---|---|---|---|---|---|',
  ]
  for r in records:
    s = r['summary']
    epochs = f"{r['epochs_stage1']} + {r['epochs_stage2']}"
    lines.append(f"| {r['description']} | {r['dataset']} | {epochs} | "
                 f"{_cell(s['proxy_fd_samples'])} | {_cell(s['proxy_fd_recon'])} | "
                 f"{_cell(s['active_dims'], 0)} | {_cell(s['wall_time_s'], 0)} |")
  return '\n'.join(lines) + '\n'


def write_readme_table(readme: str, table: str):
  with open(readme) as f:
    text = f.read()
  if TABLE_START not in text or TABLE_END not in text:
    raise SystemExit(f'{readme} has no {TABLE_START} ... {TABLE_END} markers')
  head, rest = text.split(TABLE_START, 1)
  _, tail = rest.split(TABLE_END, 1)
  with open(readme + '.tmp', 'w') as f:
    f.write(head + TABLE_START + '\n' + table + TABLE_END + tail)
  os.replace(readme + '.tmp', readme)


def main(argv=None):
  args = parse_args(argv)
  needed_runs = sorted({MODELS[m][0] for m in args.models}, key=list(RUNS).index)
  for dataset in args.datasets:
    manual = os.path.join(args.shared_data, dataset)
    if not os.path.isdir(manual):
      raise SystemExit(f'no local data for {dataset}: {manual} is not a folder')
  runs = {}
  for dataset in args.datasets:
    for seed in args.seeds:
      for run in needed_runs:
        runs[(dataset, run, seed)] = run_once(args, dataset, run, seed)
  commit = step_throughput.git_commit()['commit']
  records = []
  os.makedirs(args.out_dir, exist_ok=True)
  for dataset in args.datasets:
    for model in args.models:
      record = model_record(args, dataset, model, runs, commit)
      records.append(record)
      with open(os.path.join(args.out_dir, f'{dataset}_{model}.json'), 'w') as f:
        json.dump(record, f, indent=1)
        f.write('\n')
  table = markdown_table(records, commit, args)
  with open(os.path.join(args.out_dir, 'table.md'), 'w') as f:
    f.write(table)
  print(table)
  if args.readme:
    write_readme_table(args.readme, table)
  return records


if __name__ == '__main__':
  main()
