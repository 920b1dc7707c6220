r"""Issue #18: β and γ as experiments — rate-distortion sweep, β-conditioned VAE, κ = 2 maps, and
learned vs fixed γ.

  python benchmarks/beta_gamma_sweep.py --manual_dir=../shared/data/mnist \
      --root=/root/beta_gamma --out=benchmarks/results/beta_gamma_sweep_mnist
  python benchmarks/beta_gamma_sweep.py --plot --table --out=benchmarks/results/beta_gamma_sweep_mnist

Every point is one stage-1 run of `tsvae.main` (configs/<dataset>.py, `--steps` steps at
`--learning_rate`, the same seed; stage 2 and the evaluation off) in <root>/<point>, then scored
here on `--num_samples` random test images: rate (KL, nats), distortion (per-pixel MSE at
z = μ + σ·ε; `tsvae.evaluators.rate_distortion`), log γ_x, active dims and mmd_z of the test
codes, and the proxy FD of prior samples (z ~ N(0, I), decoder mean). One JSON per point in --out
(commit, machine, config overrides, wall time of the run and of its logged steps). A rerun
skips the points whose JSON exists (an interrupted run resumes from its checkpoint).

Parts (`--parts`, run in this order):
- `sweep`: the β-VAE grid, β ∈ --betas × γ ∈ --gamma_modes (`fixed` = γ fixed at 1, the classic
  β-VAE; `learned`; `optimal` = σ-VAE). Points sweep_<mode>_b<β>.
- `cond`: one β-conditioned VAE (`stage1.model='vae_beta'`) per mode of --cond_modes, trained
  once with log β ~ U[log min β, log max β] per batch, then scored at every β of --betas (the
  same numbers as a sweep point, per β). Point cond_<mode>.
- `maps`: one κ = 2 run per γ mode of --gamma_modes at β = --map_beta; its latent map (μ_z of the test images by
  label, and the decoder over a grid of z) is copied to <out>/latent_maps/<mode>.png.
- `claim2`: a learned-γ run and a run with γ fixed from the start at that run's final γ, same
  seed and steps, both with --claim2_stage2_epochs of stage 2: reconstruction MSE, mmd_z, active
  dims, proxy FD of prior and of two-stage samples. Points claim2_learned, claim2_fixed.

`--plot` draws <out>/beta_gamma_sweep.png; `--table` prints the README tables and writes
<out>/summary.json (the β-conditioned curves against the sweep's: wall time, and the distance
of the curves at each β and at equal rate).
"""

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PARTS = ('sweep', 'cond', 'maps', 'claim2')
GAMMA_MODES = ('fixed', 'learned', 'optimal')
MODE_LABELS = {'fixed': 'γ fixed at 1 (β-VAE)', 'learned': 'γ learned',
               'optimal': 'γ optimal (σ-VAE)'}
COLORS = {'fixed': 'tab:red', 'learned': 'tab:blue', 'optimal': 'tab:green'}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dataset', default='mnist')
  p.add_argument('--config', default='', help='default: configs/<dataset>.py')
  p.add_argument('--manual_dir', default='')
  p.add_argument('--root', default='/tmp/beta_gamma_sweep', help='workdirs and the tfds data')
  p.add_argument('--cache_dir', default='', help="'' = tsvae's default cache")
  p.add_argument('--parts', default=','.join(PARTS))
  p.add_argument('--betas', default='0.1,0.3,1,3')
  p.add_argument('--gamma_modes', default='optimal,fixed,learned',
                 help='sweep rows, in the order they run')
  p.add_argument('--cond_modes', default='optimal,fixed',
                 help='γ modes of the β-conditioned runs')
  p.add_argument('--steps', type=int, default=600, help='stage-1 steps of every run')
  p.add_argument('--learning_rate', type=float, default=1e-3)
  p.add_argument('--latent_dim', type=int, default=64)
  p.add_argument('--map_beta', type=float, default=1.0)
  p.add_argument('--claim2_stage2_epochs', type=int, default=3)
  p.add_argument('--num_samples', type=int, default=2000)
  p.add_argument('--override', action='append', default=[],
                 help="'key=value' config override for every run (JSON values; tests shrink "
                      'the model with it)')
  p.add_argument('--out', required=True)
  p.add_argument('--plot', action='store_true', help='only draw the plot from --out')
  p.add_argument('--table', action='store_true', help='only print the tables from --out')
  args = p.parse_args(argv)
  args.parts = tuple(x for x in args.parts.split(',') if x)
  args.betas = tuple(float(b) for b in args.betas.split(',') if b)
  args.gamma_modes = tuple(m for m in args.gamma_modes.split(',') if m)
  args.cond_modes = tuple(m for m in args.cond_modes.split(',') if m)
  for name, values, known in (('--parts', args.parts, PARTS),
                              ('--gamma_modes', args.gamma_modes, GAMMA_MODES),
                              ('--cond_modes', args.cond_modes, GAMMA_MODES)):
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise SystemExit(f'{name}: unknown {unknown}; known: {", ".join(known)}.')
  if not args.betas or min(args.betas) <= 0:
    raise SystemExit('--betas: give positive numbers, e.g. 0.1,0.3,1,3.')
  args.overrides = {}
  for text in args.override:
    key, sep, value = text.partition('=')
    if not sep or not key:
      raise SystemExit(f'--override {text!r}: expected key=value.')
    try:
      args.overrides[key] = json.loads(value)
    except ValueError:
      args.overrides[key] = value
  return args


# ------------------------------------------------------------------------------ points


def _beta_name(beta):
  return f'{beta:g}'


def gamma_overrides(mode, gamma_value=1.0):
  return {'stage1.gamma_mode': mode, **({'stage1.gamma_value': gamma_value}
                                        if mode == 'fixed' else {})}


def plan(args):
  """[(point name, part, its own config overrides, info)] in the order they run."""
  points = []
  for part in args.parts:
    if part == 'sweep':
      for mode in args.gamma_modes:
        for beta in args.betas:
          points.append((f'sweep_{mode}_b{_beta_name(beta)}', part,
                         dict(gamma_overrides(mode), **{'stage1.beta': beta}),
                         {'gamma_mode': mode, 'beta': beta}))
    elif part == 'cond':
      for mode in args.cond_modes:
        points.append((f'cond_{mode}', part, dict(gamma_overrides(mode), **{
            'stage1.model': 'vae_beta',
            'stage1.beta_cond.beta_range': [min(args.betas), max(args.betas)],
            'eval.beta_values': list(args.betas)}), {'gamma_mode': mode}))
    elif part == 'maps':
      for mode in args.gamma_modes:
        points.append((f'map_{mode}', part, dict(gamma_overrides(mode), **{
            'stage1.beta': args.map_beta, 'latent_dim': 2}),
                       {'gamma_mode': mode, 'beta': args.map_beta}))
    elif part == 'claim2':
      points.append(('claim2_learned', part, gamma_overrides('learned'),
                     {'gamma_mode': 'learned', 'beta': 1.0}))
      points.append(('claim2_fixed', part, None, {'gamma_mode': 'fixed', 'beta': 1.0}))
  return points


def config_path(args):
  return args.config or os.path.join('configs', f'{args.dataset}.py')


def run_overrides(args, own, stage2_epochs=0):
  """Every run's keys: --override, the budget, then the point's own keys."""
  out = dict({'latent_dim': args.latent_dim}, **args.overrides)
  out.update({
      'data.manual_dir': os.path.abspath(args.manual_dir) if args.manual_dir else '',
      'data.data_dir': os.path.join(args.root, 'tfds'),
      'stage1.learning_rate': args.learning_rate,
      'stage1.num_epochs': 1000,  # stage1.max_steps is the budget.
      'stage1.max_steps': args.steps,
      'stage2.enabled': stage2_epochs > 0,
      'eval.enabled': False})
  if stage2_epochs:
    out['stage2.num_epochs'] = stage2_epochs
  out.update(own)
  return out


def _flag_value(value):
  if isinstance(value, (list, tuple)):
    return '(' + ','.join(repr(v) for v in value) + ',)'
  return str(value)


def command(args, workdir, overrides):
  return ([sys.executable, '-m', 'tsvae.main', f'--config={config_path(args)}',
           f'--workdir={workdir}'] +
          [f'--config.{k}={_flag_value(v)}' for k, v in overrides.items()])


def load_config(args, overrides):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from tsvae import config_lib  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('sweep_config',
                                                os.path.join(REPO_ROOT, config_path(args)))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in dict(overrides, **{'eval.cache_dir': args.cache_dir}).items():
    config_lib.set_dotted(config, key, tuple(value) if isinstance(value, list) else value)
  return config


# ------------------------------------------------------------------------------ records


def _path(args, name):
  return os.path.join(args.out, f'{name}.json')


def _read(args, name):
  if not os.path.exists(_path(args, name)):
    return None
  with open(_path(args, name)) as f:
    return json.load(f)


def _write(args, name, record):
  os.makedirs(args.out, exist_ok=True)
  tmp = _path(args, name) + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
  os.replace(tmp, _path(args, name))
  print(f'wrote {_path(args, name)}: ' + ', '.join(
      f'{k}={record[k]:.4g}' for k in ('rate_kl', 'distortion_mse', 'proxy_fd_prior',
                                       'loggamma_x', 'run_wall_s')
      if isinstance(record.get(k), float)), flush=True)


def _provenance():
  """(commit, machine) as benchmarks/step_throughput.py records them."""
  try:
    import step_throughput  # pylint: disable=g-import-not-at-top
    return step_throughput.git_commit(), step_throughput.machine_info()
  except Exception:  # pylint: disable=broad-except  (a file being edited elsewhere)
    import platform  # pylint: disable=g-import-not-at-top
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=False).stdout.strip() or None
    return ({'commit': head}, {'platform': platform.platform(), 'cpu_count': os.cpu_count()})


def _record_base(args):
  commit, machine = _provenance()
  return {'benchmark': 'beta_gamma_sweep', 'dataset': args.dataset,
          'commit': commit, 'machine': machine,
          'steps': args.steps, 'learning_rate': args.learning_rate,
          'num_samples': args.num_samples, 'config_file': config_path(args),
          'created': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


# ------------------------------------------------------------------------------ training


def train_point(args, name, overrides):
  """Runs tsvae.main for the point (resuming it); its wall time, or None when it was done."""
  from tsvae import checkpointing  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(args.root, name)
  stage2 = overrides.get('stage2.enabled', False)
  if checkpointing.is_complete(workdir, 'stage1') and (
      not stage2 or checkpointing.is_complete(workdir, 'stage2')):
    return None
  cmd = command(args, workdir, overrides)
  print('+', ' '.join(cmd[1:]), flush=True)
  start = time.time()
  subprocess.run(cmd, cwd=REPO_ROOT, check=True)
  return time.time() - start


def logged_seconds(workdir, stage):
  """Σ steps / (steps/s) of the logged windows (compilation excluded)."""
  import stage2_study  # pylint: disable=g-import-not-at-top
  from tsvae import metric_logging  # pylint: disable=g-import-not-at-top
  return stage2_study.training_seconds(metric_logging.read_stage_rows(workdir, stage))


# ------------------------------------------------------------------------------ scoring


class Scorer:
  """The test subset, the proxy classifier, and every measurement of a point."""

  def __init__(self, args, config, experiment):
    import stage2_study  # pylint: disable=g-import-not-at-top
    self.proxy = stage2_study.Scorer(argparse.Namespace(num_samples=args.num_samples,
                                                        no_fid=True), config, experiment)
    self.test_uint8 = self.proxy.test_uint8
    self.batch = int(config.eval.batch_size)

  def point(self, experiment, state1, *, log_beta=None, state2=None):
    """Rate, distortion, γ, active dims, mmd_z and proxy FD of prior (and stage-2) samples."""
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
    from tsvae import generation  # pylint: disable=g-import-not-at-top
    from tsvae.evaluators import inputs as eval_inputs  # pylint: disable=g-import-not-at-top
    from tsvae.evaluators import rate_distortion as rd  # pylint: disable=g-import-not-at-top
    from tsvae.metrics import diagnostics  # pylint: disable=g-import-not-at-top
    c, model, v1 = experiment.config, experiment.model1, generation.variables_of(state1)
    images = self.test_uint8.astype(np.float32) / 255.0
    beta = None if log_beta is None else math.exp(log_beta)
    rate, distortion = rd.rate_distortion(model, v1, images, batch_size=self.batch,
                                          seed=int(c.eval.seed) + 4, beta=beta)
    mu, sigma = _encode(model, v1, images, self.batch, log_beta)
    active = diagnostics.active_dims(sigma, float(c.eval.active_dim_threshold))
    z = mu + sigma * np.random.default_rng(int(c.eval.seed) + 5).standard_normal(
        mu.shape).astype(np.float32)
    rng = experiment.rng(experiment_lib.Stream.BETA_GAMMA_SWEEP)
    r1, r2 = jax.random.split(rng)
    prior = _prior_samples(model, v1, r1, len(images), c.latent_dim, self.batch, log_beta)
    record = {'rate_kl': rate, 'distortion_mse': distortion,
              'loggamma_x': generation.loggamma(model, v1),
              'active_dims': int(active['count']),
              'mmd_z': float(diagnostics.mmd_to_standard_normal(z, seed=int(c.eval.seed))),
              'proxy_fd_prior': self.proxy.proxy_fd(eval_inputs.min_max_stretch(prior))}
    if log_beta is not None and c.stage1.gamma_mode in ('learned', 'fixed'):
      record['loggamma_x_note'] = 'one γ for every β'
    if c.stage1.gamma_mode == 'optimal':  # γ² = MSE of the batch: that of the test images.
      record['loggamma_x_at_test'] = 0.5 * math.log(distortion)
    grids = {'prior': prior[:100]}
    if state2 is not None:
      v2 = generation.variables_of(state2)
      two_stage = generation.generate_stage2(model, v1, experiment.model2, v2, r2, len(images),
                                             batch_size=self.batch)
      record['proxy_fd_stage2'] = self.proxy.proxy_fd(eval_inputs.min_max_stretch(two_stage))
      record['loggamma_z'] = generation.loggamma(experiment.model2, v2)
      grids['stage2'] = two_stage[:100]
    return record, grids


def _encode(model, variables, images, batch, log_beta):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tsvae import batching  # pylint: disable=g-import-not-at-top
  kwargs = {} if log_beta is None else {'log_beta': jnp.float32(log_beta)}
  fn = jax.jit(lambda x: model.apply(variables, x, train=False, method='encode', **kwargs)[:2])
  return batching.map_padded(lambda x: tuple(jax.device_get(fn(x))), images, batch)


def _prior_samples(model, variables, rng, num, latent_dim, batch, log_beta):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  kwargs = {} if log_beta is None else {'log_beta': jnp.float32(log_beta)}
  z = np.asarray(jax.random.normal(rng, (num, latent_dim)), np.float32)
  fn = jax.jit(lambda zz: model.apply(variables, zz, train=False, method='decode', **kwargs))
  from tsvae import batching  # pylint: disable=g-import-not-at-top
  return batching.map_padded(lambda zz: np.asarray(fn(zz)), z, batch)


def latent_map(experiment, state1, path):
  """The κ = 2 latent map of the test set (tsvae's latent_map evaluator's figure)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import generation  # pylint: disable=g-import-not-at-top
  from tsvae import latents  # pylint: disable=g-import-not-at-top
  from tsvae.evaluators import latent_diagnostics as ld  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import diagnostics  # pylint: disable=g-import-not-at-top
  v1 = generation.variables_of(state1)
  images, labels = classifier_lib.load_labeled(experiment.builder, 'test',
                                               experiment.config.dataset)
  mu, _ = latents.encode(experiment.model1, v1, images.astype(np.float32) / 255.0,
                         int(experiment.config.eval.batch_size))
  grid = np.asarray(generation.decode(experiment.model1, v1, diagnostics.latent_grid_codes(
      ld.LATENT_MAP_SIDE, ld.LATENT_MAP_EXTENT)))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  diagnostics.plot_latent_map(path, mu, labels, grid, ld.LATENT_MAP_EXTENT)


def _save_grid(args, name, images):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import images as images_lib  # pylint: disable=g-import-not-at-top
  images_lib.save_grid(os.path.join(args.out, 'grids', f'{name}.png'), np.asarray(images), 10)


def score(args, name, part, overrides, info, wall, scorer_box):
  """Restores the point's stage 1 (and 2), scores it and writes its JSON."""
  import jax  # pylint: disable=g-import-not-at-top
  from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from tsvae import stages  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(args.root, name)
  config = load_config(args, overrides)
  experiment = experiment_lib.setup(config, workdir, devices=jax.devices()[:1])
  if scorer_box.get('scorer') is None:
    scorer_box['scorer'] = Scorer(args, config, experiment)
  scorer = scorer_box['scorer']
  state1 = stages.restore_final(experiment, 'stage1')
  state2 = (stages.restore_final(experiment, 'stage2') if config.stage2.enabled else None)
  old = _read(args, name) or {}
  record = dict(_record_base(args), point=name, part=part, **info,
                overrides={k: v for k, v in overrides.items() if not k.startswith('data.')},
                command=' '.join(command(args, workdir, overrides)[1:]),
                run_wall_s=wall if wall is not None else old.get('run_wall_s'),
                stage1_step=int(state1.step),
                stage1_train_seconds=logged_seconds(workdir, 'stage1'))
  if state2 is not None:
    record['stage2_step'] = int(state2.step)
    record['stage2_train_seconds'] = logged_seconds(workdir, 'stage2')
  if part == 'cond':
    record['curve'] = []
    for beta in args.betas:
      measured, grids = scorer.point(experiment, state1, log_beta=math.log(beta))
      record['curve'].append(dict(measured, beta=beta))
      _save_grid(args, f'{name}_b{_beta_name(beta)}_prior', grids['prior'])
  else:
    measured, grids = scorer.point(experiment, state1, state2=state2)
    record.update(measured)
    for key, images in grids.items():
      _save_grid(args, f'{name}_{key}', images)
  if part == 'maps':
    path = os.path.join(args.out, 'latent_maps', f'{info["gamma_mode"]}.png')
    latent_map(experiment, state1, path)
    record['latent_map'] = os.path.relpath(path, args.out)
  _write(args, name, record)
  return record


def run_point(args, name, part, overrides, info, scorer_box):
  from tsvae import workdir_lock  # pylint: disable=g-import-not-at-top
  if _read(args, name) is not None:
    print(f'{name}: done ({_path(args, name)})', flush=True)
    return _read(args, name)
  if name == 'claim2_fixed':  # γ fixed from the start at the learned run's final γ.
    learned = _read(args, 'claim2_learned')
    if learned is None:
      raise SystemExit('claim2_fixed needs claim2_learned first.')
    info = dict(info, gamma_value=math.exp(learned['loggamma_x']))
    overrides = gamma_overrides('fixed', info['gamma_value'])
  stage2_epochs = args.claim2_stage2_epochs if part == 'claim2' else 0
  overrides = run_overrides(args, overrides, stage2_epochs)
  workdir = os.path.join(args.root, name)
  wall = train_point(args, name, overrides)
  with workdir_lock.hold(workdir, 'benchmarks/beta_gamma_sweep.py'):
    return score(args, name, part, overrides, info, wall, scorer_box)


# ------------------------------------------------------------------------------ summary


def load_points(out):
  points = {}
  for path in sorted(glob.glob(os.path.join(out, '*.json'))):
    with open(path) as f:
      record = json.load(f)
    if record.get('benchmark') == 'beta_gamma_sweep':
      points[record['point']] = record
  return points


def _sweep_rows(points, mode):
  return sorted((p for p in points.values() if p['part'] == 'sweep' and p['gamma_mode'] == mode),
                key=lambda p: p['beta'])


def _interp_log_distortion(rows, rate):
  """log D of the sweep's curve at `rate` (linear in rate between its points), or None."""
  pts = sorted((r['rate_kl'], math.log(r['distortion_mse'])) for r in rows)
  for (r0, d0), (r1, d1) in zip(pts, pts[1:]):
    if r0 <= rate <= r1:
      return d0 if r1 == r0 else d0 + (d1 - d0) * (rate - r0) / (r1 - r0)
  return None


def compare(points):
  """Each β-conditioned run against the sweep row of its γ mode."""
  out = {}
  for cond in (p for p in points.values() if p['part'] == 'cond'):
    mode = cond['gamma_mode']
    rows = {r['beta']: r for r in _sweep_rows(points, mode)}
    per_beta = []
    for c in cond['curve']:
      row = rows.get(c['beta'])
      if row is None:
        continue
      at_rate = _interp_log_distortion(rows.values(), c['rate_kl'])
      per_beta.append({
          'beta': c['beta'], 'rate_cond': c['rate_kl'], 'rate_sweep': row['rate_kl'],
          'distortion_cond': c['distortion_mse'], 'distortion_sweep': row['distortion_mse'],
          'proxy_fd_cond': c['proxy_fd_prior'], 'proxy_fd_sweep': row['proxy_fd_prior'],
          'rate_diff': c['rate_kl'] - row['rate_kl'],
          'log_distortion_ratio': math.log(c['distortion_mse'] / row['distortion_mse']),
          'log_distortion_gap_at_equal_rate': (None if at_rate is None else
                                               math.log(c['distortion_mse']) - at_rate)})
    sweep_wall = [r.get('run_wall_s') for r in rows.values()]
    gaps = [b['log_distortion_gap_at_equal_rate'] for b in per_beta
            if b['log_distortion_gap_at_equal_rate'] is not None]
    out[mode] = {
        'per_beta': per_beta,
        'mean_abs_rate_diff': (sum(abs(b['rate_diff']) for b in per_beta) / len(per_beta)
                               if per_beta else None),
        'mean_abs_log_distortion_ratio': (sum(abs(b['log_distortion_ratio'])
                                              for b in per_beta) / len(per_beta)
                                          if per_beta else None),
        'mean_log_distortion_gap_at_equal_rate': sum(gaps) / len(gaps) if gaps else None,
        'cond_wall_s': cond.get('run_wall_s'),
        'sweep_wall_s': (sum(sweep_wall) if sweep_wall and None not in sweep_wall else None),
        'sweep_runs': len(rows),
        'cond_train_s': cond.get('stage1_train_seconds'),
        'sweep_train_s': sum(r.get('stage1_train_seconds') or 0 for r in rows.values())}
  return out


def _fmt(value, spec='.3g'):
  return '–' if value is None else format(value, spec)


def table(out) -> str:
  points = load_points(out)
  lines = ['| run | γ | β | rate KL (nats) | distortion MSE | proxy FD prior | log γ_x | '
           'active dims | mmd_z | run wall (s) |', '|---|---|---|---|---|---|---|---|---|---|']
  for mode in GAMMA_MODES:
    for p in _sweep_rows(points, mode):
      lines.append(f'| β-sweep | {mode} | {p["beta"]:g} | {p["rate_kl"]:.2f} | '
                   f'{p["distortion_mse"]:.4f} | {p["proxy_fd_prior"]:.1f} | '
                   f'{p["loggamma_x"]:.2f} | {p["active_dims"]} | {p["mmd_z"]:.2e} | '
                   f'{_fmt(p.get("run_wall_s"), ".0f")} |')
    cond = points.get(f'cond_{mode}')
    if cond:
      for i, c in enumerate(cond['curve']):
        wall = _fmt(cond.get('run_wall_s'), '.0f') if i == 0 else '(same run)'
        lines.append(f'| β-conditioned | {mode} | {c["beta"]:g} | {c["rate_kl"]:.2f} | '
                     f'{c["distortion_mse"]:.4f} | {c["proxy_fd_prior"]:.1f} | '
                     f'{c["loggamma_x"]:.2f} | {c["active_dims"]} | {c["mmd_z"]:.2e} | {wall} |')
  for mode in GAMMA_MODES:
    p = points.get(f'map_{mode}')
    if p:
      lines.append(f'| κ = 2 | {mode} | {p["beta"]:g} | {p["rate_kl"]:.2f} | '
                   f'{p["distortion_mse"]:.4f} | {p["proxy_fd_prior"]:.1f} | '
                   f'{p["loggamma_x"]:.2f} | {p["active_dims"]} | {p["mmd_z"]:.2e} | '
                   f'{_fmt(p.get("run_wall_s"), ".0f")} |')
  text = '\n'.join(lines)
  summary = compare(points)
  if summary:
    text += ('\n\n| β-conditioned vs sweep | run wall: cond / sweep (s) | logged steps: cond / '
             'sweep (s) | mean abs rate diff (nats) | mean abs log D ratio | mean log D gap at '
             'equal rate |\n|---|---|---|---|---|---|')
    for mode, s in summary.items():
      text += (f'\n| {mode} | {_fmt(s["cond_wall_s"], ".0f")} / {_fmt(s["sweep_wall_s"], ".0f")} '
               f'({s["sweep_runs"]} runs) | {_fmt(s["cond_train_s"], ".0f")} / '
               f'{_fmt(s["sweep_train_s"], ".0f")} | {_fmt(s["mean_abs_rate_diff"], ".2f")} | '
               f'{_fmt(s["mean_abs_log_distortion_ratio"], ".3f")} | '
               f'{_fmt(s["mean_log_distortion_gap_at_equal_rate"], "+.3f")} |')
  claim2 = [points.get('claim2_learned'), points.get('claim2_fixed')]
  if any(claim2):
    text += ('\n\n| claim 2 run | γ_x | recon MSE | mmd_z | active dims | proxy FD prior | '
             'proxy FD two-stage | log γ_z |\n|---|---|---|---|---|---|---|---|')
    for p in claim2:
      if p:
        label = ('learned γ' if p['gamma_mode'] == 'learned' else
                 f'γ fixed at the learned final γ ({p.get("gamma_value", 0):.4f})')
        text += (f'\n| {label} | {math.exp(p["loggamma_x"]):.4f} | {p["distortion_mse"]:.4f} | '
                 f'{p["mmd_z"]:.2e} | {p["active_dims"]} | {p["proxy_fd_prior"]:.1f} | '
                 f'{_fmt(p.get("proxy_fd_stage2"), ".1f")} | {_fmt(p.get("loggamma_z"), ".2f")} |')
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  return text


def plot(out):
  """Rate vs distortion (proxy FD beside each point); proxy FD vs β; wall times."""
  from tsvae.metrics import diagnostics  # pylint: disable=g-import-not-at-top
  plt = diagnostics._pyplot()  # pylint: disable=protected-access
  points = load_points(out)
  fig, axes = plt.subplots(1, 3, figsize=(19, 5.5))
  ax = axes[0]
  for mode in GAMMA_MODES:
    rows = _sweep_rows(points, mode)
    if rows:
      ax.plot([r['rate_kl'] for r in rows], [r['distortion_mse'] for r in rows], '-o',
              color=COLORS[mode], label=f'β-sweep, {MODE_LABELS[mode]}')
      for r in rows:
        ax.annotate(f'β={r["beta"]:g}\nFD {r["proxy_fd_prior"]:.0f}',
                    (r['rate_kl'], r['distortion_mse']), fontsize=6, color=COLORS[mode],
                    xytext=(4, 4), textcoords='offset points')
    cond = points.get(f'cond_{mode}')
    if cond:
      curve = cond['curve']
      ax.plot([c['rate_kl'] for c in curve], [c['distortion_mse'] for c in curve], '--s',
              color=COLORS[mode], mfc='none', label=f'β-conditioned (one run), {mode}')
      for c in curve:
        ax.annotate(f'FD {c["proxy_fd_prior"]:.0f}', (c['rate_kl'], c['distortion_mse']),
                    fontsize=6, color=COLORS[mode], xytext=(4, -10),
                    textcoords='offset points')
  ax.set_xlabel('rate: KL(q(z|x) ‖ N(0, I)) (nats, test images)')
  ax.set_ylabel('distortion: MSE per pixel')
  ax.set_yscale('log')
  ax.set_title('rate–distortion (proxy FD of prior samples beside each point)')
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  ax = axes[1]
  for mode in GAMMA_MODES:
    rows = _sweep_rows(points, mode)
    if rows:
      ax.plot([r['beta'] for r in rows], [r['proxy_fd_prior'] for r in rows], '-o',
              color=COLORS[mode], label=f'β-sweep, {mode}')
    cond = points.get(f'cond_{mode}')
    if cond:
      ax.plot([c['beta'] for c in cond['curve']], [c['proxy_fd_prior'] for c in cond['curve']],
              '--s', color=COLORS[mode], mfc='none', label=f'β-conditioned, {mode}')
  ax.set_xscale('log')
  ax.set_xlabel('β')
  ax.set_ylabel('proxy FD of prior samples (lower is better)')
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  ax = axes[2]
  summary = compare(points)
  labels, sweep_walls, cond_walls = [], [], []
  for mode, s in summary.items():
    labels.append(mode)
    sweep_walls.append(s['sweep_wall_s'] or 0)
    cond_walls.append(s['cond_wall_s'] or 0)
  if labels:
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], sweep_walls, 0.4, label='β-sweep (all its runs)')
    ax.bar([x + 0.2 for x in xs], cond_walls, 0.4, label='β-conditioned (one run)')
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels)
    ax.legend(fontsize=7)
  ax.set_ylabel('wall time of the tsvae.main runs (s)')
  fig.tight_layout()
  path = os.path.join(out, 'beta_gamma_sweep.png')
  os.makedirs(out, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  print(f'wrote {path}')
  return path


# ------------------------------------------------------------------------------ main


def main(argv=None):
  args = parse_args(argv)
  if args.plot or args.table:
    if args.plot:
      plot(args.out)
    if args.table:
      print(table(args.out))
    return
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  from tsvae import input_pipeline  # pylint: disable=g-import-not-at-top
  # Prepared once before the first run, so that no run's wall time includes it.
  input_pipeline.get_builder(args.dataset, data_dir=os.path.join(args.root, 'tfds'),
                             manual_dir=os.path.abspath(args.manual_dir) if args.manual_dir
                             else None)
  scorer_box = {}
  failed = []
  for name, part, overrides, info in plan(args):
    try:
      run_point(args, name, part, overrides, info, scorer_box)
    except subprocess.CalledProcessError as err:  # E.g. a NaN stop: the other points go on.
      print(f'{name}: tsvae.main failed ({err}); no point written.', flush=True)
      failed.append(name)
      continue
    plot(args.out)
  print(table(args.out))
  if failed:
    raise SystemExit(f'failed points: {", ".join(failed)}')


if __name__ == '__main__':
  main()
