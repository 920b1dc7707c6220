"""The evaluators' inputs: codes, the ex-post GMM, real images and the generated sample sets.

Protocol (the paper's, see docs/evaluation.md): `eval.num_samples` generated images per set vs
as many random test images (seeded by eval.seed); each generated image min-max stretched to
[0, 1] unless eval.min_max_stretch=False.
"""

import os
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import numpy as np

from tsvae import experiment
from tsvae import generation
from tsvae import input_pipeline
from tsvae import latents
from tsvae import train
from tsvae.evaluators import common
from tsvae.metrics import expost_gmm


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


def real_images(builder, dataset: str, split: str, num: int, seed: int,
                batch_size: int) -> np.ndarray:
  """`num` random uint8 images of `split` (a seeded subset, in split order)."""
  ds = input_pipeline.make_eval_dataset(builder, split, dataset, batch_size, as_uint8=True,
                                        num_examples=num, seed=seed)
  return np.concatenate([b['image'] for b in input_pipeline.as_numpy(ds)])


def stage2_unavailable_reason(config, state2) -> Optional[str]:
  """Why there is no stage 2 to evaluate (None when there is one)."""
  if not config.stage2.get('enabled', True):
    return ('stage 2 is disabled (config.stage2.enabled=False): a single-stage run has no '
            'stage-2 model')
  if state2 is None:
    return 'no stage-2 state was given to the evaluation (stage 2 absent)'
  return None


def fit_gmm(eval_config, mu: np.ndarray, seed: int):
  """(the fitted ex-post GMM or None, why not)."""
  components = int(eval_config.get('expost_gmm_components', expost_gmm.DEFAULT_COMPONENTS))
  if components <= 0:
    return None, 'eval.expost_gmm_components=0: the ex-post GMM is off'
  try:
    return expost_gmm.fit(mu, components, seed=seed), None
  except ValueError as err:
    logging.warning('Ex-post GMM not fitted: %s', err)
    return None, f'the ex-post GMM could not be fitted: {err}'


def _num_samples(config, builder) -> int:
  """config.eval.num_samples, capped by the test split (DataError below 2)."""
  num_test = input_pipeline.num_examples(builder, 'test')
  requested = int(config.eval.num_samples)
  n = min(requested, num_test)
  if n < requested:
    logging.warning('eval.num_samples=%d but %s has %d test images; using %d.', requested,
                    config.dataset, num_test, n)
  if n < 2:
    raise input_pipeline.DataError(f'Evaluation needs at least 2 test images, got {n}.')
  return n


def _sample_sets(setup: experiment.Setup, v1, v2, gmm, test_float: np.ndarray,
                 rngs) -> Dict[str, np.ndarray]:
  """The generated sets that exist (float images in [0, 1], not yet stretched)."""
  c, e = setup.config, setup.config.eval
  n, batch, r2, r1, rr = len(test_float), int(e.batch_size), *rngs
  sets = {}
  if v2 is not None:
    sets['stage2'] = generation.generate_stage2(
        setup.model1, v1, setup.model2, v2, r2, n, batch_size=batch,
        pixel_noise=c.sampling.pixel_noise, noise_scale=c.sampling.stage2_noise_scale)
  sets['stage1'] = generation.generate_stage1(setup.model1, v1, r1, n, latent_dim=c.latent_dim,
                                              batch_size=batch,
                                              pixel_noise=c.sampling.pixel_noise)
  sets['recon'] = generation.reconstruct(setup.model1, v1, test_float, rr, batch_size=batch)
  if gmm is not None:
    noise_std = (float(np.exp(generation.loggamma(setup.model1, v1)))
                 if c.sampling.pixel_noise else None)
    sets['gmm'] = expost_gmm.generate(
        lambda z: np.asarray(generation.decode(setup.model1, v1, z)), gmm, n,
        int(e.get('seed', 0)),
        batch_size=min(batch, n), pixel_noise_std=noise_std)
  return sets


def gather(setup: experiment.Setup, state1, state2=None) -> Tuple[common.EvalInputs,
                                                                  Dict[str, Any]]:
  """(the evaluators' inputs, timings in seconds of encoding, GMM fit and generation).

  `state2` None (or config.stage2.enabled=False): a single-stage run, no stage-2 set.
  """
  c, e = setup.config, setup.config.eval
  seed, batch, timings = int(e.get('seed', 0)), int(e.batch_size), {}
  stage2_reason = stage2_unavailable_reason(c, state2)
  state2 = None if stage2_reason is not None else state2
  v1 = generation.variables_of(state1)
  v2 = None if state2 is None else generation.variables_of(state2)
  start = time.time()
  mu, sigma = latents.encode_split(setup, v1, 'train')
  timings['encode_train'], start = time.time() - start, time.time()
  gmm, gmm_reason = fit_gmm(e, mu, seed)
  timings['gmm_fit'], start = time.time() - start, time.time()
  n = _num_samples(c, setup.builder)
  test_uint8 = real_images(setup.builder, c.dataset, 'test', n, seed, batch)
  rng = jax.random.fold_in(setup.rng(experiment.Stream.EVALUATION), seed)
  r2, r1, rr, rz, ru = jax.random.split(rng, 5)
  generated = _sample_sets(setup, v1, v2, gmm, test_uint8.astype(np.float32) / 255.0,
                           (r2, r1, rr))
  gmm_grid = generated['gmm'][:int(c.sampling.num_grid_images)] if gmm is not None else None
  if e.min_max_stretch:
    generated = {k: min_max_stretch(v) for k, v in generated.items()}
  timings['generate'] = time.time() - start
  missing = {k: v for k, v in (('stage2', stage2_reason), ('gmm', gmm_reason)) if v}
  num_train = min(n, input_pipeline.num_examples(setup.builder, 'train'))
  inputs = common.EvalInputs(
      config=c, model1=setup.model1, variables1=v1, model2=setup.model2, variables2=v2,
      stage2_reason=stage2_reason, mu=mu, sigma=sigma, test_uint8=test_uint8,
      train_uint8=real_images(setup.builder, c.dataset, 'train', num_train, seed, batch),
      generated=generated, missing=missing, gmm=gmm, gmm_grid=gmm_grid,
      num_requested=int(e.num_samples), stage1_step=int(train.host_local(state1.step)),
      stage2_step=None if state2 is None else int(train.host_local(state2.step)),
      builder=setup.builder, rng_codes=rz, rng_u=ru,
      cache_dir=e.get('cache_dir', '') or default_cache_dir(),
      write=jax.process_index() == 0)
  return inputs, timings
