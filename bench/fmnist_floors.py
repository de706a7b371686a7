"""The floors of the Fashion-MNIST metrics: what real images and the VAE's reconstructions
score at the sample counts the runs use.

  python bench/fmnist_floors.py --vae=workdirs/fmnist/vae/diffusers \
      --classifier_dir=workdirs/fmnist/classifier --samples=1000,2000

fd_fmnist depends on the sample count, so a model's score means something only beside these
at the same count: no generator can beat real training images, and a latent generator cannot
beat its own VAE's reconstructions of real images (here of the test split, which the
reference statistics are also made of: a slightly flattering floor). Images are drawn
class-balanced, as the runs' samples are. One JSON line per (source, count).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from diffdis_jax import weights  # noqa: E402
from diffdis_jax.data import fashion_mnist as fm  # noqa: E402
from diffdis_jax.eval.fashion_mnist_metric import FashionMNISTMetric  # noqa: E402


def balanced(labels: np.ndarray, n: int) -> np.ndarray:
  """Indices of the first n // 10 images of each class (n a multiple of 10), class-major."""
  per = n // fm.NUM_CLASSES
  return np.concatenate([np.flatnonzero(labels == k)[:per] for k in range(fm.NUM_CLASSES)])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--vae', required=True, help='the exported VAE folder')
  parser.add_argument('--classifier_dir', default='workdirs/fmnist/classifier')
  parser.add_argument('--data_dir', default=fm.DEBIAN_DIR)
  parser.add_argument('--samples', default='1000,2000')
  args = parser.parse_args()
  metric = FashionMNISTMetric.create(cache_dir=args.classifier_dir, data_dir=args.data_dir)
  vae, params = weights.load_vae(args.vae)
  reconstruct = jax.jit(lambda x: vae.apply({'params': params}, x))
  for n in (int(s) for s in args.samples.split(',')):
    for source in ('real_train', 'vae_test_reconstructions'):
      data = fm.load_split(args.data_dir, 'train' if source == 'real_train' else 'test')
      idx = balanced(data['label'], n)
      images = fm.to_model_input(data['image'][idx])
      if source != 'real_train':
        images = np.concatenate([np.asarray(reconstruct(images[i:i + 500]))
                                 for i in range(0, n, 500)])
      scores = metric.evaluate(np.clip(images, -1, 1), data['label'][idx])
      print(json.dumps({'source': source, 'samples': n, **{k: round(v, 4) for k, v in
                                                          scores.items()}}), flush=True)


if __name__ == '__main__':
  main()
