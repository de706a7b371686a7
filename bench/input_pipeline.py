"""Input pipeline speed: latents per second the training loader delivers, and images per
second of latent extraction on the current backend. Prints one JSON line.

  python bench/input_pipeline.py                       # loader + extraction with the SD-VAE
  python bench/input_pipeline.py --extract_images=0    # loader only
  python bench/input_pipeline.py --tiny                # smoke run (bench/tiny.py)

Loader: `pipeline.make_train_iterator` over an extracted-format latent set of --examples
ImageNet-256-shaped examples (moments (2, 32, 32, 4) float32 each) written to a temporary
folder; steady-state batches of --batch after --warmup, i.e. ArrayRecord reads, TFDS
decoding, the posterior draw, the flip and batching, with grain's threads. Extraction: the
real code path (ADM crop of decoded 500x375 JPEGs, the SD-VAE architecture with random
weights at --image_size encoding each image and its flip, ArrayRecord writing); the jit
compile is excluded. `--vae=small` narrows the VAE (a smoke run's, not a measurement).
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

import tiny  # noqa: E402  (bench/tiny.py)
from configs import common  # noqa: E402
from diffdis_jax.data import latent_sets as il  # noqa: E402
from diffdis_jax.data import pipeline  # noqa: E402
from diffdis_jax.modes import extract_latents  # noqa: E402

# SD's VAE (nn/vae.py's defaults), or narrow widths that compile in seconds
VAE_SIZES = {'sd': {}, 'small': dict(block_out_channels=(32, 32, 32, 32), norm_num_groups=16)}


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
  vae = AutoencoderKL(**VAE_SIZES[args.vae])
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
  # decoding and ADM's crop are timed, as extraction does them (latent_sets.open_images)
  examples = ((il.center_crop_arr(Image.open(io.BytesIO(j)).convert('RGB'), args.image_size), 0)
              for j in jpegs)
  with tempfile.TemporaryDirectory() as folder:
    t0 = time.perf_counter()
    n = il.write_records(os.path.join(folder, 'shard'), features,
                         extract_latents.encoded(encoder, examples))
    seconds = time.perf_counter() - t0
  return n / seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--examples', type=int, default=4096)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--extract_images', type=int, default=4)
  parser.add_argument('--extract_batch', type=int, default=4)
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--vae', default='sd', choices=sorted(VAE_SIZES))
  args = tiny.parse_args(parser, argv, examples=64, batch=8, batches=2, warmup=1,
                         extract_images=2, extract_batch=2, image_size=32, vae='small')
  result = {'latents_per_s': round(bench_loader(args), 1), 'loader_batch': args.batch}
  if args.extract_images:
    result['extract_images_per_s'] = round(bench_extraction(args), 4)
    result.update(extract_image_size=args.image_size, vae=args.vae)
  result.update(backend=jax.default_backend(), devices=jax.device_count(),
                cpus=os.cpu_count(), machine=platform.machine())
  print(json.dumps(result))


if __name__ == '__main__':
  main()
