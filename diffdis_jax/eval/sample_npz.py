"""N class-conditional samples to an ADM-format `.npz`, sharded over devices and hosts.

The file is what ADM's evaluator (and `eval/fid.py`) reads: `arr_0` uint8 NHWC RGB images,
`arr_1` int labels, in sample-index order. Every sample's noise and label come from
`fold_in(key, index)`, so the images depend only on the index, the checkpoint and the sampler
settings: a rerun, another mesh, another device count or another batch size gives the same
file (up to float reassociation of XLA kernels of other shapes, which the uint8 rounding
almost always hides; tests/test_sample_npz.py checks equality on 1 and 8 devices).

Each global batch is split over the mesh's data axes (jit shardings); each host keeps the
rows its devices computed and writes them, with their indices, to its own part file; after a
barrier process 0 merges the parts into the output and removes them. Latent models (4
channels) decode through the SD VAE in the same jitted function.

A sidecar `<output>.json` records the settings used, which `--mode=eval` copies to eval.json.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from diffdis_jax.core import files
from diffdis_jax.diffusion import ddpm
from diffdis_jax.eval import fid
from diffdis_jax.eval.sample import decode_latents
from diffdis_jax.eval.sddit_sampler import make_sample_fn, sampler_of
from diffdis_jax.parallel import mesh as mesh_lib

LABEL_MODES = ('balanced', 'random')


def default_output(config, workdir: str) -> str:
  return config.sample.output or os.path.join(workdir, 'samples.npz')


def settings_path(npz_path: str) -> str:
  return npz_path + '.json'


def inputs_for_indices(key, indices, shape, num_classes: int, label_mode: str):
  """(noise (n, *shape), labels (n,)) of the given sample indices, each from its own index.

  'balanced' labels cycle through the classes by index (index % num_classes); 'random' draws
  each from fold_in(label key, index).
  """
  noise_key, label_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(noise_key, i), shape))(indices)
  if label_mode == 'balanced':
    labels = (indices % num_classes).astype(jnp.int32)
  elif label_mode == 'random':
    labels = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(label_key, i), (), 0,
                                                   num_classes))(indices).astype(jnp.int32)
  else:
    raise ValueError(f'sample.labels must be one of {LABEL_MODES}, got {label_mode!r}')
  return noise, labels


def make_batch_sampler(model, config, mesh, vae=None):
  """jitted (params, vae_params, indices) -> (images in [-1, 1] NHWC, labels), both split
  over the mesh's data axes like `indices`."""
  m = config.model
  shape = (m.input_size, m.input_size, m.in_channels)
  key = jax.random.PRNGKey(config.sample.seed)
  sample_fn = make_sample_fn(model, config)

  def fn(params, vae_params, indices):
    noise, labels = inputs_for_indices(key, indices, shape, m.num_classes, config.sample.labels)
    images = sample_fn(params, noise, labels)
    if vae is not None:
      images = decode_latents(vae, vae_params, images)
    return images, labels

  sharding = mesh_lib.batch_sharding(mesh)
  return jax.jit(fn, out_shardings=(sharding, sharding)), sharding


def _local_rows(array, global_indices: np.ndarray) -> dict[int, np.ndarray]:
  """{sample index: row} of the rows of `array` this process holds (replicas counted once)."""
  rows = {}
  for shard in array.addressable_shards:
    part = shard.index[0] if shard.index else slice(None)
    start = part.start or 0
    data = np.asarray(shard.data)
    for offset, index in enumerate(global_indices[start:start + len(data)]):
      rows.setdefault(int(index), data[offset])
  return rows


def to_adm_images(images) -> np.ndarray:
  """[-1, 1] NHWC floats -> uint8 RGB (grayscale repeated to 3 channels, as Inception needs)."""
  out = fid.to_uint8(images)
  return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def sample_rows(sampler, sharding, params, vae_params, num_samples: int, batch_size: int,
                first_index: int = 0):
  """This process's (indices, uint8 images, labels) of samples first_index .. +num_samples."""
  indices, images, labels = [], [], []
  for start in range(first_index, first_index + num_samples, batch_size):
    batch = np.arange(start, start + batch_size, dtype=np.int32)
    global_batch = jax.make_array_from_callback(batch.shape, sharding, lambda i, b=batch: b[i])
    out_images, out_labels = sampler(params, vae_params, global_batch)
    image_rows = _local_rows(out_images, batch)
    label_rows = _local_rows(out_labels, batch)
    for index in sorted(image_rows):
      if index < first_index + num_samples:  # the last batch is padded past N
        indices.append(index)
        images.append(image_rows[index])
        labels.append(label_rows[index])
  if not indices:
    return np.zeros((0,), np.int64), None, np.zeros((0,), np.int32)
  return (np.asarray(indices, np.int64), to_adm_images(np.stack(images)),
          np.asarray(labels, np.int32))


def part_path(output: str, process: int, count: int) -> str:
  return f'{output}.part{process:05d}-of-{count:05d}.npz'


def write_part(output: str, process: int, count: int, indices, images, labels):
  return files.save_npz(part_path(output, process, count), index=indices, arr_0=images,
                        arr_1=labels)


def merge_parts(output: str, num_samples: int, count: int) -> str:
  """Merges the `count` part files of `output` into it (index order) and removes them.

  Checks that the parts hold every index 0 .. num_samples-1 exactly once.
  """
  paths = [part_path(output, p, count) for p in range(count)]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f'sample parts missing: {missing}')
  indices, images, labels = [], [], []
  for path in paths:
    with np.load(path) as part:
      if len(part['index']):
        indices.append(part['index'])
        images.append(part['arr_0'])
        labels.append(part['arr_1'])
  indices = np.concatenate(indices)
  order = np.argsort(indices, kind='stable')
  if not np.array_equal(indices[order], np.arange(num_samples)):
    raise ValueError(f'sample parts of {output} do not hold indices 0..{num_samples - 1} '
                     f'exactly once (got {len(indices)} rows)')
  files.save_npz(output, arr_0=np.concatenate(images)[order],
                 arr_1=np.concatenate(labels)[order])
  for path in paths:
    os.remove(path)
  return output


def sampler_settings(config) -> dict:
  """What makes the samples what they are (FID changes with each), for the sidecar."""
  s = config.sample
  parameterization, solver = sampler_of(config)
  shared = {'parameterization': parameterization, 'solver': solver,
            'guidance': s.guidance, 'guidance_channels': s.guidance_channels or 'all',
            'labels': s.labels, 'seed': s.seed, 'vae': s.vae or config.data.vae_path or None}
  if parameterization == 'ddpm':
    return dict(shared, respacing=s.respacing,
                steps=len(ddpm.space_timesteps(ddpm.NUM_TIMESTEPS, s.respacing)))
  return dict(shared, steps=s.steps, sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho)


def recorded_settings(config, npz_path: str) -> dict:
  """The settings the samples were made with: the sidecar `write_samples_npz` wrote, else the
  config's (marked as such: a file from elsewhere may have been made otherwise)."""
  sidecar = settings_path(npz_path)
  if os.path.exists(sidecar):
    with open(sidecar) as f:
      return dict(json.load(f), source=sidecar)
  return dict(sampler_settings(config), source='config (no sidecar file)')


def write_samples_npz(model, config, mesh, params, output: str, *, num_samples: int,
                      batch_size: int, vae=None, vae_params=None, extra_settings=None) -> str:
  """Samples 0 .. num_samples-1 to the ADM `.npz` `output` (every process calls this)."""
  sampler, sharding = make_batch_sampler(model, config, mesh, vae)
  t0 = time.perf_counter()
  indices, images, labels = sample_rows(sampler, sharding, params, vae_params, num_samples,
                                        batch_size)
  process, count = jax.process_index(), jax.process_count()
  if images is None:  # a host whose devices got no row: an empty part keeps the merge simple
    images = np.zeros((0,), np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  write_part(output, process, count, indices, images, labels)
  if count > 1:
    multihost_utils.sync_global_devices('sample_npz parts written')
  if process == 0:
    merge_parts(output, num_samples, count)
    settings = dict(sampler_settings(config), num_samples=num_samples, batch_size=batch_size,
                    devices=jax.device_count(), processes=count,
                    seconds=round(time.perf_counter() - t0, 1), **(extra_settings or {}))
    files.write_json(settings_path(output), settings)
    logging.info('%d samples in %.1f s: %s', num_samples, time.perf_counter() - t0, output)
  if count > 1:
    multihost_utils.sync_global_devices('sample_npz merged')
  return output


def write_images_npz(path: str, image, label) -> str:
  """Dataset images in [-1, 1] (NHWC) as an ADM-format `.npz`: a reference set for
  `--mode=eval` when no published reference batch exists, e.g. the digits' held-out split:
      write_images_npz('digits_ref.npz', **digits.load_digits('test', 16))
  Refuses to overwrite."""
  if os.path.exists(path):
    raise FileExistsError(f'{path} exists; remove it first')
  return files.save_npz(path, arr_0=to_adm_images(image), arr_1=np.asarray(label, np.int32))


def stale_parts(output: str) -> list[str]:
  return sorted(glob.glob(glob.escape(output) + '.part*-of-*.npz'))
