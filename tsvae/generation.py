"""Generation with trained stages, and every sample grid a run or `tsvae.sample` writes.

Generation (pure, jit-compiled, batched):
- Stage-2 samples (the Two-Stage VAE): u ~ N(0, I) → z = ẑ(u) + s·γ_z·ε → x = decoder-1 mean,
  with s = `noise_scale` (config.sampling.stage2_noise_scale; 1 = the reference, 0 = ẑ(u)).
- Stage-1 samples (the single-stage VAE baseline): z ~ N(0, I) → x = decoder-1 mean.
- Reconstructions: z = μ_z(x) + σ_z(x)·ε (a sampled z, as the reference) → decoder-1 mean
  (the model's ``posterior_sample``: through the flow for ``vae_flow``; z = μ for the
  deterministic models, whose σ is 0).
BatchNorm runs in inference mode throughout. With `pixel_noise=True`, x ~ N(mean, γ_x² I) is
drawn instead of the mean and clipped to [0, 1].

Grids (PNG files under <workdir>/samples/ unless another directory is given; process 0 writes):
- `write_run_grids`: stage2_samples.png, stage1_samples.png, reconstructions.png, also sent to
  TensorBoard (<workdir>/tensorboard/samples) as images;
- `write_mean_vs_ancestral`, `write_noise_scales`: tsvae.sample's comparisons.
"""

import functools
import os
from typing import Callable, Dict, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from tsvae import config_lib
from tsvae import experiment
from tsvae import faults
from tsvae import images
from tsvae import input_pipeline
from tsvae import metric_logging
from tsvae import train
from tsvae.models import vae as vae_lib

SAMPLES_DIR = 'samples'


def variables_of(state) -> Dict:
  """The flax variables dict of a TrainState (params + batch_stats), as host arrays."""
  variables = {'params': state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return jax.tree_util.tree_map(train.host_local, variables)


def loggamma(model, variables) -> float:
  """The model's log γ (its decoder's standard deviation), as a float."""
  return float(jax.device_get(model.apply(variables, method=vae_lib.VAE.loggamma)))


@functools.partial(jax.jit, static_argnames=('model',))
def decode(model, variables, z):
  """The decoder mean of codes z, inference mode."""
  return model.apply(variables, z, train=False, method=vae_lib.VAE.decode)


def _add_pixel_noise(x, loggamma, rng):
  return jnp.clip(x + jnp.exp(loggamma) * jax.random.normal(rng, x.shape, x.dtype), 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=('model1', 'model2', 'num', 'pixel_noise'))
def _stage2_batch(model1, variables1, model2, variables2, rng, num, pixel_noise, noise_scale):
  u_rng, z_rng, x_rng = jax.random.split(rng, 3)
  u = jax.random.normal(u_rng, (num, model2.decoder.latent_dim))
  z_hat = model2.apply(variables2, u, train=False, method=vae_lib.VAE.decode)
  loggamma_z = model2.apply(variables2, method=vae_lib.VAE.loggamma)
  z = z_hat + noise_scale * jnp.exp(loggamma_z) * jax.random.normal(z_rng, z_hat.shape)
  x = model1.apply(variables1, z, train=False, method=vae_lib.VAE.decode)
  if pixel_noise:
    x = _add_pixel_noise(x, model1.apply(variables1, method=vae_lib.VAE.loggamma), x_rng)
  return x


@functools.partial(jax.jit, static_argnames=('model1', 'num', 'latent_dim', 'pixel_noise'))
def _stage1_batch(model1, variables1, rng, num, latent_dim, pixel_noise):
  z_rng, x_rng = jax.random.split(rng)
  z = jax.random.normal(z_rng, (num, latent_dim))
  x = model1.apply(variables1, z, train=False, method=vae_lib.VAE.decode)
  if pixel_noise:
    x = _add_pixel_noise(x, model1.apply(variables1, method=vae_lib.VAE.loggamma), x_rng)
  return x


@functools.partial(jax.jit, static_argnames=('model1',))
def _reconstruct_batch(model1, variables1, x, rng):
  eps = jax.random.normal(rng, (x.shape[0], model1.encoder.latent_dim))
  # By name, so that a subclass's posterior (FlowVAE's) is the one applied.
  z = model1.apply(variables1, x, eps, train=False, method='posterior_sample')
  return model1.apply(variables1, z, train=False, method=vae_lib.VAE.decode)


def _in_chunks(make: Callable[[jax.Array, int], jax.Array], rng, num: int,
               batch_size: int) -> np.ndarray:
  out = []
  for i, start in enumerate(range(0, num, batch_size)):
    out.append(np.asarray(make(jax.random.fold_in(rng, i), min(batch_size, num - start))))
  return np.concatenate(out, 0)


def generate_stage2(model1, variables1, model2, variables2, rng, num: int, *,
                    batch_size: int = 500, pixel_noise: bool = False,
                    noise_scale: float = 1.0) -> np.ndarray:
  """`num` Two-Stage VAE samples, float32 [num, H, W, C] in [0, 1].

  `noise_scale` multiplies γ_z·ε (a traced value: one compilation serves every scale). The
  same `rng` gives the same u and ε at every scale.
  """
  scale = jnp.float32(noise_scale)
  return _in_chunks(lambda r, n: _stage2_batch(model1, variables1, model2, variables2, r, n,
                                               pixel_noise, scale), rng, num, batch_size)


def generate_stage1(model1, variables1, rng, num: int, *, latent_dim: int,
                    batch_size: int = 500, pixel_noise: bool = False) -> np.ndarray:
  """`num` single-stage samples from the N(0, I) prior."""
  return _in_chunks(lambda r, n: _stage1_batch(model1, variables1, r, n, latent_dim,
                                               pixel_noise), rng, num, batch_size)


def reconstruct(model1, variables1, images: np.ndarray, rng, *,
                batch_size: int = 500) -> np.ndarray:
  """Reconstructions of float images in [0, 1] through a sampled z."""
  out = []
  for i, start in enumerate(range(0, len(images), batch_size)):
    out.append(np.asarray(_reconstruct_batch(
        model1, variables1, jnp.asarray(images[start:start + batch_size]),
        jax.random.fold_in(rng, i))))
  return np.concatenate(out, 0)


# ------------------------------------------------------------------------------------ grids


def _cols(n: int) -> int:
  return int(np.ceil(np.sqrt(n)))


def _samples_path(setup: experiment.Setup, name: str, out_dir: Optional[str] = None) -> str:
  return os.path.join(out_dir or os.path.join(setup.workdir, SAMPLES_DIR), name)


def test_images(setup: experiment.Setup, num: int) -> np.ndarray:
  """The first `num` test images as floats in [0, 1]."""
  batch = next(iter(input_pipeline.as_numpy(input_pipeline.make_eval_dataset(
      setup.builder, 'test', setup.config.dataset, num))))
  return np.asarray(train.image_input(batch, None))


def run_grids(setup: experiment.Setup, state1, state2=None) -> Dict[str, np.ndarray]:
  """{name: uint8 grid} of a run: stage-2 samples (with a stage 2), stage-1 samples and
  test images interleaved with their reconstructions."""
  c = setup.config
  n = c.sampling.num_grid_images
  v1 = variables_of(state1)
  r2, r1, rr = jax.random.split(setup.rng(experiment.Stream.SAMPLE_GRIDS), 3)
  grids = {}
  if state2 is not None:
    grids['stage2_samples'] = images.make_grid(generate_stage2(
        setup.model1, v1, setup.model2, variables_of(state2), r2, n,
        pixel_noise=c.sampling.pixel_noise, noise_scale=c.sampling.stage2_noise_scale),
                                               _cols(n))
  grids['stage1_samples'] = images.make_grid(generate_stage1(
      setup.model1, v1, r1, n, latent_dim=c.latent_dim, pixel_noise=c.sampling.pixel_noise),
                                             _cols(n))
  originals = test_images(setup, max(1, n // 2))
  recons = reconstruct(setup.model1, v1, originals, rr)
  grids['reconstructions'] = images.make_grid(images.interleave(originals, recons),
                                              _cols(n) + _cols(n) % 2)
  return grids


def write_run_grids(setup: experiment.Setup, state1, state2=None) -> Dict[str, str]:
  """Writes `run_grids` as samples/<name>.png and to TensorBoard; {name: path}.

  Without `state2` (stage 2 disabled) there is no stage-2 grid.
  """
  grids = run_grids(setup, state1, state2)
  paths = {name: _samples_path(setup, f'{name}.png') for name in grids}
  if jax.process_index() == 0:
    for name, grid in grids.items():
      if name == 'stage1_samples':
        faults.kill_here('samples.write')  # Fault-injection point (tests/faults_test.py).
      images.save_png(paths[name], grid)
    step = int(train.host_local((state2 or state1).step))
    writer = metric_logging.create_writer(setup.workdir, SAMPLES_DIR)
    writer.write_images(step, {name: grid[None] for name, grid in grids.items()})
    writer.close()
    logging.info('Wrote sample grids to %s', os.path.dirname(paths['stage1_samples']))
  return paths


def write_mean_vs_ancestral(setup: experiment.Setup, state1, state2=None,
                            out_dir: Optional[str] = None) -> str:
  """Decoder means (left) vs the same samples with pixel noise (right), side by side.

  `state2` None = a single-stage model (stage-1 prior samples).
  """
  c = setup.config
  n = c.sampling.num_grid_images
  v1 = variables_of(state1)
  rng = setup.rng(experiment.Stream.MEAN_VS_ANCESTRAL)

  def generate(noise):
    if state2 is None:
      return generate_stage1(setup.model1, v1, rng, n, latent_dim=c.latent_dim,
                             pixel_noise=noise)
    return generate_stage2(setup.model1, v1, setup.model2, variables_of(state2), rng, n,
                           pixel_noise=noise)

  grids = [images.make_grid(generate(noise), _cols(n)) for noise in (False, True)]
  path = _samples_path(setup, 'mean_vs_ancestral.png', out_dir)
  if jax.process_index() == 0:
    images.save_png(path, images.side_by_side(grids))
  return path


def parse_noise_scales(values: Sequence[str]) -> list:
  """Noise scales as floats; ConfigError unless each is a finite number >= 0."""
  try:
    scales = [float(v) for v in values]
  except ValueError:
    scales = None
  if scales is None or any(not np.isfinite(s) or s < 0 for s in scales):
    raise config_lib.ConfigError('--stage2_noise_scales takes finite numbers >= 0 (e.g. '
                                 f'1,0.5,0), got {",".join(values)!r}.')
  return scales


def write_noise_scales(setup: experiment.Setup, state1, state2, scales: Sequence[float],
                       out_dir: Optional[str] = None) -> str:
  """Stage-2 grids at each noise scale in `scales`, side by side (same u and ε)."""
  if not scales:
    raise config_lib.ConfigError('write_noise_scales needs at least one noise scale.')
  parse_noise_scales([str(s) for s in scales])
  c = setup.config
  n = c.sampling.num_grid_images
  v1, v2 = variables_of(state1), variables_of(state2)
  rng = setup.rng(experiment.Stream.NOISE_SCALES)
  grids = [images.make_grid(generate_stage2(
      setup.model1, v1, setup.model2, v2, rng, n, pixel_noise=c.sampling.pixel_noise,
      noise_scale=scale), _cols(n)) for scale in scales]
  path = _samples_path(setup, 'stage2_noise_scales.png', out_dir)
  if jax.process_index() == 0:
    images.save_png(path, images.side_by_side(grids))
  return path
