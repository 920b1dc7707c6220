"""Writes cifar10_raw_tiny.png: the six synthetic 32x32 RGB "raw" CIFAR-10-sized images of
tests/input_pipeline_test.py's two-route test, side by side (4 train, then 2 test).

They are drawn here (colour gradients, a disc and a bar: the kind of edges and colour that
JPEG 4:2:0 at quality 75 visibly changes), not taken from CIFAR-10, so the fixture
carries no third-party data. Run from the repository root:

  python tests/data/make_cifar10_raw_tiny.py
"""

import os

import numpy as np
from PIL import Image


def make_images(count=6, size=32, seed=13):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
  images = []
  for _ in range(count):
    c0, c1, c2 = rng.uniform(0, 255, (3, 3))
    img = c0 * (1 - xx[..., None]) + c1 * xx[..., None] * (1 - yy[..., None]) \
        + c2 * yy[..., None] * xx[..., None]
    cy, cx, r = rng.uniform(8, 24), rng.uniform(8, 24), rng.uniform(4, 9)
    disc = (np.mgrid[0:size, 0:size][0] - cy)**2 + (np.mgrid[0:size, 0:size][1] - cx)**2 < r * r
    img[disc] = rng.uniform(0, 255, 3)
    row = rng.integers(2, size - 6)
    img[row:row + 3, :] = rng.uniform(0, 255, 3)
    images.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
  return images


if __name__ == '__main__':
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cifar10_raw_tiny.png')
  Image.fromarray(np.concatenate(make_images(), axis=1)).save(out, optimize=True)
  print(out, os.path.getsize(out), 'bytes')
