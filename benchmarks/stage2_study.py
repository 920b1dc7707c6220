r"""Issue #19: does the second stage deliver? Real FID of two stages vs one, as stage 2 trains.

  python benchmarks/stage2_study.py --manual_dir=../shared/data/mnist --root=/root/study \
      --stage1_epochs=30 \
      --schedule='reference:10,25,50 large_batch:25,50,100 high_lr:10,25' \
      --out=benchmarks/results/stage2_study_mnist

Phases, each resumable (a point whose JSON exists is not computed again; checkpoints resume):
1. **Stage 1** (`tsvae.main`, stage 2 and evaluation off) in <root>/<dataset>_s1: the reference
   settings for --stage1_epochs epochs. Its latents are then extracted there (`tsvae.main`'s code).
2. **Fixed references**, scored once: stage-1 prior samples (the single-stage learned-γ VAE), the
   ex-post GMM on μ_z, reconstructions, and real training images (the floor; --floor_from takes
   its FID from a committed benchmarks/fid_floor.py JSON of the same protocol and subsets).
3. **Stage-2 recipes**, each in its own workdir <root>/<dataset>_s2_<recipe> that trains stage 2
   only, on a copy of the stage-1 latents (stage 1 is loaded from the stage-1 workdir). Stage 2
   is trained to each milestone epoch in turn (a milestone is a resumed run: bitwise the same as
   an uninterrupted one) and scored there at stage-2 noise scales 1 and 0 (same u and ε). The
   variables of each milestone are kept in <workdir>/milestones (the checkpoints keep only the
   latest), so a rerun can score an earlier milestone after a later one has trained.

Every point is one JSON in --out (commit, machine, config, wall times): FID (`tf_graph`
preprocessing, --num_samples generated vs as many test images, the paper's protocol at 10k),
proxy FD, and for stage 2 γ_z, mmd_u and the training loss at that step. The proxy FD is
computed everywhere as the points come; FID (minutes per set on a CPU) where --fid_points,
--fid_noise_scales and --fid_sets say, after all training, most telling first: the stage-1
prior, the first recipe's last milestone at noise 1, the GMM, the other recipes' last
milestones at noise 1, reconstructions, then the other noise scales and milestones. A run cut
short keeps every point written so far; rerun it and only the missing FIDs are computed (their
images are generated again from the same states and seeds). `--plot` / `--table` draw
<out>/stage2_study.png / print the README table from the JSONs.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Stage-2 recipes: config overrides that leave the reference default alone.
RECIPES = {
    'reference': {},  # batch 64, lr 1e-4, halved every 300 epochs (the authors' code).
    'high_lr': {'stage2.learning_rate': 1e-3},  # 10x the lr, the same halving.
    'large_batch': {'stage2.batch_size': 512, 'stage2.learning_rate': 8e-4},  # lr x batch.
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dataset', default='mnist')
  p.add_argument('--config', default='', help="default: configs/<dataset>.py")
  p.add_argument('--manual_dir', default='')
  p.add_argument('--root', default='/tmp/stage2_study', help='workdirs and the tfds data')
  p.add_argument('--cache_dir', default='', help="'' = tsvae's default cache")
  p.add_argument('--stage1_epochs', type=int, default=30)
  p.add_argument('--schedule', default='reference:10,25,50',
                 help="'recipe:e1,e2,... recipe:...' (recipes: %s)" % ', '.join(RECIPES))
  p.add_argument('--num_samples', type=int, default=10_000)
  p.add_argument('--fid_points', choices=('all', 'last'), default='all',
                 help='stage-2 milestones that get a real FID (proxy FD: all of them)')
  p.add_argument('--fid_noise_scales', default='1,0',
                 help='stage-2 noise scales that get a real FID; the first at once, the others '
                      'after every recipe has trained (so that a short session scores each '
                      'recipe at the reference scale first)')
  p.add_argument('--fid_sets', default='stage1,gmm,recon',
                 help='fixed reference sets that get a real FID (proxy FD: all of them)')
  p.add_argument('--inception_compute_dtype', default='bfloat16',
                 choices=('float32', 'bfloat16'))
  p.add_argument('--skip_floor', action='store_true', help='no train-vs-test FID point')
  p.add_argument('--floor_from', default='',
                 help='a benchmarks/fid_floor.py JSON of the same protocol and subsets: the '
                      'floor point takes its FID from there instead of scoring 10k training '
                      'images again (its proxy FD is computed)')
  p.add_argument('--no_fid', action='store_true', help='proxy FD only (no Inception weights)')
  p.add_argument('--override', action='append', default=[],
                 help="'key=value' config override for every run (repeatable; tests shrink "
                      'the model with it); values are parsed as JSON, else kept as text')
  p.add_argument('--out', required=True)
  p.add_argument('--plot', action='store_true', help='only draw the plot from --out')
  p.add_argument('--table', action='store_true',
                 help="only print the README's markdown table of the points in --out")
  args = p.parse_args(argv)
  args.schedule = parse_schedule(args.schedule)
  args.fid_noise_scales = tuple(float(s) for s in args.fid_noise_scales.split(',') if s)
  args.overrides = dict(parse_override(o) for o in args.override)
  args.fid_sets = tuple(name for name in args.fid_sets.split(',') if name)
  unknown = set(args.fid_sets) - {'stage1', 'gmm', 'recon'}
  if unknown:
    raise SystemExit(f'--fid_sets: unknown {sorted(unknown)}; known: stage1, gmm, recon.')
  return args


def parse_override(text: str):
  key, sep, value = text.partition('=')
  if not sep or not key:
    raise SystemExit(f'--override {text!r}: expected key=value.')
  try:
    return key, json.loads(value)
  except ValueError:
    return key, value


def parse_schedule(text: str):
  """'reference:10,25 high_lr:10' -> {'reference': (10, 25), 'high_lr': (10,)}."""
  schedule = {}
  for item in text.split():
    name, _, epochs = item.partition(':')
    if name not in RECIPES:
      raise SystemExit(f'Unknown stage-2 recipe {name!r}; known: {", ".join(RECIPES)}.')
    milestones = tuple(int(e) for e in epochs.split(',') if e)
    if not milestones or list(milestones) != sorted(set(milestones)) or milestones[0] <= 0:
      raise SystemExit(f'{item!r}: give increasing positive stage-2 epochs, e.g. {name}:10,25.')
    schedule[name] = milestones
  if not schedule:
    raise SystemExit('--schedule names no recipe.')
  return schedule


# ------------------------------------------------------------------------------ config


def config_path(args):
  return args.config or os.path.join('configs', f'{args.dataset}.py')


def stage1_overrides(args):
  """What every run of the study sets (--override first, then the study's own keys)."""
  return dict(args.overrides, **{
      'data.manual_dir': os.path.abspath(args.manual_dir) if args.manual_dir else '',
      'data.data_dir': os.path.join(args.root, 'tfds'),
      'stage1.num_epochs': args.stage1_epochs,
      'stage2.enabled': False,
      'eval.enabled': False})


def base_config(args):
  """The stage-1 workdir's config (what `stage1_command` runs), plus the FID settings."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from tsvae import config_lib  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('study_config',
                                                os.path.join(REPO_ROOT, config_path(args)))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  overrides = dict(stage1_overrides(args), **{
      'eval.cache_dir': args.cache_dir,
      'eval.inception_compute_dtype': args.inception_compute_dtype})
  for key, value in overrides.items():
    config_lib.set_dotted(config, key, value)
  return config


def stage1_command(args):
  return ([sys.executable, '-m', 'tsvae.main', f'--config={config_path(args)}',
           f'--workdir={stage1_workdir(args)}'] +
          [f'--config.{k}={v}' for k, v in stage1_overrides(args).items()])


def stage1_workdir(args):
  return os.path.join(args.root, f'{args.dataset}_s1')


# ------------------------------------------------------------------------------ records


def _record_base(args, config):
  import step_throughput  # pylint: disable=g-import-not-at-top  (git_commit, machine_info)
  return {'benchmark': 'stage2_study', 'dataset': args.dataset,
          'commit': step_throughput.git_commit(), 'machine': step_throughput.machine_info(),
          'stage1_epochs': args.stage1_epochs, 'num_samples': args.num_samples,
          'config_file': args.config or f'configs/{args.dataset}.py',
          'fid_protocol': {'fid_preprocess': config.eval.fid_preprocess,
                           'inception_compute_dtype': config.eval.inception_compute_dtype,
                           'real': f'{args.num_samples} random test images (seed '
                                   f'{config.eval.seed})'},
          'created': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


def _write(args, name, record):
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f'{name}.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  print(f'wrote {path}: ' + ', '.join(
      f'{k}={record[k]:.3f}' for k in ('fid', 'proxy_fd', 'gamma_z', 'mmd_u')
      if isinstance(record.get(k), float)), flush=True)


def _exists(args, name):
  return os.path.exists(os.path.join(args.out, f'{name}.json'))


def _read(args, name):
  path = os.path.join(args.out, f'{name}.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _needs_fid(args, name, wanted: bool) -> bool:
  record = _read(args, name)
  return wanted and not args.no_fid and (record is None or record.get('fid') is None)


class FidQueue:
  """FIDs to compute after all training, most telling first (see the module doc)."""

  def __init__(self):
    self.items = []  # (priority, name, images, record)

  def add(self, priority, name, images, record):
    self.items.append((priority, name, images, record))

  def run(self, args, scorer):
    from tsvae.evaluators import inputs as eval_inputs  # pylint: disable=g-import-not-at-top
    for _, name, images, record in sorted(self.items, key=lambda item: item[0]):
      record['fid'], record['fid_seconds'] = scorer.fid(eval_inputs.min_max_stretch(images))
      _write(args, name, record)
      plot(args.out)
    self.items = []


def training_seconds(rows):
  """Training time from the logged windows: Σ steps / (steps/s), compilation excluded."""
  total, previous = 0.0, 0
  for row in rows:
    if row.get('steps_per_sec'):
      total += (row['step'] - previous) / row['steps_per_sec']
    previous = row['step']
  return total


# ------------------------------------------------------------------------------ scoring


class Scorer:
  """FID (one Inception extractor, the test statistics cached) and the proxy FD of image sets."""

  def __init__(self, args, config, experiment):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from tsvae.evaluators import inputs as eval_inputs  # pylint: disable=g-import-not-at-top
    from tsvae.metrics import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
    from tsvae.metrics import fid as fid_lib  # pylint: disable=g-import-not-at-top
    from tsvae.metrics import frechet  # pylint: disable=g-import-not-at-top
    from tsvae.metrics import inception  # pylint: disable=g-import-not-at-top
    from tsvae.metrics import inception_weights  # pylint: disable=g-import-not-at-top
    e = config.eval
    self.frechet = frechet
    self.cache_dir = e.cache_dir or eval_inputs.default_cache_dir()
    n, seed, batch = args.num_samples, int(e.seed), int(e.batch_size)
    self.test_uint8 = eval_inputs.real_images(experiment.builder, config.dataset, 'test', n, seed,
                                              batch)
    self.train_uint8 = eval_inputs.real_images(experiment.builder, config.dataset, 'train', n,
                                               seed, batch)
    self.fid_lib = fid_lib
    self.real = fid_lib.RealSet(self.test_uint8, config.dataset, 'test', seed)
    self.extractor = None
    if not args.no_fid:
      weights, reason = inception_weights.find(e.inception_weights, self.cache_dir,
                                               allow_download=bool(e.allow_download))
      if weights is None:
        raise SystemExit(f'No FID weights: {reason} (--no_fid: proxy FD only)')
      self.weights = weights
      self.extractor = inception.FeatureExtractor(
          inception_weights.load_variables(weights), int(e.inception_batch_size),
          preprocessing=e.fid_preprocess, compute_dtype=e.inception_compute_dtype)
      start = time.time()
      self.reference = fid_lib.real_stats(self.cache_dir, self.real, self.extractor,
                                          weights.sha256, True)
      print(f'FID statistics of the test images: {time.time() - start:.0f} s', flush=True)
    builder = experiment.builder
    labeled = classifier_lib.load_labeled(builder, 'test', config.dataset)
    self.classifier = classifier_lib.get_classifier(
        builder, config.dataset, cache_dir=self.cache_dir, seed=int(e.classifier_seed),
        epochs=int(e.classifier_epochs), batch_size=batch, test_data=labeled)
    self.proxy_reference = frechet.gaussian_stats(self.classifier.features(self.test_uint8))
    self.np = np

  def proxy_fd(self, images):
    return float(self.frechet.frechet_distance_from_stats(
        self.frechet.gaussian_stats(self.classifier.features(images)), self.proxy_reference))

  def fid(self, images):
    start = time.time()
    stats = self.frechet.gaussian_stats(self.extractor(images))
    return (float(self.frechet.frechet_distance_from_stats(stats, self.reference)),
            time.time() - start)

  def fid_floor(self):
    start = time.time()
    floor = self.fid_lib.RealSet(self.train_uint8, self.real.dataset, 'train', self.real.seed)
    stats = self.fid_lib.real_stats(self.cache_dir, floor, self.extractor, self.weights.sha256,
                                    True)
    return (float(self.frechet.frechet_distance_from_stats(stats, self.reference)),
            time.time() - start)


def score_point(args, scorer, base, name, images, extra, queue, priority, with_fid):
  """Writes the point with its proxy FD (and an FID it already has); queues a wanted FID."""
  from tsvae.evaluators import inputs as eval_inputs  # pylint: disable=g-import-not-at-top
  old = _read(args, name) or {}
  record = dict(base, **extra, point=name,
                proxy_fd=scorer.proxy_fd(eval_inputs.min_max_stretch(images)),
                fid=old.get('fid'), fid_seconds=old.get('fid_seconds'))
  _write(args, name, record)
  if _needs_fid(args, name, with_fid):
    queue.add(priority, name, images, record)


# ------------------------------------------------------------------------------ phases


def run_stage1(args, xla_flags):
  """Trains stage 1 in a subprocess under the caller's own XLA_FLAGS (one host device here:
  the study's two-device setting for Inception makes the batch-64 step ~1.4x slower)."""
  from tsvae import checkpointing  # pylint: disable=g-import-not-at-top
  workdir = stage1_workdir(args)
  if not checkpointing.is_complete(workdir, 'stage1'):
    env = dict(os.environ)
    env.pop('XLA_FLAGS', None)
    if xla_flags is not None:
      env['XLA_FLAGS'] = xla_flags
    print('+', ' '.join(stage1_command(args)), flush=True)
    subprocess.run(stage1_command(args), cwd=REPO_ROOT, check=True, env=env)


def references(args, config, experiment, state1, codes, scorer, base, queue):
  """Stage-1 prior samples, ex-post GMM samples and reconstructions (the fixed references)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from tsvae import generation  # pylint: disable=g-import-not-at-top
  from tsvae import metric_logging  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import diagnostics  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import expost_gmm  # pylint: disable=g-import-not-at-top
  v1 = generation.variables_of(state1)
  n, batch = args.num_samples, int(config.eval.batch_size)
  rng = experiment.rng(experiment_lib.Stream.STUDY_REFERENCES)
  r1, rr = jax.random.split(rng)
  rows = metric_logging.read_stage_rows(stage1_workdir(args), 'stage1')
  info = {'stage1_step': int(state1.step), 'stage1_train_seconds': training_seconds(rows),
          'stage1_final_loss': rows[-1]['loss'] if rows else None}
  grids = {}
  mu, sigma = codes

  def wanted(name):
    return not _exists(args, name) or _needs_fid(args, name, name in args.fid_sets)

  if wanted('stage1'):
    active = diagnostics.active_dims(sigma, float(config.eval.active_dim_threshold))
    extra = dict(info, loggamma_x=generation.loggamma(experiment.model1, v1),
                 active_dims=int(active['count']))
    images = generation.generate_stage1(experiment.model1, v1, r1, n,
                                      latent_dim=config.latent_dim, batch_size=batch)
    grids['stage1'] = images[:100]
    score_point(args, scorer, base, 'stage1', images, extra, queue, (0,),
                'stage1' in args.fid_sets)
  if wanted('gmm'):
    start = time.time()
    gmm = expost_gmm.fit(mu, int(config.eval.expost_gmm_components), seed=int(config.eval.seed))
    fit_s = time.time() - start
    images = expost_gmm.generate(lambda z: np.asarray(generation.decode(experiment.model1, v1, z)),
                                 gmm, n, int(config.eval.seed), batch_size=min(batch, n))
    grids['gmm'] = images[:100]
    score_point(args, scorer, base, 'gmm', images,
                dict(info, gmm=gmm.summary(), gmm_fit_seconds=fit_s), queue, (2,),
                'gmm' in args.fid_sets)
  if wanted('recon'):
    test_float = scorer.test_uint8.astype(np.float32) / 255.0
    images = generation.reconstruct(experiment.model1, v1, test_float, rr, batch_size=batch)
    score_point(args, scorer, base, 'recon', images, info, queue, (4,),
                'recon' in args.fid_sets)
  return grids


def committed_floor(args, config):
  """The floor FID of --floor_from, checked against this study's protocol (None without it)."""
  if not args.floor_from:
    return None
  try:
    with open(args.floor_from) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise SystemExit(f'--floor_from {args.floor_from}: cannot read it ({e}).') from e
  protocol = f'{config.eval.fid_preprocess}:{config.eval.inception_compute_dtype}'
  wanted = {'benchmark': 'fid_floor', 'dataset': args.dataset, 'num': args.num_samples,
            'subset_seed': int(config.eval.seed)}
  found = {key: record.get(key) for key in wanted}
  if found != wanted or protocol not in record.get('runs', {}):
    raise SystemExit(f'--floor_from {args.floor_from}: it holds {found} with runs '
                     f'{sorted(record.get("runs", {}))}; this study needs {wanted} and a '
                     f'{protocol!r} run.')
  return {'fid': float(record['runs'][protocol]['fid_train_vs_test']), 'fid_seconds': None,
          'fid_source': {'file': os.path.relpath(args.floor_from, REPO_ROOT),
                         'commit': record.get('commit'), 'protocol': protocol}}


def floor(args, scorer, base, committed):
  """Real training images against the test images: the floor any generator is judged by."""
  if args.skip_floor or _exists(args, 'train') or (args.no_fid and committed is None):
    return
  record = dict(base, point='train', proxy_fd=scorer.proxy_fd(scorer.train_uint8))
  if committed is not None:
    record.update(committed)
  else:
    record['fid'], record['fid_seconds'] = scorer.fid_floor()
  _write(args, 'train', record)


def stage2_recipe(args, config, state1, experiment1, codes, scorer, base, recipe, milestones,
                  queue):
  """Trains stage 2 of `recipe` to each milestone, scores it there and queues its FIDs."""
  from tsvae import workdir_lock  # pylint: disable=g-import-not-at-top
  with workdir_lock.hold(os.path.join(args.root, f'{args.dataset}_s2_{recipe}'),
                         'benchmarks/stage2_study.py'):
    return _stage2_recipe_locked(args, config, state1, experiment1, codes, scorer, base, recipe,
                                 milestones, queue)


def milestone_variables(workdir, step, state):
  """Stage-2 variables at `step`: `state`'s (snapshotted to <workdir>/milestones, as the
  checkpoints keep only the latest) when it is at `step`, else the snapshot's; None without one.
  """
  import flax.serialization  # pylint: disable=g-import-not-at-top
  from tsvae import fileio  # pylint: disable=g-import-not-at-top
  from tsvae import generation  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'milestones', f'stage2_step{step}.msgpack')
  variables = generation.variables_of(state)
  if int(state.step) == step:
    if not fileio.exists(path):
      fileio.atomic_write_bytes(path, flax.serialization.to_bytes(variables))
    return variables
  if not fileio.exists(path):
    return None
  return flax.serialization.from_bytes(variables, fileio.read_bytes(path))


def _fid_priority(args, recipe, epochs, scale, last):
  """Queue order: the first recipe's last milestone at the first scale right after stage 1;
  the earlier milestones at the first scale before any at the other scales."""
  order = list(args.schedule).index(recipe)
  first_scale = scale == args.fid_noise_scales[0]
  if last and first_scale:
    return (1, 0) if order == 0 else (3, order)
  if last:
    return (5, order, args.fid_noise_scales.index(scale))
  return (6, args.fid_noise_scales.index(scale), order, epochs)


def _stage2_recipe_locked(args, config, state1, experiment1, codes, scorer, base, recipe,
                          milestones, queue):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import config_lib  # pylint: disable=g-import-not-at-top
  from tsvae import generation  # pylint: disable=g-import-not-at-top
  from tsvae import latents  # pylint: disable=g-import-not-at-top
  from tsvae import metric_logging  # pylint: disable=g-import-not-at-top
  from tsvae import train  # pylint: disable=g-import-not-at-top
  from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from tsvae import stages  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import diagnostics  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  overrides = dict(RECIPES[recipe], **{'stage2.enabled': True,
                                       'stage2.num_epochs': milestones[-1]})
  for key, value in overrides.items():
    config_lib.set_dotted(config, key, value)
  workdir = os.path.join(args.root, f'{args.dataset}_s2_{recipe}')
  experiment = experiment_lib.setup(config, workdir, devices=jax.devices()[:1])
  config_lib.record_config(config, workdir)
  if not latents.exist(experiment.workdir):
    shutil.copytree(latents.latents_dir(experiment1.workdir),
                    latents.latents_dir(experiment.workdir))
  spec = stages.stage2_spec(experiment)
  v1 = generation.variables_of(state1)
  n, batch = args.num_samples, int(config.eval.batch_size)
  rng = experiment.rng(experiment_lib.Stream.STUDY_STAGE2)
  r2, rz, ru = jax.random.split(rng, 3)
  mu, sigma = codes
  pick = np.sort(np.random.default_rng(0).choice(len(mu), min(n, len(mu)), replace=False))
  z = (mu[pick] + sigma[pick] * np.asarray(jax.random.normal(rz, mu[pick].shape))).astype(
      np.float32)
  grids = {}
  for m in milestones:
    names = {s: f'stage2_{recipe}_e{m}_noise{s:g}' for s in (1.0, 0.0)}
    fid_here = {s: (args.fid_points == 'all' or m == milestones[-1])
                and s in args.fid_noise_scales for s in names}
    if all(_exists(args, name) and not _needs_fid(args, name, fid_here[s])
           for s, name in names.items()):
      continue
    target = m * spec.steps_per_epoch
    state2 = train.train_stage(spec, target_steps=target, **stages.train_kwargs(experiment))
    v2 = milestone_variables(workdir, target, state2)
    if v2 is None:
      print(f'{recipe} e{m}: skipped. Its workdir {workdir} has trained past step {target} '
            f'(to {int(state2.step)}) and holds no snapshot of it (studies before the snapshots '
            'kept none); move the workdir aside to train it again (bitwise the same).',
            flush=True)
      continue
    rows = [r for r in metric_logging.read_stage_rows(workdir, 'stage2') if r['step'] <= target]
    last = [r for r in rows if r['step'] == target]
    mu_u, sigma_u = latents.encode(experiment.model2, v2, z, batch)
    u = (mu_u + sigma_u * np.asarray(jax.random.normal(ru, mu_u.shape))).astype(np.float32)
    info = {'recipe': recipe, 'recipe_overrides': RECIPES[recipe], 'stage2_epochs': m,
            'stage2_step': target,
            'stage2_batch_size': config_lib.stage2_batch_size(config),
            'stage2_train_seconds': training_seconds(rows),
            'loggamma_z': generation.loggamma(experiment.model2, v2),
            'mmd_u': diagnostics.mmd_to_standard_normal(u, seed=1),
            'loss': last[-1]['loss'] if last else None,
            'kl': last[-1].get('kl') if last else None}
    info['gamma_z'] = float(np.exp(info['loggamma_z']))
    for scale, name in names.items():
      images = generation.generate_stage2(experiment.model1, v1, experiment.model2, v2, r2, n,
                                        batch_size=batch, noise_scale=scale)
      grids[name] = images[:100]
      priority = _fid_priority(args, recipe, m, scale, m == milestones[-1])
      score_point(args, scorer, base, name, images, dict(info, noise_scale=scale), queue,
                  priority, fid_here[scale])
  return grids


# ------------------------------------------------------------------------------ plot


def load_points(out):
  points = []
  for path in sorted(glob.glob(os.path.join(out, '*.json'))):
    with open(path) as f:
      record = json.load(f)
    if record.get('benchmark') == 'stage2_study':
      points.append(record)
  return points


def _color(recipe):
  """One colour per recipe in every panel (stage 1 / GMM / reconstructions use named ones)."""
  return ('tab:blue', 'tab:orange', 'tab:purple')[list(RECIPES).index(recipe) % 3]


def _plain_log_axes(ax, ticker):
  """Log scales labelled 20, 25, 50, 100 (or 0.2, 0.5) rather than 2x10^1."""
  ax.set_xscale('log')
  ax.set_yscale('log')
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
    axis.set_minor_locator(ticker.LogLocator(subs=(2.0, 2.5, 5.0)))
    axis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))


def plot(out):
  """FID (proxy FD where no FID) against stage-2 epochs and wall time; γ_z against epochs."""
  from tsvae.metrics import diagnostics  # pylint: disable=g-import-not-at-top
  plt = diagnostics._pyplot()  # pylint: disable=protected-access
  points = load_points(out)
  fixed = {p['point']: p for p in points if 'recipe' not in p}
  series = [p for p in points if 'recipe' in p]
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  dataset = next((p['dataset'] for p in points if 'dataset' in p), '')
  num = next((p['num_samples'] for p in points if 'num_samples' in p), 0)
  fig, axes = plt.subplots(1, 4, figsize=(22, 5))
  fid_label = f'FID (tf_graph, {num:,} vs {num:,})' if num else 'FID (tf_graph)'
  for ax, metric, label in ((axes[0], 'fid', fid_label),
                            (axes[1], 'proxy_fd', f'proxy FD ({dataset} classifier)')):
    for recipe in sorted({p['recipe'] for p in series}):
      for scale, style in ((1.0, '-o'), (0.0, '--s')):
        pts = sorted((p['stage2_epochs'], p[metric]) for p in series
                     if p['recipe'] == recipe and p['noise_scale'] == scale
                     and p.get(metric) is not None)
        if pts:
          ax.plot(*zip(*pts), style, color=_color(recipe),
                  label=f'stage 2, {recipe}, noise {scale:g}')
    for name, color in (('stage1', 'red'), ('gmm', 'green'), ('recon', 'gray'),
                        ('train', 'black')):
      if name in fixed and fixed[name].get(metric) is not None:
        ax.axhline(fixed[name][metric], color=color, ls=':',
                   label={'stage1': 'stage 1 (single-stage VAE)', 'gmm': 'ex-post GMM on μ_z',
                          'recon': 'reconstructions', 'train': 'train vs test (floor)'}[name])
    _plain_log_axes(ax, ticker)
    ax.set_xlabel('stage-2 epochs')
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  ax = axes[2]  # What each recipe buys per minute of stage-2 training.
  twin = ax.twinx()
  for recipe in sorted({p['recipe'] for p in series}):
    color = _color(recipe)
    at_one = [p for p in series if p['recipe'] == recipe and p['noise_scale'] == 1.0]
    fids = sorted((p['stage2_train_seconds'] / 60, p['fid']) for p in at_one
                  if p.get('fid') is not None)
    if fids:
      ax.plot(*zip(*fids), '-o', color=color, label=f'{recipe}: FID')
    proxies = sorted((p['stage2_train_seconds'] / 60, p['proxy_fd']) for p in at_one)
    if proxies:
      twin.plot(*zip(*proxies), ':x', color=color, label=f'{recipe}: proxy FD')
  ax.set_xlabel('stage-2 training time (min, this CPU)')
  ax.set_ylabel('FID, noise 1 (solid)')
  twin.set_ylabel('proxy FD, noise 1 (dotted)')
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc='upper right')
  twin.legend(fontsize=7, loc='center right')
  ax = axes[3]
  for recipe in sorted({p['recipe'] for p in series}):
    pts = sorted({(p['stage2_epochs'], p['gamma_z']) for p in series if p['recipe'] == recipe})
    if pts:
      ax.plot(*zip(*pts), '-o', color=_color(recipe), label=recipe)
  _plain_log_axes(ax, ticker)
  ax.set_xlabel('stage-2 epochs')
  ax.set_ylabel('γ_z')
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(out, 'stage2_study.png')
  os.makedirs(out, exist_ok=True)
  fig.savefig(path, dpi=90)
  print(f'wrote {path}')
  return path


def _fmt(value, spec='.1f'):
  return '–' if value is None else format(value, spec)


def table(out) -> str:
  """The README's table: one row per scored set, fixed references first."""
  points = load_points(out)
  lines = ['| samples | stage-2 epochs | stage-2 training (min) | FID | proxy FD | γ_z | mmd_u |',
           '|---|---|---|---|---|---|---|']
  labels = {'stage1': 'stage 1 prior (single-stage VAE, learned γ)',
            'gmm': 'ex-post GMM on μ_z (10 components)', 'recon': 'reconstructions',
            'train': 'real training images (floor)'}
  for name, label in labels.items():
    for p in points:
      if p['point'] == name:
        lines.append(f'| {label} | | | {_fmt(p.get("fid"))} | {_fmt(p["proxy_fd"])} | | |')
  series = sorted((p for p in points if 'recipe' in p),
                  key=lambda p: (list(RECIPES).index(p['recipe']), p['stage2_epochs'],
                                 -p['noise_scale']))
  for p in series:
    lines.append(
        f'| stage 2, {p["recipe"]}, noise {p["noise_scale"]:g} | {p["stage2_epochs"]} | '
        f'{p["stage2_train_seconds"] / 60:.1f} | {_fmt(p.get("fid"))} | {_fmt(p["proxy_fd"])} | '
        f'{p["gamma_z"]:.3f} | {_fmt(p["mmd_u"], ".1e")} |')
  return '\n'.join(lines)


def save_grids(out, grids):
  """One picture: 10x10 grids of the first 100 images of each set, side by side."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import images as images_lib  # pylint: disable=g-import-not-at-top
  for name, imgs in grids.items():
    images_lib.save_grid(os.path.join(out, 'grids', f'{name}.png'), np.asarray(imgs), 10)


# ------------------------------------------------------------------------------ main


def main(argv=None):
  args = parse_args(argv)
  if args.plot or args.table:
    if args.plot:
      plot(args.out)
    if args.table:
      print(table(args.out))
    return
  # Inception features shard over two host devices (~1.26x here); training uses the first.
  user_xla_flags = os.environ.get('XLA_FLAGS')
  os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)  # tsvae's progress lines (training, FID) on stderr.
  committed = committed_floor(args, base_config(args))  # A bad file fails before any work.
  run_stage1(args, user_xla_flags)
  import jax  # pylint: disable=g-import-not-at-top
  from tsvae import generation  # pylint: disable=g-import-not-at-top
  from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from tsvae import latents  # pylint: disable=g-import-not-at-top
  from tsvae import stages  # pylint: disable=g-import-not-at-top
  from tsvae import workdir_lock  # pylint: disable=g-import-not-at-top
  config = base_config(args)
  config.stage2.enabled = False
  workdir = stage1_workdir(args)
  with workdir_lock.hold(workdir, 'benchmarks/stage2_study.py'):
    experiment = experiment_lib.setup(config, workdir, devices=jax.devices()[:1])
    state1 = stages.restore_final(experiment, 'stage1')
    latents.extract(experiment, generation.variables_of(state1))
    base = dict(_record_base(args, config), stage1_command=' '.join(stage1_command(args)[1:]))
    scorer = Scorer(args, config, experiment)
    # (μ_z, σ_z) of the training set.
    codes = latents.encode_split(experiment, generation.variables_of(state1), 'train')
    queue = FidQueue()
    grids = references(args, config, experiment, state1, codes, scorer, base, queue)
    save_grids(args.out, grids)
    for recipe, milestones in args.schedule.items():
      grids = stage2_recipe(args, config, state1, experiment, codes, scorer, base, recipe,
                            milestones, queue)
      save_grids(args.out, grids)
      plot(args.out)
    if committed is not None:  # On record: only its proxy FD to compute, before the FIDs.
      floor(args, scorer, base, committed)
    queue.run(args, scorer)
    floor(args, scorer, base, committed)
  plot(args.out)


if __name__ == '__main__':
  main()
