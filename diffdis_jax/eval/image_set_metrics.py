"""Which classifier metric scores a config's samples: the one trained on its image set.

    image_set(config)             'digits' | 'fashion_mnist' | None (no classifier: e.g. ImageNet)
    metric_for(config, workdir)   the DigitsMetric or FashionMNISTMetric, trained once and cached
    from_uint8(arr_0)             ADM-format uint8 samples as the metrics take them

A latent model's image set is the one its latents were extracted from (data.extract.source).
The classifier is cached in eval.classifier_dir, or in the workdir when that is empty.
"""
from __future__ import annotations

import os
from typing import Optional

from diffdis_jax.data import fashion_mnist
from diffdis_jax.eval.classifier_metric import ClassifierMetric
from diffdis_jax.eval.digits_metric import DigitsMetric
from diffdis_jax.eval.fashion_mnist_metric import FashionMNISTMetric, from_uint8

__all__ = ['image_set', 'images_dir', 'metric_for', 'from_uint8']


# DiffDis's captioned class sets (tasks/diffdis/sources.py) are scored as their image sets
CAPTIONED = {'captioned_digits': 'digits', 'captioned_fmnist': 'fashion_mnist'}


def image_set(config) -> Optional[str]:
  data = config.data
  if data.name in ('digits', 'fashion_mnist'):
    return data.name
  if data.name in CAPTIONED:
    return CAPTIONED[data.name]
  if data.name == 'latents' and data.get('extract', {}).get('source') == 'fashion_mnist':
    return 'fashion_mnist'
  return None


def images_dir(config) -> str:
  """Where the Fashion-MNIST files are: data.dir for pixel models, else the extraction's."""
  if config.data.name == 'fashion_mnist':
    return config.data.dir
  return config.data.extract.source_dir or fashion_mnist.DEBIAN_DIR


def metric_for(config, workdir: Optional[str]) -> Optional[ClassifierMetric]:
  """The metric of the config's image set, cached in eval.classifier_dir, else in the
  workdir (without either, trained and not kept)."""
  name = image_set(config)
  cache = config.eval.get('classifier_dir', '')
  in_workdir = lambda folder: os.path.join(workdir, folder) if workdir else None
  if name == 'digits':
    return DigitsMetric.create(cache_dir=cache or in_workdir('digits_classifier'),
                               seed=0, size=config.data.image_size)
  if name == 'fashion_mnist':
    return FashionMNISTMetric.create(cache_dir=cache or in_workdir('classifier'),
                                     data_dir=images_dir(config))
  return None
