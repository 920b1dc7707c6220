"""ResNet stage-1 networks (reference ``Resnet.build_encoder1/build_decoder1`` and the
``res_block`` / ``scale_block`` / ``res_fc_block`` helpers of ``network/util.py``).

All kernels glorot-uniform, biases zero (``tf.layers`` defaults).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsvae.models import layers

Array = jax.Array


class ResBlock(nn.Module):
  """Reference ``res_block``: ``depth`` x (BN -> ReLU -> conv k x k) plus a k x k conv
  shortcut of the block input."""
  features: int
  depth: int = 2
  kernel_size: int = 3
  bn_zero_debias: bool = False  # BN moving averages as TF1's zero_debias (layers.batch_norm).
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    y = x
    for i in range(self.depth):
      y = nn.relu(layers.batch_norm(train, zero_debias=self.bn_zero_debias, name=f'bn{i}')(y))
      y = layers.conv(self.features, self.kernel_size, name=f'layer{i}', dtype=self.dtype)(y)
    return y + layers.conv(self.features, self.kernel_size, name='shortcut',
                           dtype=self.dtype)(x)


class ScaleBlock(nn.Module):
  """Reference ``scale_block``: ``block_per_scale`` residual blocks."""
  features: int
  block_per_scale: int = 1
  depth_per_block: int = 2
  kernel_size: int = 3
  bn_zero_debias: bool = False  # BN moving averages as TF1's zero_debias (layers.batch_norm).
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    for i in range(self.block_per_scale):
      x = ResBlock(self.features, self.depth_per_block, self.kernel_size,
                   bn_zero_debias=self.bn_zero_debias, dtype=self.dtype,
                   name=f'block{i}')(x, train)
    return x


class ResFcBlock(nn.Module):
  """Reference ``res_fc_block``: ``depth`` x (ReLU -> dense) plus a dense shortcut."""
  features: int
  depth: int = 2
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = x
    for i in range(self.depth):
      y = layers.dense(self.features, name=f'layer{i}', dtype=self.dtype)(nn.relu(y))
    return y + layers.dense(self.features, name='shortcut', dtype=self.dtype)(x)


def decoder_scales(size: int, base_dim: int) -> tuple[list[int], list[int]]:
  """Scales 2, 4, ..., size and their channel counts (base * 2^i capped at 1024), the
  latter reversed (largest first), as in ``Resnet.build_decoder1``."""
  scales, dims = [], []
  scale, dim = 2, base_dim
  while scale <= size:
    scales.append(scale)
    dims.append(dim)
    scale *= 2
    dim = min(dim * 2, 1024)
  if not scales or scales[-1] != size:
    raise ValueError(f'ResNet decoder needs a power-of-two image size >= 2, got {size}')
  return scales, list(reversed(dims))


class ResNetEncoder(nn.Module):
  """conv0 -> per scale: ScaleBlock, then x2 channels and a stride-2 conv (not after the
  last scale) -> global mean pool -> ResFcBlock(fc_dim) -> dense mu, dense log_sigma."""
  latent_dim: int
  num_scale: int = 4
  block_per_scale: int = 1
  depth_per_block: int = 2
  kernel_size: int = 3
  base_dim: int = 16
  fc_dim: int = 512
  bn_zero_debias: bool = False  # BN moving averages as TF1's zero_debias (layers.batch_norm).
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
    dim = self.base_dim
    y = layers.conv(dim, self.kernel_size, name='conv0', dtype=self.dtype)(x)
    for i in range(self.num_scale):
      y = ScaleBlock(dim, self.block_per_scale, self.depth_per_block, self.kernel_size,
                     bn_zero_debias=self.bn_zero_debias, dtype=self.dtype,
                     name=f'scale{i}')(y, train)
      if i != self.num_scale - 1:
        dim *= 2
        y = layers.conv(dim, self.kernel_size, 2, name=f'downsample{i}', dtype=self.dtype)(y)
    y = jnp.mean(y, axis=(1, 2))
    # scale_fc_block with a single block of depth depth_per_block.
    y = ResFcBlock(self.fc_dim, self.depth_per_block, dtype=self.dtype, name='fc_block0')(y)
    mu = layers.dense(self.latent_dim, name='mu', dtype=self.dtype)(y)
    log_sigma = layers.dense(self.latent_dim, name='log_sigma', dtype=self.dtype)(y)
    return mu, jnp.exp(log_sigma), log_sigma


class ResNetDecoder(nn.Module):
  """dense to 2x2xdims[0] -> per scale: convT k x k s2 then ScaleBlock -> conv k x k to C
  -> sigmoid (dims from ``decoder_scales``)."""
  image_shape: tuple[int, int, int]
  block_per_scale: int = 1
  depth_per_block: int = 2
  kernel_size: int = 3
  base_dim: int = 16
  fast_vjp: bool = True
  bn_zero_debias: bool = False  # BN moving averages as TF1's zero_debias (layers.batch_norm).
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    size, _, channels = self.image_shape
    scales, dims = decoder_scales(size, self.base_dim)
    y = layers.dense(2 * 2 * dims[0], name='fc0', dtype=self.dtype)(z)
    y = y.reshape(y.shape[0], 2, 2, dims[0])
    for i in range(len(scales) - 1):
      y = layers.ConvTranspose(dims[i + 1], self.kernel_size, 2, fast_vjp=self.fast_vjp,
                               dtype=self.dtype, name=f'up{i}')(y)
      y = ScaleBlock(dims[i + 1], self.block_per_scale, self.depth_per_block,
                     self.kernel_size, bn_zero_debias=self.bn_zero_debias, dtype=self.dtype,
                     name=f'scale{i}')(y, train)
    y = layers.conv(channels, self.kernel_size, name='out', dtype=self.dtype)(y)
    return nn.sigmoid(y)
