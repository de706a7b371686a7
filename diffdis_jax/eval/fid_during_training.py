"""FID of EMA samples every few steps of training, as a hook the train loop calls each step.

The Inception weights and the reference statistics are read once; samples stay in memory (no
file) and use the same per-index seeds as `--mode=sample` (eval/sample_npz.py). Only the pool
features are computed.
"""
from __future__ import annotations

import logging
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffdis_jax.eval import fid, sample_npz


class FIDDuringTraining:
  """hook(step, params, writer, jsonl) -> FID every `every` steps (logged as fid_<n>)."""

  def __init__(self, sampler, sharding, vae_params, extractor, reference: fid.Reference, *,
               every: int, num_samples: int, batch_size: int):
    """`sampler`, `sharding`: from `sample_npz.make_batch_sampler`; `vae_params`: its VAE's
    (None for pixel models)."""
    self.sampler, self.sharding, self.vae_params = sampler, sharding, vae_params
    self.extractor, self.reference = extractor, reference
    self.every, self.num_samples, self.batch_size = every, num_samples, batch_size

  def __call__(self, step: int, params, writer, jsonl):
    if step % self.every:
      return None
    t0 = time.perf_counter()
    _, images, _ = sample_npz.sample_rows(self.sampler, self.sharding, params, self.vae_params,
                                          self.num_samples, self.batch_size)
    # every process ends with its own rows; the statistics need all of them
    if jax.process_count() > 1:
      images = np.concatenate(multihost_utils.process_allgather(images, tiled=False))
    pool = self.extractor(images)['pool']
    value = fid.frechet_distance(fid.Statistics.from_activations(pool), self.reference.pool_stats)
    scalars = {f'fid_{self.num_samples}': value}
    writer.write_scalars(step, scalars)
    jsonl.write(step, scalars)
    logging.info('step %d: fid_%d %.3f (%.1f s)', step, self.num_samples, value,
                 time.perf_counter() - t0)
    return value
