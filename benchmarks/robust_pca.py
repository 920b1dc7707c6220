r"""Robust-PCA view of the stage-1 VAE: train it on MNIST with outlier pixels, measure how well
its reconstructions recover the *clean* images, against PCA with κ components.

  python benchmarks/robust_pca.py --manual_dir=../shared/data/mnist --epochs=10 \
      --outlier_fraction=0.2 --workdir=/tmp/tsvae_robust_pca \
      --out=benchmarks/results/robust_pca_mnist.json

Dai & Wipf read the learned-γ VAE as a nonlinear robust PCA: with γ learned, the decoder fits
the low-dimensional structure of the data and treats what does not fit it (sparse outliers) as
noise instead of reconstructing it. This script tests that reading:

* Outlier model (tsvae.input_pipeline.corrupt_images, config.data.outlier_fraction): in every
  training image exactly round(f·784) pixels, chosen uniformly at random and fixed per image
  (seeded by its index and --outlier_seed), are replaced by Uniform[0, 1) noise.
* Stage 1 (configs/mnist.py: InfoGAN-SN, κ = 64, learned γ, the reference objective) is trained
  by the real trainer (tsvae.stages.train_or_restore) on the corrupted training split for
  --epochs epochs. Stage 2 is not trained. Rerunning on the same --workdir resumes.
* Reconstruction of an image x̃: the decoder mean at the encoder mean, x̂ = D(μ_z(x̃)).
* Baselines: PCA with κ components fitted on the corrupted training images (x̂ = projection,
  also reported clipped to [0, 1]); the corrupted input itself (do nothing); and, as a
  reference only, PCA fitted on the clean images (what PCA could do without outliers).
* Reported for the corrupted training images (the robust-PCA setting: clean the data you
  trained on) and for held-out test images corrupted the same way with seed --outlier_seed+1:
  the MSE against the clean images over all pixels, over the outlier pixels and over the
  others, and the MSE against the corrupted input (how much of the outliers a method copies).

Writes a JSON (machine, commit, config, numbers) to --out and a PNG next to it (rows: clean /
corrupted / PCA / VAE). --quick is the tiny smoke mode the tests run.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, 'benchmarks')):
  if _path not in sys.path:
    sys.path.insert(0, _path)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position  (bookkeeping)

DEFAULT_OUT = os.path.join(REPO_ROOT, 'benchmarks', 'results', 'robust_pca_mnist.json')
OUTLIER_MODEL = ('in every image exactly round(outlier_fraction * H * W) pixel positions, drawn '
                 'uniformly without replacement and fixed per image (seeded by outlier_seed and '
                 'the image index), get Uniform[0, 1) noise; the other pixels are unchanged')
QUICK = {'stage1.max_steps': 3, 'batch_size': 16, 'log_every_steps': 1,
         'checkpoint_every_steps': 1000}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--epochs', type=int, default=10, help='stage-1 epochs')
  p.add_argument('--outlier_fraction', type=float, default=0.2,
                 help='share of each training image\'s pixels replaced by noise')
  p.add_argument('--outlier_seed', type=int, default=0)
  p.add_argument('--manual_dir', default=os.path.join(REPO_ROOT, '..', 'shared', 'data',
                                                      'mnist'),
                 help='the four MNIST IDX .gz files (tsvae.datasets)')
  p.add_argument('--data_dir', default='', help='tfds data_dir ("" = the tfds default)')
  p.add_argument('--workdir', default=os.path.join('/tmp', 'tsvae_robust_pca'),
                 help='tsvae workdir of the stage-1 run (resumed when rerun)')
  p.add_argument('--num_eval', type=int, default=-1,
                 help='training images evaluated (the first ones; -1 = all)')
  p.add_argument('--num_eval_test', type=int, default=-1, help='test images (-1 = all)')
  p.add_argument('--batch_size', type=int, default=500, help='encoding / decoding batch')
  p.add_argument('--quick', action='store_true',
                 help=f'smoke mode: {QUICK}, at most 256 images evaluated')
  p.add_argument('--note', default='', help='free text stored in the JSON')
  p.add_argument('--out', default=DEFAULT_OUT, help='JSON path; the PNG is written beside it')
  return p.parse_args(argv)


def make_config(args):
  from configs import mnist  # pylint: disable=g-import-not-at-top
  from tsvae import config_lib  # pylint: disable=g-import-not-at-top
  config = mnist.get_config()
  config.stage1.num_epochs = int(args.epochs)
  config.data.outlier_fraction = float(args.outlier_fraction)
  config.data.outlier_seed = int(args.outlier_seed)
  config.data.manual_dir = args.manual_dir
  config.data.data_dir = args.data_dir
  config.eval.enabled = False
  if 'enabled' in config.stage2:  # A single-stage run: tsvae.main on this workdir stops here.
    config.stage2.enabled = False
  if args.quick:
    for key, value in QUICK.items():
      config_lib.set_dotted(config, key, value)
  return config


# ------------------------------------------------------------------------------ measures


def mse_report(recon: np.ndarray, clean: np.ndarray, corrupted: np.ndarray) -> dict:
  """MSEs of reconstructions [N, H, W, C] vs the clean and the corrupted images."""
  recon, clean, corrupted = (np.asarray(a, np.float32) for a in (recon, clean, corrupted))
  outlier = np.broadcast_to(np.any(corrupted != clean, axis=-1, keepdims=True), clean.shape)
  sq = np.square(recon - clean)
  mean = lambda a: float(np.mean(a, dtype=np.float64))  # pylint: disable=unnecessary-lambda-assignment
  return {
      'mse_vs_clean': mean(sq),
      'mse_vs_clean_outlier_pixels': mean(sq[outlier]) if outlier.any() else None,
      'mse_vs_clean_other_pixels': mean(sq[~outlier]) if (~outlier).any() else None,
      'mse_vs_corrupted': mean(np.square(recon - corrupted)),
  }


def fit_pca(images: np.ndarray, components: int):
  """sklearn PCA with `components` components fitted on flattened images (seeded)."""
  from sklearn import decomposition  # pylint: disable=g-import-not-at-top
  return decomposition.PCA(n_components=components, random_state=0).fit(
      images.reshape(len(images), -1))


def pca_reconstruct(pca, images: np.ndarray) -> np.ndarray:
  """Images projected onto the fitted principal subspace (mean + top components)."""
  out = pca.inverse_transform(pca.transform(images.reshape(len(images), -1)))
  return out.reshape(images.shape).astype(np.float32)


def _recon_at_mean(model, variables, x):
  from tsvae.models import vae as vae_lib  # pylint: disable=g-import-not-at-top
  mu, _, _ = model.apply(variables, x, train=False, method=vae_lib.VAE.encode)
  return model.apply(variables, mu, train=False, method=vae_lib.VAE.decode)


@functools.lru_cache(maxsize=None)
def _jitted_recon():
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(_recon_at_mean, static_argnums=0)


def vae_reconstruct(model, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
  """x̂ = decoder mean at the encoder mean μ_z(x), inference mode (one compiled batch shape)."""
  import jax  # pylint: disable=g-import-not-at-top
  from tsvae import batching  # pylint: disable=g-import-not-at-top
  recon = _jitted_recon()
  return batching.map_padded(lambda x: jax.device_get(recon(model, variables, x)), images,
                                batch_size)


def _split_images(builder, split: str, num: int, batch_size: int) -> np.ndarray:
  """The first `num` (-1 = all) images of `split` in stored order, float32 in [0, 1]."""
  from tsvae import input_pipeline  # pylint: disable=g-import-not-at-top
  ds = input_pipeline.make_eval_dataset(builder, split, 'mnist', batch_size)
  images = np.concatenate([b['image'] for b in ds.as_numpy_iterator()])
  return images if num < 0 else images[:num]


def evaluate_split(model, variables, clean, corrupted, pcas, batch_size):
  """{method: mse_report} and the reconstructions of the first 10 images.

  `pcas`: {'corrupted': PCA fitted on the corrupted training images, 'clean': on the clean ones}.
  """
  methods = {
      'corrupted_input': lambda: corrupted,
      'pca': lambda: pca_reconstruct(pcas['corrupted'], corrupted),
      'pca_clipped': lambda: np.clip(pca_reconstruct(pcas['corrupted'], corrupted), 0.0, 1.0),
      'vae': lambda: vae_reconstruct(model, variables, corrupted, batch_size),
      'pca_fit_on_clean_reference': lambda: pca_reconstruct(pcas['clean'], corrupted),
  }
  report, shown = {}, {}
  for name, reconstruct in methods.items():  # One full set of reconstructions at a time.
    recon = reconstruct()
    report[name] = mse_report(recon, clean, corrupted)
    shown[name] = recon[:10]
  return report, shown


def strict_json(obj):
  """obj with non-finite floats (the config's -inf floors) as strings: strict JSON."""
  if isinstance(obj, dict):
    return {k: strict_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict_json(v) for v in obj]
  if isinstance(obj, float) and not np.isfinite(obj):
    return str(obj)
  return obj


# ------------------------------------------------------------------------------------ main


def main(argv=None) -> dict:
  args = parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from tsvae import config_lib  # pylint: disable=g-import-not-at-top
  from tsvae import fileio  # pylint: disable=g-import-not-at-top
  from tsvae import images as images_lib  # pylint: disable=g-import-not-at-top
  from tsvae import input_pipeline  # pylint: disable=g-import-not-at-top
  from tsvae import generation  # pylint: disable=g-import-not-at-top
  from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from tsvae import stages  # pylint: disable=g-import-not-at-top
  from tsvae.models import vae as vae_lib  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.INFO)
  load_before = os.getloadavg()
  timings = {}
  config = make_config(args)
  t = time.time()
  experiment = experiment_lib.setup(config, args.workdir)
  if jax.process_index() == 0:
    config_lib.record_config(config, args.workdir)
  state1 = stages.train_or_restore(experiment, stages.stage1_spec(experiment))
  timings['stage1'] = time.time() - t
  variables = generation.variables_of(state1)

  t = time.time()
  num_eval, num_test = args.num_eval, args.num_eval_test
  if args.quick:
    num_eval = 256 if num_eval < 0 else min(num_eval, 256)
    num_test = 256 if num_test < 0 else min(num_test, 256)
  train_clean = _split_images(experiment.builder, 'train', num_eval, args.batch_size)
  test_clean = _split_images(experiment.builder, 'test', num_test, args.batch_size)
  f, seed = config.data.outlier_fraction, config.data.outlier_seed
  # Exactly what stage 1 was trained on (keys = indices in the stored training split).
  train_dirty = input_pipeline.corrupt_images(train_clean, np.arange(len(train_clean)), f, seed)
  test_dirty = input_pipeline.corrupt_images(test_clean, np.arange(len(test_clean)), f,
                                             seed + 1)
  timings['data'] = time.time() - t

  t = time.time()
  pcas = {'corrupted': fit_pca(train_dirty, config.latent_dim),
          'clean': fit_pca(train_clean, config.latent_dim)}
  timings['pca_fit'] = time.time() - t
  t = time.time()
  results, shown = {}, {}
  for name, clean, dirty in (('train', train_clean, train_dirty),
                             ('test', test_clean, test_dirty)):
    results[name], shown[name] = evaluate_split(experiment.model1, variables, clean, dirty,
                                                pcas, args.batch_size)
    results[name]['num_images'] = len(clean)
  timings['evaluate'] = time.time() - t

  out = os.path.abspath(args.out)
  png = os.path.splitext(out)[0] + '.png'
  rows = [train_clean[:10], train_dirty[:10], shown['train']['pca_clipped'],
          shown['train']['vae']]
  images_lib.save_grid(png, np.concatenate(rows), num_cols=len(rows[0]))

  record = {
      'benchmark': 'tsvae.robust_pca',
      'dataset': 'mnist',
      'outlier_model': OUTLIER_MODEL,
      'reconstruction': {
          'vae': 'stage-1 decoder mean at the encoder mean mu_z(corrupted image)',
          'pca': (f'projection onto the top {config.latent_dim} (= latent_dim) principal '
                  'components of the corrupted training images'),
          'pca_clipped': 'pca clipped to [0, 1]',
          'pca_fit_on_clean_reference': ('projection onto the principal components of the '
                                         'CLEAN training images (a reference PCA cannot have '
                                         'in the robust setting)'),
          'corrupted_input': 'the corrupted image itself (do nothing)',
      },
      'test_images_corrupted_with_seed': seed + 1,
      'config': {
          'epochs': args.epochs, 'outlier_fraction': f, 'outlier_seed': seed,
          'outlier_pixels_per_image': input_pipeline.outlier_pixel_count(f, 28, 28),
          'latent_dim': config.latent_dim, 'batch_size': config.batch_size,
          'arch': config.arch, 'stage1_max_steps': config.stage1.max_steps,
          'quick': bool(args.quick), 'workdir': args.workdir,
      },
      'stage1_steps_trained': int(np.asarray(jax.device_get(state1.step))),
      'loggamma_x': float(np.asarray(jax.device_get(experiment.model1.apply(
          variables, method=vae_lib.VAE.loggamma)))),
      'results': results,
      'png': os.path.basename(png),
      'png_rows': ['clean', 'corrupted', 'PCA (clipped)', 'VAE'],
      'timings_s': {k: round(v, 1) for k, v in timings.items()},
      'loadavg_before': [round(x, 2) for x in load_before],
      'loadavg_after': [round(x, 2) for x in os.getloadavg()],
      'machine': step_throughput.machine_info(),
      'versions': step_throughput.versions(),
      'git': step_throughput.git_commit(),
      'tsvae_config': config_lib.as_dict(config),
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
      'note': args.note,
  }
  record = strict_json(record)
  fileio.atomic_write_json(out, record)
  for name in ('train', 'test'):
    logging.info('%s: MSE vs clean: corrupted input %.5f, PCA %.5f (clipped %.5f), VAE %.5f',
                 name, *(results[name][m]['mse_vs_clean'] for m in (
                     'corrupted_input', 'pca', 'pca_clipped', 'vae')))
  logging.info('Wrote %s and %s', out, png)
  return record


if __name__ == '__main__':
  main()
