"""The floors of the Fashion-MNIST metrics: what real images and the VAE's reconstructions
score at the sample counts the runs use.

  python bench/fmnist_floors.py --vae=workdirs/fmnist/vae/diffusers \
      --classifier_dir=workdirs/fmnist/classifier --samples=1000,2000
  python bench/fmnist_floors.py --tiny --data_dir=SMALL_SET   # smoke run (bench/tiny.py)

fd_fmnist depends on the sample count, so a model's score means something only beside these
at the same count: no generator can beat real training images, and a latent generator cannot
beat its own VAE's reconstructions of real images (here of the test split, which the
reference statistics are also made of: a slightly flattering floor). Images are drawn
class-balanced, as the runs' samples are. One JSON line per (source, count).

--tiny scores 20 images, with a VAE of random weights when --vae is not given and a
classifier trained into a temporary folder when --classifier_dir is not given: on a
--data_dir of a few hundred images it runs in seconds (the classifier trains on all of the
folder's training split).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import tiny  # noqa: E402  (bench/tiny.py)
from diffdis_jax import weights  # noqa: E402
from diffdis_jax.data import fashion_mnist as fm  # noqa: E402
from diffdis_jax.eval.fashion_mnist_metric import FashionMNISTMetric  # noqa: E402


def balanced(labels: np.ndarray, n: int) -> np.ndarray:
  """Indices of the first n // 10 images of each class (n a multiple of 10), class-major."""
  per = n // fm.NUM_CLASSES
  return np.concatenate([np.flatnonzero(labels == k)[:per] for k in range(fm.NUM_CLASSES)])


def random_vae(folder: str) -> str:
  """A small Fashion-MNIST-shaped VAE (1 channel, 32 px -> 8 x 8) of random weights, exported
  as the recipe exports its own: --tiny's stand-in for a trained one."""
  from diffdis_jax.nn.vae import AutoencoderKL  # pylint: disable=g-import-not-at-top
  vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16, 16),
                      norm_num_groups=8)
  params = jax.jit(vae.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))['params']
  return weights.save_diffusers_vae(folder, vae, params)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--vae', help='the exported VAE folder (required; --tiny: random weights)')
  parser.add_argument('--classifier_dir', default='workdirs/fmnist/classifier',
                      help='where the classifier is cached (--tiny: a temporary folder)')
  parser.add_argument('--data_dir', default=fm.DEBIAN_DIR)
  parser.add_argument('--samples', default='1000,2000')
  args = tiny.parse_args(parser, argv, samples='20', classifier_dir=None)
  if args.vae is None and not args.tiny:
    parser.error('the following arguments are required: --vae')
  with tempfile.TemporaryDirectory() as scratch:  # --tiny's stand-ins, removed at the end
    args.vae = args.vae or random_vae(os.path.join(scratch, 'vae'))
    args.classifier_dir = args.classifier_dir or os.path.join(scratch, 'classifier')
    floors(args)


def floors(args):
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
