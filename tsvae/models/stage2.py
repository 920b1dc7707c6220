"""Stage-2 networks (reference ``build_encoder2`` / ``build_decoder2``).

Dense ReLU body of ``depth`` layers of ``width`` units; the output heads read the
concatenation [input, body output]. No BN; ``train`` is accepted and ignored.
Glorot-uniform kernels, zero biases (``tf.layers.dense`` defaults).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsvae.models import layers

Array = jax.Array


def _body(x: Array, depth: int, width: int, dtype: Any) -> Array:
  """``depth`` x dense(width) ReLU, then concat([x, h]) (call inside a compact method)."""
  h = x
  for i in range(depth):
    h = nn.relu(layers.dense(width, name=f'fc{i}', dtype=dtype)(h))
  return jnp.concatenate([x, h], axis=-1)


class Stage2Encoder(nn.Module):
  """z -> (mu_u, sigma_u, log_sigma_u), sigma_u = exp(log_sigma_u)."""
  latent_dim: int
  depth: int = 3
  width: int = 1024
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, z: Array, train: bool = False) -> tuple[Array, Array, Array]:
    del train
    t = _body(z, self.depth, self.width, self.dtype)
    mu = layers.dense(self.latent_dim, name='mu_u', dtype=self.dtype)(t)
    log_sigma = layers.dense(self.latent_dim, name='logsd_u', dtype=self.dtype)(t)
    return mu, jnp.exp(log_sigma), log_sigma


class Stage2Decoder(nn.Module):
  """u -> z_hat (the mean of p(z|u); its scalar log gamma_z lives in ``VAE``)."""
  latent_dim: int
  depth: int = 3
  width: int = 1024
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, u: Array, train: bool = False) -> Array:
    del train
    t = _body(u, self.depth, self.width, self.dtype)
    return layers.dense(self.latent_dim, name='z_hat', dtype=self.dtype)(t)
