"""Image grids as PNG files (the pictures a person looks at after a run)."""

import io
import math
from typing import Optional

import numpy as np
from PIL import Image

from tsvae import fileio


def make_grid(images: np.ndarray, num_cols: Optional[int] = None, pad: int = 2,
              pad_value: float = 1.0) -> np.ndarray:
  """Tiles float images [N, H, W, C] in [0, 1] into one uint8 [rows·H, cols·W, C] image."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f'expected [N, H, W, C] images, got shape {images.shape}')
  n, h, w, c = images.shape
  num_cols = num_cols or int(math.ceil(math.sqrt(n)))
  num_rows = int(math.ceil(n / num_cols))
  grid = np.full((num_rows * (h + pad) + pad, num_cols * (w + pad) + pad, c), pad_value,
                 np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, num_cols)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top:top + h, left:left + w] = image
  return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_grid(path: str, images: np.ndarray, num_cols: Optional[int] = None):
  """Writes a PNG grid atomically."""
  save_png(path, make_grid(images, num_cols))


def side_by_side(grids, gap: int = 8) -> np.ndarray:
  """Joins uint8 grids of equal height left to right with a white gap."""
  height, channels = grids[0].shape[0], grids[0].shape[2]
  spacer = np.full((height, gap, channels), 255, np.uint8)
  parts = []
  for i, grid in enumerate(grids):
    parts.extend([spacer, grid] if i else [grid])
  return np.concatenate(parts, axis=1)


def save_png(path: str, grid: np.ndarray):
  """Writes a uint8 [H, W, C] image as PNG, atomically."""
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(grid).save(buffer, format='PNG')
  fileio.atomic_write_bytes(path, buffer.getvalue())


def interleave(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """[o0, r0, o1, r1, ...] so that a grid with an even column count pairs them side by side."""
  n = min(len(originals), len(reconstructions))
  out = np.empty((2 * n,) + originals.shape[1:], np.float32)
  out[0::2], out[1::2] = originals[:n], reconstructions[:n]
  return out
