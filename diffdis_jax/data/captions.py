"""Image-text pairs from shards: TFRecord, ArrayRecord or webdataset tar.

    records = CaptionRecords(shards, image_size=256, tokenizer=tok, seed=0,
                             process_index=p, process_count=P)
    for example in records: ...    # {'image', 'caption', 'input_ids', 'attention_mask'}
    records.skipped                # {'undecodable_image': 2, 'empty_caption': 1, ...}
    records.skipped_records        # their total: log it as a metric

Shard formats, by file name:
  *.tfrecord*      TFRecord of tf.train.Example with a bytes feature `image_key` (encoded
                   JPEG/PNG/...) and a bytes feature `caption_key` (UTF-8 text)
  *.array_record*  ArrayRecord of the same serialized tf.train.Example records
  *.tar            webdataset: a sample is the files sharing a basename, adjacent in the tar,
                   e.g. 000017.jpg + 000017.txt (.jpg/.jpeg/.png/.webp image, .txt caption)

A record whose image does not decode, whose caption is empty (or not UTF-8), whose fields are
missing or of the wrong type, or a shard that is cut short, is skipped and counted by reason in
`skipped`; it never raises. Images are ADM centre-cropped (`center_crop_arr`) and scaled to
[-1, 1]; captions are tokenized with a transformers CLIPTokenizer (`load_tokenizer(path)`).

Order and resume: host p reads shards p, p+P, ... ; each epoch visits them in an order drawn
from (seed, epoch). `get_state()` / `set_state()` give (epoch, shard, record) so a resumed run
continues where it stopped; `grain.checkpoint.CheckpointSave(records)` stores it in an orbax
checkpoint like the grain iterators.
`CaptionBatches(records, local_batch)` stacks them into this host's batches, with the same
state. DiffDis turns a batch into latents and CLIP's c and e on the accelerator each step
(tasks/diffdis/pair_encoder.py); caching those outputs on disk is not done yet (docs/data.md).
"""
from __future__ import annotations

import collections
import glob
import io
import itertools
import json
import os
import tarfile
from typing import Iterator, Sequence

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader
from PIL import Image

from diffdis_jax.data.latent_sets import center_crop_arr

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')


def load_tokenizer(path: str):
  """A transformers CLIPTokenizer from a folder (vocab.json, merges.txt), e.g. SD's tokenizer/."""
  from transformers import CLIPTokenizer  # pylint: disable=g-import-not-at-top
  return CLIPTokenizer.from_pretrained(path)


def tokenize(tokenizer, texts: Sequence[str], max_length: int):
  """(input_ids, attention_mask), int32 (len(texts), max_length), padded as the tokenizer
  pads (CLIP's: with <|endoftext|>)."""
  out = tokenizer(list(texts), padding='max_length', max_length=max_length, truncation=True,
                  return_tensors='np')
  return out['input_ids'].astype(np.int32), out['attention_mask'].astype(np.int32)


def shard_format(path: str) -> str:
  name = os.path.basename(path)
  if '.tfrecord' in name:
    return 'tfrecord'
  if '.array_record' in name:
    return 'array_record'
  if name.endswith('.tar'):
    return 'tar'
  raise ValueError(f'{path}: unknown caption shard format; name it *.tfrecord*, '
                   '*.array_record* or *.tar (webdataset)')


def is_shard_name(name: str) -> bool:
  try:
    shard_format(name)
  except ValueError:
    return False
  return True


def find_shards(spec: str) -> list[str]:
  """The shards `spec` names, sorted: a folder's files with shard names (anything else there,
  e.g. a README, is ignored), or every file a glob pattern matches (whose names the caller
  checks with `shard_format`)."""
  if os.path.isdir(spec):
    return [os.path.join(spec, n) for n in sorted(os.listdir(spec)) if is_shard_name(n)]
  return sorted(p for p in glob.glob(spec) if os.path.isfile(p))


class _Problem(Exception):
  """A record to skip; its message is the reason it is counted under."""


def _example_fields(serialized: bytes, image_key: str, caption_key: str):
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
  try:
    example = example_pb2.Example.FromString(serialized)
  except Exception:  # pylint: disable=broad-except
    raise _Problem('unparsable_record') from None
  fields = []
  for key in (image_key, caption_key):
    feature = example.features.feature.get(key)
    if feature is None or feature.WhichOneof('kind') != 'bytes_list' or \
        len(feature.bytes_list.value) != 1:
      raise _Problem('wrong_type')
    fields.append(feature.bytes_list.value[0])
  return tuple(fields)


def _read_tfrecord(path: str, image_key: str, caption_key: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
      yield lambda s=serialized: _example_fields(s, image_key, caption_key)
  except tf.errors.DataLossError:
    yield _raiser('truncated_shard')


def _read_array_record(path: str, image_key: str, caption_key: str):
  try:
    reader = ArrayRecordReader(path)
    count = reader.num_records()
  except Exception:  # pylint: disable=broad-except
    yield _raiser('truncated_shard')
    return
  for i in range(count):
    try:
      serialized = reader.read([i])[0]
    except Exception:  # pylint: disable=broad-except
      yield _raiser('truncated_shard')
      return
    yield lambda s=serialized: _example_fields(s, image_key, caption_key)


def _read_tar(path: str, image_key: str, caption_key: str):
  del image_key, caption_key  # webdataset names fields by extension

  def sample_fields(files):
    images = [files[e] for e in IMAGE_EXTENSIONS if e in files]
    if not images or 'txt' not in files:
      raise _Problem('wrong_type')
    return images[0], files['txt']

  key, files = None, {}
  try:
    with tarfile.open(path, 'r:*') as tar:
      for member in tar:
        if not member.isfile():
          continue
        base, _, ext = os.path.basename(member.name).partition('.')
        base = os.path.join(os.path.dirname(member.name), base)
        if base != key and key is not None:
          yield lambda f=files: sample_fields(f)
          files = {}
        key = base
        files[ext.lower()] = tar.extractfile(member).read()
      # tarfile ends quietly at a header cut short; a whole tar ends with two zero blocks
      truncated = os.path.getsize(path) < tar.offset + 2 * tarfile.BLOCKSIZE
  except (tarfile.TarError, OSError, EOFError):
    truncated = True
  if key is not None:
    yield lambda f=files: sample_fields(f)
  if truncated:
    yield _raiser('truncated_shard')


def _raiser(reason: str):
  def fail():
    raise _Problem(reason)
  return fail


READERS = {'tfrecord': _read_tfrecord, 'array_record': _read_array_record, 'tar': _read_tar}


def decode_pair(image_bytes, caption, image_size: int,
                mode: str = 'RGB') -> tuple[np.ndarray, str]:
  """(image float32 (size, size, channels of `mode`) in [-1, 1], caption), or _Problem
  naming what is wrong."""
  if not isinstance(image_bytes, bytes) or not isinstance(caption, (bytes, str)):
    raise _Problem('wrong_type')
  try:
    text = caption.decode('utf-8') if isinstance(caption, bytes) else caption
  except UnicodeDecodeError:
    raise _Problem('empty_caption') from None
  text = text.strip()
  if not text:
    raise _Problem('empty_caption')
  try:
    with Image.open(io.BytesIO(image_bytes)) as image:
      image.load()
      crop = center_crop_arr(image.convert(mode), image_size)
  except Exception:  # pylint: disable=broad-except  (PIL raises many kinds on bad bytes)
    raise _Problem('undecodable_image') from None
  crop = crop.reshape(crop.shape[:2] + (-1,))  # 'L' images come back without a channel axis
  return crop.astype(np.float32) / 127.5 - 1.0, text


class CaptionRecords:
  """This host's decoded, tokenized pairs, endlessly (epochs), skipping and counting bad ones."""

  def __init__(self, shards: Sequence[str], *, image_size: int, tokenizer=None,
               max_length: int = 77, seed: int = 0, process_index: int = 0,
               process_count: int = 1, image_key: str = 'image', caption_key: str = 'caption',
               epochs: int | None = None, mode: str = 'RGB'):
    for path in shards:
      shard_format(path)  # an unknown name fails here, not mid-run
    self.shards = sorted(shards)[process_index::process_count]
    if not self.shards:
      raise ValueError(f'{len(shards)} caption shards cannot feed {process_count} hosts: '
                       'write at least one shard per host')
    self.image_size, self.tokenizer, self.max_length = image_size, tokenizer, max_length
    self.seed, self.epochs, self.mode = seed, epochs, mode  # mode: PIL's 'RGB' or 'L'
    self.keys = (image_key, caption_key)
    self.skipped = collections.Counter()
    self._state = {'epoch': 0, 'shard': 0, 'record': 0}

  @property
  def skipped_records(self) -> int:
    return sum(self.skipped.values())

  def get_state(self) -> bytes:
    """JSON bytes: what grain's orbax checkpoint handler stores for a non-grain iterator."""
    return json.dumps(dict(self._state, skipped=dict(self.skipped))).encode()

  def set_state(self, state: bytes | str | dict):
    if not isinstance(state, dict):
      state = json.loads(state)
    self._state = {k: int(state[k]) for k in ('epoch', 'shard', 'record')}
    self.skipped = collections.Counter(state.get('skipped', {}))

  def start_prefetch(self):
    """grain's checkpoint handler calls this after `set_state`; nothing is prefetched."""

  def _order(self, epoch: int) -> list[str]:
    perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.shards))
    return [self.shards[i] for i in perm]

  def __iter__(self) -> Iterator[dict]:
    while self.epochs is None or self._state['epoch'] < self.epochs:
      order = self._order(self._state['epoch'])
      while self._state['shard'] < len(order):
        path = order[self._state['shard']]
        for index, record in enumerate(READERS[shard_format(path)](path, *self.keys)):
          if index < self._state['record']:
            continue  # read before the state was saved
          self._state['record'] = index + 1
          try:
            image, text = decode_pair(*record(), self.image_size, self.mode)
          except _Problem as problem:
            self.skipped[str(problem)] += 1
            continue
          yield self._example(image, text)
        self._state.update(shard=self._state['shard'] + 1, record=0)
      self._state.update(epoch=self._state['epoch'] + 1, shard=0, record=0)

  def _example(self, image: np.ndarray, text: str) -> dict:
    out = {'image': image, 'caption': text}
    if self.tokenizer is not None:
      ids, mask = tokenize(self.tokenizer, [text], self.max_length)
      out.update(input_ids=ids[0], attention_mask=mask[0])
    return out


class CaptionBatches:
  """Stacked batches of `local_batch` pairs from `records` ('caption' as a list of strings),
  keeping only `keys` when given. Checkpointable like a grain iterator: its state is the
  records' state, which points just past the last pair of the last batch returned."""

  def __init__(self, records: CaptionRecords, local_batch: int,
               keys: Sequence[str] | None = None):
    self.records, self.local_batch, self.keys = records, local_batch, keys
    self._examples = None

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._examples is None:
      self._examples = iter(self.records)
    buffer = list(itertools.islice(self._examples, self.local_batch))
    if len(buffer) < self.local_batch:  # only with a finite number of epochs
      raise StopIteration
    keys = self.keys or list(buffer[0])
    return {k: ([e[k] for e in buffer] if k == 'caption' else np.stack([e[k] for e in buffer]))
            for k in keys}

  def get_state(self) -> bytes:
    return self.records.get_state()

  def set_state(self, state):
    self.records.set_state(state)
    self._examples = None  # the next batch starts from the restored position

  def start_prefetch(self):
    """grain's checkpoint handler calls this after `set_state`; nothing is prefetched."""
