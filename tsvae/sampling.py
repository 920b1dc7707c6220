"""Generation and reconstruction with trained stages (pure, jit-compiled, batched).

- Stage-2 samples (the Two-Stage VAE): u ~ N(0, I) → z = ẑ(u) + s·γ_z·ε → x = decoder-1 mean,
  with s = `noise_scale` (config.sampling.stage2_noise_scale; 1 = the reference, 0 = ẑ(u)).
- Stage-1 samples (the single-stage VAE baseline): z ~ N(0, I) → x = decoder-1 mean.
- Reconstructions: z = μ_z(x) + σ_z(x)·ε (a sampled z, as the reference) → decoder-1 mean
  (the model's ``posterior_sample``: through the flow for ``vae_flow``; z = μ for the
  deterministic models, whose σ is 0).
BatchNorm runs in inference mode throughout. With `pixel_noise=True`, x ~ N(mean, γ_x² I) is
drawn instead of the mean and clipped to [0, 1].
"""

import functools
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from tsvae.models import vae as vae_lib


def _local(x):
  """This process's copy of a replicated array (all of it), so that jits here run locally."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x


def variables_of(state) -> Dict:
  """The flax variables dict of a TrainState (params + batch_stats), as host arrays."""
  variables = {'params': state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return jax.tree_util.tree_map(_local, variables)


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


@functools.partial(jax.jit, static_argnames=('model',))
def encode_batch(model, variables, x):
  """(μ, σ) of a batch, inference mode (σ = 0 for the deterministic stage-1 models; for
  ``vae_flow`` those of the Gaussian q(z_0|x) before the flow)."""
  mu, sigma, _ = model.apply(variables, x, train=False, method='encode')
  return mu, sigma


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
