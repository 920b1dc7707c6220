"""The paper's latent-space diagnostics, as numbers and PNG plots.

* Active dimensions: dim j is active when the mean over the training set of σ_z,j² is below a
  threshold (0.05 by default). Inactive ("unused") dims have σ² ≈ 1 and μ ≈ 0: the encoder
  ignores the image there and the decoder ignores the dim.
* MMD between latent codes and N(0, I): the unbiased U-statistic estimate of MMD² with the
  Gaussian kernel k(a, b) = exp(−‖a − b‖² / (2h²)), between n codes and n fresh N(0, I) draws.
  Bandwidth rule (`BANDWIDTH_RULE`): h² = κ, the code dimension (= half the expected squared
  distance between two independent N(0, I_κ) draws), unless a fixed h is given. Codes: stage 1
  z = μ_z(x) + σ_z(x)·ε of training images (samples of the aggregate posterior q(z)); stage 2
  u = μ_u(z) + σ_u(z)·ε' of those z.
* Singular values of the code matrices [n, κ] / √n (≈ 1 each for N(0, I) codes).
* Latent sweep: for each dim j, hold the other coordinates of a base code fixed, set z_j to each
  value of a grid on [−3, 3], decode; the per-pixel variance of the decoded images across the
  grid, averaged over pixels and base codes, is dim j's decoded-image variance (≈ 0 for unused
  dims).
"""

import io
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from tsvae import fileio
from tsvae import images as images_lib

BANDWIDTH_RULE = ('Gaussian kernel k(a,b) = exp(-||a-b||^2 / (2 h^2)) with h^2 = kappa (the code '
                  'dimension); unbiased U-statistic estimate of MMD^2 between n codes and n '
                  'fresh N(0, I) draws')


def active_dims(sigma: np.ndarray, threshold: float = 0.05) -> Dict[str, object]:
  """Per-dim mean σ² over examples [N, κ] and the dims whose mean σ² is below `threshold`."""
  sigma2 = np.asarray(sigma, np.float64) ** 2
  mean_sigma2 = sigma2.mean(axis=0)
  active = np.flatnonzero(mean_sigma2 < threshold)
  return {'mean_sigma2': mean_sigma2, 'active': active, 'count': int(len(active)),
          'threshold': float(threshold)}


def _kernel_sum(a: np.ndarray, b: np.ndarray, h2: float, block: int = 1024) -> float:
  """Σ_ij exp(−‖a_i − b_j‖² / (2 h²)) in float64, in row blocks."""
  b2 = np.sum(b * b, axis=1)
  total = 0.0
  for start in range(0, len(a), block):
    x = a[start:start + block]
    d2 = np.sum(x * x, axis=1)[:, None] + b2[None, :] - 2.0 * (x @ b.T)
    total += float(np.exp(-np.maximum(d2, 0.0) / (2.0 * h2)).sum())
  return total


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: Optional[float] = None) -> float:
  """Unbiased MMD² between samples x [n, d] and y [m, d], Gaussian kernel.

  Args:
    bandwidth: h; None or <= 0 = the rule h² = d.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  n, d = x.shape
  m = len(y)
  if n < 2 or m < 2 or y.shape[1] != d:
    raise ValueError(f'need x [n >= 2, d], y [m >= 2, d]; got {x.shape}, {y.shape}.')
  h2 = float(bandwidth) ** 2 if bandwidth and bandwidth > 0 else float(d)
  kxx = (_kernel_sum(x, x, h2) - n) / (n * (n - 1))  # k(a, a) = 1 on the diagonal.
  kyy = (_kernel_sum(y, y, h2) - m) / (m * (m - 1))
  kxy = _kernel_sum(x, y, h2) / (n * m)
  return float(kxx + kyy - 2.0 * kxy)


def mmd_to_standard_normal(codes: np.ndarray, seed: int = 0,
                           bandwidth: Optional[float] = None) -> float:
  """Unbiased MMD² between codes [n, κ] and n seeded N(0, I) draws."""
  codes = np.asarray(codes, np.float64)
  reference = np.random.default_rng(seed).standard_normal(codes.shape)
  return mmd2(codes, reference, bandwidth)


def singular_values(codes: np.ndarray) -> np.ndarray:
  """Singular values of codes [n, κ] / √n, descending (≈ 1 each for N(0, I) codes)."""
  codes = np.asarray(codes, np.float64)
  return np.linalg.svd(codes / np.sqrt(len(codes)), compute_uv=False)


def latent_sweep(decode: Callable[[np.ndarray], np.ndarray], base_codes: np.ndarray,
                 values: Sequence[float] = tuple(np.linspace(-3.0, 3.0, 9)),
                 return_images: bool = False):
  """Decoded-image variance per latent dim when sweeping that dim alone.

  Args:
    decode: codes [M, κ] → images [M, ...] (called once per dim with M = B · V).
    base_codes: [B, κ] codes whose other coordinates stay fixed.
    values: the V values dim j takes.

  Returns:
    variance [κ] (per-pixel variance across the V values, mean over pixels and bases); with
    `return_images`, also the decoded images [κ, V, ...] of the first base code.
  """
  base = np.asarray(base_codes, np.float32)
  values = np.asarray(values, np.float32)
  b, k = base.shape
  v = len(values)
  variances = np.zeros(k, np.float64)
  first = []
  for j in range(k):
    codes = np.repeat(base[:, None, :], v, axis=1)  # [B, V, κ]
    codes[:, :, j] = values[None, :]
    images = np.asarray(decode(codes.reshape(b * v, k)), np.float64)
    images = images.reshape((b, v) + images.shape[1:])
    variances[j] = float(images.var(axis=1).mean())
    if return_images:
      first.append(images[0].astype(np.float32))
  if return_images:
    return variances, np.stack(first)
  return variances


# ------------------------------------------------------------------------------- plots


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg', force=True)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str):
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100, bbox_inches='tight')
  fileio.atomic_write_bytes(path, buffer.getvalue())


def plot_sigma2(path: str, sigma: np.ndarray, threshold: float):
  """Histogram of the per-dim mean σ_z² (the paper's figure) and of all σ_z² values."""
  plt = _pyplot()
  sigma2 = np.asarray(sigma, np.float64) ** 2
  mean_sigma2 = sigma2.mean(axis=0)
  count = int(np.sum(mean_sigma2 < threshold))
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  upper = max(1.05, float(mean_sigma2.max()) * 1.05)
  axes[0].hist(mean_sigma2, bins=np.linspace(0.0, upper, 43), color='tab:blue')
  axes[0].axvline(threshold, color='tab:red', linestyle='--', label=f'threshold {threshold:g}')
  axes[0].set_xlabel('mean over the training set of $\\sigma_z^2$ (one value per dim)')
  axes[0].set_ylabel('latent dims')
  axes[0].set_title(f'{count} of {len(mean_sigma2)} dims active')
  axes[0].legend()
  flat = sigma2.ravel()
  axes[1].hist(flat, bins=np.linspace(0.0, max(1.05, float(flat.max()) * 1.05), 60),
               color='tab:gray', log=True)
  axes[1].set_xlabel('$\\sigma_z^2$ (every example, every dim)')
  axes[1].set_ylabel('count (log)')
  _save(fig, path)
  plt.close(fig)


def plot_singular_values(path: str, sv_z: np.ndarray, sv_u: Optional[np.ndarray],
                         sv_reference: Optional[np.ndarray] = None,
                         mmd_z: Optional[float] = None, mmd_u: Optional[float] = None):
  """Singular values of z (and of u; None when there is no stage 2) and of N(0, I) draws."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4))
  ax.plot(np.arange(1, len(sv_z) + 1), sv_z, 'o-', ms=3,
          label='stage 1: z' + (f' (MMD² {mmd_z:.4f})' if mmd_z is not None else ''))
  if sv_u is not None:
    ax.plot(np.arange(1, len(sv_u) + 1), sv_u, 's-', ms=3,
            label='stage 2: u' + (f' (MMD² {mmd_u:.4f})' if mmd_u is not None else ''))
  if sv_reference is not None:
    ax.plot(np.arange(1, len(sv_reference) + 1), sv_reference, 'k:', label='N(0, I) draws')
  ax.set_xlabel('index')
  ax.set_ylabel('singular value of codes / $\\sqrt{n}$')
  ax.set_yscale('log')
  ax.legend()
  ax.set_title('Singular values of the latent code matrices')
  _save(fig, path)
  plt.close(fig)


def plot_latent_sweep(path: str, variances: np.ndarray, active: Sequence[int]):
  plt = _pyplot()
  k = len(variances)
  colors = ['tab:blue' if j in set(int(a) for a in active) else 'tab:gray' for j in range(k)]
  fig, ax = plt.subplots(figsize=(max(6.0, k * 0.12), 3.8))
  ax.bar(np.arange(k), variances, color=colors)
  ax.set_xlabel('latent dim (blue: active)')
  ax.set_ylabel('decoded-image variance')
  ax.set_title('Image variance when sweeping one latent dim over [-3, 3]')
  _save(fig, path)
  plt.close(fig)


def latent_grid_codes(num_per_side: int = 15, extent: float = 3.0) -> np.ndarray:
  """Codes on a num_per_side² grid over [-extent, extent]², row-major with z_2 decreasing down
  the rows and z_1 increasing along them (as the image grid is drawn)."""
  values = np.linspace(-extent, extent, num_per_side, dtype=np.float32)
  z1, z2 = np.meshgrid(values, values[::-1])
  return np.stack([z1.ravel(), z2.ravel()], axis=1)


def plot_latent_map(path: str, mu: np.ndarray, labels: Optional[np.ndarray],
                    grid_images: np.ndarray, extent: float):
  """A κ = 2 model at a glance: left, μ_z of the images (coloured by label when there are
  labels) with the prior's 1σ and 2σ circles; right, the decoder's images over the grid of
  `latent_grid_codes` on the same axes. Holes of q(z) inside the circles are where prior
  samples decode to nothing the data has."""
  plt = _pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 6))
  colors = None if labels is None else np.asarray(labels)
  points = left.scatter(mu[:, 0], mu[:, 1], c=colors, s=2, cmap='tab10', alpha=0.6,
                        rasterized=True)
  if labels is not None:
    left.legend(*points.legend_elements(), title='label', loc='upper right', fontsize=7)
  for radius in (1.0, 2.0):
    left.add_patch(plt.Circle((0, 0), radius, fill=False, ls='--', color='k', lw=0.8))
  for ax in (left, right):
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_xlabel('z_1')
    ax.set_ylabel('z_2')
    ax.set_aspect('equal')
  left.set_title(f'mu_z of {len(mu)} images (dashed: N(0, I) at 1 and 2 sigma)')
  side = int(round(np.sqrt(len(grid_images))))
  grid = images_lib.make_grid(grid_images, side, pad=0)
  right.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap='gray',
               extent=(-extent, extent, -extent, extent))
  right.set_title('decoder mean over a grid of z')
  _save(fig, path)
  plt.close(fig)
