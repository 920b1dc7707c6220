"""WAE stage-1 networks for 64x64 images (reference ``Wae.build_encoder1/build_decoder1``).

All kernels glorot-uniform, biases zero (``tf.layers`` defaults).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsvae.models import layers

Array = jax.Array


class WAEEncoder(nn.Module):
  """conv128 5x5 s1, conv256/512/1024 5x5 s2, each BN ReLU -> flatten -> dense mu,
  dense log_sigma; sigma = exp(log_sigma)."""
  latent_dim: int
  bn_zero_debias: bool = False  # BN moving averages as TF1's zero_debias (layers.batch_norm).
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
    y = x
    for i, (features, stride) in enumerate(((128, 1), (256, 2), (512, 2), (1024, 2))):
      y = layers.conv(features, 5, stride, name=f'conv{i + 1}', dtype=self.dtype)(y)
      y = nn.relu(layers.batch_norm(train, zero_debias=self.bn_zero_debias, name=f'bn{i + 1}')(y))
    y = y.reshape(y.shape[0], -1)
    mu = layers.dense(self.latent_dim, name='mu', dtype=self.dtype)(y)
    log_sigma = layers.dense(self.latent_dim, name='log_sigma', dtype=self.dtype)(y)
    return mu, jnp.exp(log_sigma), log_sigma


class WAEDecoder(nn.Module):
  """dense 8*8*1024 ReLU -> convT 512/256/128 5x5 s2, each BN ReLU -> convT C 5x5 s1
  -> sigmoid."""
  image_shape: tuple[int, int, int] = (64, 64, 3)
  fast_vjp: bool = True
  bn_zero_debias: bool = False  # BN moving averages as TF1's zero_debias (layers.batch_norm).
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    channels = self.image_shape[2]
    y = nn.relu(layers.dense(8 * 8 * 1024, name='fc', dtype=self.dtype)(z))
    y = y.reshape(y.shape[0], 8, 8, 1024)
    for i, features in enumerate((512, 256, 128)):
      y = layers.ConvTranspose(features, 5, 2, fast_vjp=self.fast_vjp, dtype=self.dtype,
                               name=f'deconv{i + 1}')(y)
      y = nn.relu(layers.batch_norm(train, zero_debias=self.bn_zero_debias, name=f'bn{i + 1}')(y))
    y = layers.ConvTranspose(channels, 5, 1, fast_vjp=self.fast_vjp, dtype=self.dtype,
                             name='deconv4')(y)
    return nn.sigmoid(y)
