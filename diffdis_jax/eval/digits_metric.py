"""A sample-quality metric for the digits demo that needs no Inception weights.

The classifier metric of `classifier_metric.py` for scikit-learn's digits (`data/digits.py`):
a small CNN trained on the train split, seeded and deterministic, cached under `cache_dir`.

  fd_digits         Fréchet distance between the classifier's penultimate features of the
                    given samples and of the 297 real held-out digits. It is *not* FID: the
                    feature network is this classifier, not Inception, and the value depends on
                    the number of samples (compare runs at the same count).
  sample_class_acc  the fraction of class-conditional samples that the classifier assigns to
                    the class they were generated for.

    metric = DigitsMetric.create(cache_dir=workdir, seed=0, size=16)
    metric.evaluate(samples, labels)  # {'fd_digits': ..., 'sample_class_acc': ...}

Images are NHWC (n, size, size, 1) in [-1, 1], like `load_digits`; samples are clipped to that
range, and the classifier sees them resized to 16 x 16 whatever `size` is. Training is float32
on the default device and takes seconds on a laptop CPU.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from diffdis_jax.data.digits import NUM_CLASSES, load_digits
from diffdis_jax.eval import classifier_metric

VERSION = 2        # bump when the network or the recipe changes: it names the cache file
FEATURES = 64
# One classifier resolution for every `size`: at 8 x 8 the network would pool down to 2 x 2
# and reach only ~88% held-out accuracy, and features at one resolution keep fd_digits
# comparable.
CLASSIFIER_SIZE = 16


def _load(size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
  data = load_digits(split, size)
  return data['image'], data['label']


def _prepare(size: int, images: np.ndarray) -> np.ndarray:
  if images.ndim != 4 or images.shape[1:] != (size, size, 1):
    raise ValueError(f'digits metric expects (n, {size}, {size}, 1) images in [-1, 1], '
                     f'got shape {images.shape}')
  return images


def spec(size: int = 16) -> classifier_metric.ClassifierSpec:
  """The digits classifier for (n, size, size, 1) images.

  Shift augmentation by one pixel: the held-out digits come from other writers, and it lifts
  held-out accuracy from about 90% to about 95%.
  """
  return classifier_metric.ClassifierSpec(
      name='digits', version=VERSION, fd_key='fd_digits', tag=f'_size{size}',
      load=lambda split: _load(size, split), prepare=lambda x: _prepare(size, x),
      side=CLASSIFIER_SIZE, widths=(16, 32), features=FEATURES, num_classes=NUM_CLASSES,
      epochs=20, batch=100, learning_rate=2e-3, weight_decay=1e-4, max_shift=1)


def train_classifier(seed: int = 0, size: int = 16) -> dict:
  """The digits classifier's params, trained now; the same params for the same seed."""
  return classifier_metric.train_classifier(spec(size), seed)


@dataclasses.dataclass
class DigitsMetric(classifier_metric.ClassifierMetric):
  """The trained digits classifier plus the statistics of the real held-out digits."""
  size: int = 16

  @classmethod
  def create(cls, cache_dir: Optional[str] = None, seed: int = 0,
             size: int = 16) -> 'DigitsMetric':
    """Loads the classifier from `cache_dir` or trains it (and caches it there)."""
    return cls.from_spec(spec(size), cache_dir, seed, size=size)
