"""Training input: grain pipelines with a seeded global shuffle, per-host sharding and a
checkpointable iterator (its state is saved beside the train state, see train/checkpoint.py).

Global batch k is the same set of examples, in the same row order, whatever the number of
hosts: host p of P reads rows [p * B/P, (p+1) * B/P) of it. So a run on one host and a run on
several hosts with the same global batch see identical arrays: a transform's randomness is
seeded by the example's global position in the stream (not by the host's own count).

Sources by data.name: 'digits' and 'fashion_mnist' (pixels, in memory: Fashion-MNIST read
from the IDX files in data.dir, padded to data.image_size) and 'latents' (the TFDS
ArrayRecord set `--mode=extract_latents` writes into data.dir, read by random access: each
yields a latent drawn from the stored posterior, mean + std * noise, of the image or its flip,
times the latent scale). See docs/data.md for the guarantees.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import grain
import numpy as np

from diffdis_jax.data import digits, fashion_mnist

# the class-labelled image sets `make_train_iterator` reads, by data.name
TRAIN_SOURCES = ('digits', 'fashion_mnist', 'latents')


class UnreadableRecord(OSError):
  """A stored input record that cannot be read back (a shard truncated or changed since the
  run opened it); the message names the file and the record."""


class ArraySource:
  """A grain random-access source over a dict of equally long numpy arrays."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays
    self._len = len(next(iter(arrays.values())))

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    return {k: v[index] for k, v in self.arrays.items()}


def host_dataset(source, *, global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1, transform: Callable | None = None,
                 num_threads: int = 2) -> grain.IterDataset:
  """This host's part of an endless, shuffled (reshuffled every epoch), batched stream."""
  if global_batch % process_count:
    raise ValueError(f'global batch {global_batch} is not divisible by {process_count} hosts')
  local = global_batch // process_count
  shuffled = grain.MapDataset.source(source).shuffle(seed=seed).repeat()

  def global_position(j):
    return (j // local) * global_batch + process_index * local + j % local

  def element(j):
    position = global_position(j)
    if transform is None:
      return shuffled[position]
    # the same generator for the same global position, whatever this host's share
    return transform(shuffled[position], np.random.default_rng((seed + 1, position)))

  ds = grain.MapDataset.range(sys.maxsize // global_batch).map(element)
  ds = ds.batch(local, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))


class LatentRecords:
  """Random-access source over an extracted latent set: {'mean', 'std', 'label'} numpy.

  The TFDS metadata names the files and shapes; records are read with grain's ArrayRecord
  source (no readahead: the reads are shuffled) and parsed here, because TFDS' own
  data source decodes ~4x slower and would limit the loader on a small host (docs/data.md).
  """

  def __init__(self, data_dir: str, split: str = 'train'):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    info = tfds.builder_from_directory(data_dir).info
    self.paths = [os.fspath(p) for p in info.splits[split].filepaths]
    self.starts = np.cumsum([0, *info.splits[split].shard_lengths])  # first index per shard
    self.shapes = {k: tuple(info.features[k].shape) for k in ('mean', 'std')}
    try:
      self._records = grain.sources.ArrayRecordDataSource(self.paths)
    except Exception as e:  # pylint: disable=broad-except
      # it reads every shard's index at once and does not say which one failed
      broken = next((p for p in self.paths if not _opens(p)), f'one of {data_dir}')
      raise UnreadableRecord(
          f'latent shard {broken} cannot be opened ({type(e).__name__}: '
          f'{str(e).splitlines()[0] if str(e) else ""}'[:200] + '); it is cut short or '
          'changed: delete it and run --mode=extract_latents again to rewrite it') from e

  def __len__(self):
    return len(self._records)

  def __getitem__(self, index):
    try:
      return self._parse(self._records[index])
    except Exception as e:  # pylint: disable=broad-except
      # riegeli's hash check (RuntimeError), a read past a truncated end (IndexError), a
      # record that is no Example or has the wrong size (DecodeError, KeyError, ValueError)
      shard = int(np.searchsorted(self.starts, index, side='right')) - 1
      problem = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:200]
      raise UnreadableRecord(
          f'latent shard {self.paths[shard]} record {index - self.starts[shard]} (example '
          f'{index} of the set) cannot be read ({problem}); the shard changed or was cut '
          'short after the run opened it: delete it and run --mode=extract_latents again to '
          'rewrite it') from e

  def _parse(self, record: bytes):
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
    fields = tf_example_pb2.Example.FromString(record).features.feature
    out = {k: np.frombuffer(fields[k].bytes_list.value[0], np.float32).reshape(shape)
           for k, shape in self.shapes.items()}
    out['label'] = np.int64(fields['label'].int64_list.value[0])
    return out


def _opens(path: str) -> bool:
  try:
    grain.sources.ArrayRecordDataSource([path])
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def latent_source(data_dir: str, split: str = 'train') -> LatentRecords:
  return LatentRecords(data_dir, split)


def sample_latent(scale: float) -> Callable:
  """transform(example, rng): a posterior draw of the image or (half the time) its flip."""

  def transform(example, rng: np.random.Generator):
    flip = int(rng.integers(2))
    mean, std = example['mean'][flip], example['std'][flip]
    noise = rng.standard_normal(mean.shape, dtype=np.float32)
    return {'image': (mean + std * noise) * np.float32(scale),
            'label': np.int32(example['label'])}

  return transform


def uint8_to_unit_range(example, rng):
  """transform(example, rng): uint8 pixels to float32 in [-1, 1] (done per example, so that
  the source holds 1 byte per pixel, not 4)."""
  del rng
  return {'image': example['image'].astype(np.float32) / 127.5 - 1.0,
          'label': np.int32(example['label'])}


def make_train_iterator(config, process_index: int = 0, process_count: int = 1,
                        latent_scale: float | None = None):
  """The training iterator a config describes; yields {'image': NHWC, 'label': (b,)} numpy.

  `latent_scale` (latents only): the factor the VAE's latents are scaled by, when the caller
  has resolved it from the VAE (data.latent_scale=0); by default data.latent_scale.
  """
  name = config.data.name
  batching = dict(global_batch=config.batch_size, seed=config.seed,
                  process_index=process_index, process_count=process_count)
  if name == 'digits':
    return iter(host_dataset(ArraySource(digits.load_digits('train', config.data.image_size)),
                             **batching))
  if name == 'fashion_mnist':
    train = fashion_mnist.load_split(config.data.dir, 'train')
    source = ArraySource({'image': fashion_mnist.pad_to(train['image'], config.data.image_size),
                          'label': train['label']})
    return iter(host_dataset(source, transform=uint8_to_unit_range, **batching))
  if name == 'latents':
    scale = config.data.latent_scale if latent_scale is None else latent_scale
    ds = host_dataset(latent_source(config.data.dir, config.data.get('split', 'train')),
                      transform=sample_latent(scale), **batching)
    return iter(ds)
  raise ValueError(f'no training input for data.name={name!r}: use one of {TRAIN_SOURCES}')

