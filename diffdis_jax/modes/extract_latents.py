"""--mode=extract_latents: an image set through a VAE's encoder into a latent set.

    python launch/main.py --mode=extract_latents --config=configs/sddit_xl.py --workdir=DIR \
        --config.data.vae_path=/models/sd-vae-ft-ema \
        --config.data.extract.manual_dir=/data/imagenet_tars   # or .source_dir=<prepared TFDS>

What is read and how the shards are laid out, named and resumed is data/latent_sets.py's;
this module encodes: each host encodes its shards with its own devices (the batch split over
`jax.local_devices()`), so no host waits on another until the metadata is written at the end.
"""
from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffdis_jax import weights
from diffdis_jax.data import latent_sets as latents


class LatentEncoder:
  """jit-compiled (image, flip) -> (mean, std) with the batch split over this host's devices."""

  def __init__(self, vae, params, batch_size: int):
    devices = jax.local_devices()
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    mesh = Mesh(np.asarray(devices), ('batch',))
    self.sharding = NamedSharding(mesh, P('batch'))
    self.params = jax.device_put(params, NamedSharding(mesh, P()))

    def encode(params, images_uint8):
      x = images_uint8.astype(jnp.float32) / 127.5 - 1.0
      both = jnp.concatenate([x, x[:, :, ::-1]], axis=0)
      mean, logvar = vae.apply({'params': params}, both, method='encode')
      std = jnp.exp(0.5 * logvar)
      n = x.shape[0]
      return (jnp.stack([mean[:n], mean[n:]], axis=1), jnp.stack([std[:n], std[n:]], axis=1))

    self._encode = jax.jit(encode, in_shardings=(None, self.sharding))

  def __call__(self, images: np.ndarray):
    n = len(images)
    padded = np.zeros((self.batch_size,) + images.shape[1:], np.uint8)
    padded[:n] = images
    mean, std = self._encode(self.params, jax.device_put(padded, self.sharding))
    return np.asarray(mean)[:n], np.asarray(std)[:n]


def encoded(encoder: LatentEncoder, examples):
  """{'mean', 'std', 'label'} of each (uint8 HWC image, label), encoded a batch at a time."""
  images, labels = [], []

  def flush():
    mean, std = encoder(np.stack(images))
    yield from ({'mean': m, 'std': s, 'label': label}
                for m, s, label in zip(mean, std, labels))

  for image, label in examples:
    images.append(image)
    labels.append(label)
    if len(images) == encoder.batch_size:
      yield from flush()
      images, labels = [], []
  if images:
    yield from flush()


def extract_latents(config, out_dir: str, process_index: int | None = None,
                    process_count: int | None = None) -> dict:
  """Write this host's shards of the latent dataset into `out_dir`; returns a summary."""
  ex = config.data.extract
  p = jax.process_index() if process_index is None else process_index
  n_proc = jax.process_count() if process_count is None else process_count
  source = latents.open_images(ex)
  total = source.num_examples(ex.split)
  num_shards = max(1, -(-total // ex.shard_size))
  os.makedirs(out_dir, exist_ok=True)
  latents.check_settings(out_dir, dict(source=ex.source, split=ex.split,
                                       image_size=ex.image_size, shard_size=ex.shard_size,
                                       num_examples=total,
                                       vae_path=os.path.abspath(config.data.vae_path)),
                         lead=p == 0)
  try:
    vae, params = weights.load_vae(config.data.vae_path)
  except FileNotFoundError as err:
    raise latents.ExtractionError(f'data.vae_path: {err}') from None
  if vae.in_channels != source.channels:
    raise latents.ExtractionError(
        f'the VAE at data.vae_path={config.data.vae_path!r} takes {vae.in_channels}-channel '
        f'images but {ex.source} has {source.channels}; pass a VAE made for these images')
  side = ex.image_size // 2 ** (len(vae.block_out_channels) - 1)
  features = latents.output_features(side, vae.latent_channels, source.num_classes)
  encoder = LatentEncoder(vae, params, ex.batch_size)
  mine = [s for s in range(num_shards) if s % n_proc == p]
  path = lambda shard: latents.shard_path(out_dir, ex.split, shard, num_shards)
  todo = [s for s in mine if not os.path.exists(path(s))]
  logging.info('extracting %d examples of %s/%s in %d shards: this host (%d of %d) has %d, '
               '%d already done', total, ex.source, ex.split, num_shards, p, n_proc, len(mine),
               len(mine) - len(todo))
  t0, done = time.perf_counter(), 0
  for k, shard in enumerate(todo):
    start, end = shard * ex.shard_size, min((shard + 1) * ex.shard_size, total)
    images = source.images(ex.split, start, end, ex.image_size)
    done += latents.write_records(path(shard), features, encoded(encoder, images),
                                  expected=end - start)
    rate = done / (time.perf_counter() - t0)
    left = sum(min(ex.shard_size, total - s * ex.shard_size) for s in todo[k + 1:])
    logging.info('shard %d/%d written: %d images this run, %.1f images/s, ~%.0f s left',
                 k + 1, len(todo), done, rate, left / max(rate, 1e-9))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('latent shards written')
  if p == 0:
    lengths = [min(ex.shard_size, total - s * ex.shard_size) for s in range(num_shards)]
    latents.write_dataset_info(
        out_dir, features, ex.split, lengths,
        description=f'VAE posterior moments of {ex.source}/{ex.split} at {ex.image_size} px '
                    '(row 0 the image, row 1 its flip)')
  seconds = time.perf_counter() - t0
  return dict(examples_this_run=done, seconds=seconds, shards=num_shards,
              images_per_s=done / seconds if done else 0.0)


def run(config, workdir: str) -> dict:
  """Extracts into `workdir` (the latent set's folder) and says how to train on it."""
  out_dir = os.path.abspath(workdir)
  summary = extract_latents(config, out_dir)
  logging.info('extraction done: %s; train with --config.data.dir=%s', summary, out_dir)
  return summary
