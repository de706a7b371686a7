"""scikit-learn's bundled 8x8 handwritten digits: the demo data set (no download needed).

Images are upsampled to `size` x `size` with bilinear interpolation, scaled to [-1, 1] and
returned NHWC with one channel. The split is fixed: the first 1,500 of the 1,797 images
train, the last 297 (written by other people) are held out for evaluation.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

NUM_CLASSES = 10
NUM_TRAIN = 1500
DIGIT_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')


@functools.lru_cache(maxsize=4)
def _load(size: int) -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  images = digits.images.astype(np.float32)[..., None] / 16.0 * 2.0 - 1.0
  if size != 8:
    images = np.asarray(jax.image.resize(images, (len(images), size, size, 1), 'bilinear'))
  return np.clip(images, -1.0, 1.0), digits.target.astype(np.int32)


def load_digits(split: str = 'train', size: int = 16) -> dict[str, np.ndarray]:
  """{'image': (n, size, size, 1) float32 in [-1, 1], 'label': (n,) int32}."""
  images, labels = _load(size)
  if split == 'train':
    sl = slice(0, NUM_TRAIN)
  elif split == 'test':
    sl = slice(NUM_TRAIN, None)
  elif split == 'all':
    sl = slice(None)
  else:
    raise ValueError(f"unknown digits split {split!r}: use 'train', 'test' or 'all'")
  return {'image': images[sl], 'label': labels[sl]}
