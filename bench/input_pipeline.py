"""Input pipeline speed: latents per second the training loader delivers, and images per
second of latent extraction on the current backend. Prints one JSON line.

  python bench/input_pipeline.py                       # loader + extraction with the SD-VAE
  python bench/input_pipeline.py --extract_images=0    # loader only

Loader: `pipeline.make_train_iterator` over an extracted-format latent set of --examples
ImageNet-256-shaped examples (moments (2, 32, 32, 4) float32 each) written to a temporary
folder; steady-state batches of --batch after --warmup, i.e. ArrayRecord reads, TFDS
decoding, the posterior draw, the flip and batching, with grain's threads. Extraction: the
real code path (ADM crop of decoded 500x375 JPEGs, the SD-VAE architecture with random
weights at --image_size encoding each image and its flip, ArrayRecord writing); the jit
compile is excluded.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from configs import common  # noqa: E402
from diffdis_jax.data import latent_sets as il  # noqa: E402
from diffdis_jax.data import pipeline  # noqa: E402



def write_latent_set(folder: str, examples: int, side: int = 32, per_shard: int = 1024):
  features = il.output_features(side, 4, 1000)
  rng = np.random.default_rng(0)
  mean = rng.standard_normal((2, side, side, 4)).astype(np.float32)
  std = np.abs(rng.standard_normal((2, side, side, 4))).astype(np.float32) * 0.1
  lengths = [min(per_shard, examples - s) for s in range(0, examples, per_shard)]
  for k, n in enumerate(lengths):
    il.write_records(il.shard_path(folder, 'train', k, len(lengths)), features,
                     ({'mean': mean, 'std': std, 'label': i % 1000} for i in range(n)))
  il.write_dataset_info(folder, features, 'train', lengths)


def bench_loader(args) -> float:
  with tempfile.TemporaryDirectory() as folder:
    write_latent_set(folder, args.examples)
    c = common.get_base_config()
    c.data.dir, c.batch_size = folder, args.batch
    it = pipeline.make_train_iterator(c)
    for _ in range(args.warmup):
      next(it)
    t0 = time.perf_counter()
    for _ in range(args.batches):
      batch = next(it)
    seconds = time.perf_counter() - t0
    assert batch['image'].shape == (args.batch, 32, 32, 4)
  return args.batches * args.batch / seconds


def bench_extraction(args) -> float:
  from diffdis_jax.nn.vae import AutoencoderKL  # pylint: disable=g-import-not-at-top
  vae = AutoencoderKL()  # SD's configuration
  params = jax.jit(vae.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))['params']
  encoder = extract_latents.LatentEncoder(vae, params, args.extract_batch)
  rng = np.random.default_rng(0)
  jpegs = []
  for _ in range(args.extract_images):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, 'JPEG')
    jpegs.append(buf.getvalue())
  warm = np.zeros((1, args.image_size, args.image_size, 3), np.uint8)
  encoder(warm)  # compile
  features = il.output_features(args.image_size // 8, 4, 1000)
  examples = ((Image.open(io.BytesIO(j)).convert('RGB'), 0) for j in jpegs)
  with tempfile.TemporaryDirectory() as folder:
    t0 = time.perf_counter()
    n = il.write_records(os.path.join(folder, 'shard'), features,
                         extract_latents.encoded(encoder, examples, args.image_size))
    seconds = time.perf_counter() - t0
  return n / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--examples', type=int, default=4096)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--extract_images', type=int, default=4)
  parser.add_argument('--extract_batch', type=int, default=4)
  parser.add_argument('--image_size', type=int, default=256)
  args = parser.parse_args()
  result = {'latents_per_s': round(bench_loader(args), 1), 'loader_batch': args.batch}
  if args.extract_images:
    result['extract_images_per_s'] = round(bench_extraction(args), 4)
    result['extract_image_size'] = args.image_size
  result.update(backend=jax.default_backend(), devices=jax.device_count(),
                cpus=os.cpu_count(), machine=platform.machine())
  print(json.dumps(result))


if __name__ == '__main__':
  main()
