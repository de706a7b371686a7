"""The files of latent extraction: ImageNet (or any TFDS image classification set, or
Fashion-MNIST's IDX files) read in ranges, and VAE latents written as a TFDS ArrayRecord set.
The encoding itself, which needs the VAE, is the run mode's (modes/extract_latents.py):

    python launch/main.py --mode=extract_latents --config=configs/sddit_xl.py --workdir=DIR \
        --config.data.vae_path=/models/sd-vae-ft-ema \
        --config.data.extract.manual_dir=/data/imagenet_tars   # or .source_dir=<prepared TFDS>

Each image is centre-cropped and resized as ADM does (`center_crop_arr`; Fashion-MNIST is
padded instead, its pixels untouched), encoded together with its horizontal flip, and stored
as the posterior moments: 'mean' and 'std', each (2, latent side, latent side, channels)
float32 (row 0 the image, row 1 its flip), and 'label'. DIR becomes a
TFDS dataset folder (`tfds.builder_from_directory(DIR)`, `pipeline.latent_source(DIR)`).

Work is cut into shards of `data.extract.shard_size` consecutive source examples; host p of P
writes shards p, p+P, ... with its own devices (batch sharded over `jax.local_devices()`), so
no host ever waits on another until the end. A shard file appears (atomic rename) only once
complete, so a restarted extraction skips the shards it finds and redoes only the rest. The
TFDS metadata (dataset_info.json) is written last, by process 0, once every shard exists.
"""
from __future__ import annotations

import io
import json
import logging
import os
from typing import Optional

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from diffdis_jax.core import files
from diffdis_jax.core.checks import ConfigError, check
from diffdis_jax.data import fashion_mnist

OUTPUT_NAME = 'imagenet256_latents'
SETTINGS_FILE = 'extraction.json'  # what the shards were made with: a restart must match


class ExtractionError(ConfigError):
  """The source or the output folder cannot serve this extraction; the message says why."""


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
  """ADM's preprocessing: halve with BOX filtering while the short side is >= 2 * size, then
  BICUBIC-resize so the short side is `size`, then take the central size x size square."""
  while min(image.size) >= 2 * size:
    image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
  scale = size / min(image.size)
  image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
  arr = np.asarray(image)  # in the image's own mode: callers convert (RGB, L, ...) first
  top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
  return arr[top:top + size, left:left + size]


def open_source(extract_config):
  """The TFDS builder of the images, prepared from `manual_dir` first if it is not yet."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ex = extract_config
  data_dir = ex.source_dir or None
  builder = tfds.builder(ex.source, data_dir=data_dir)  # prepared: in whatever format it is
  if not builder.is_prepared():
    # prepared here in ArrayRecord: random access lets each host read just its shards
    builder = tfds.builder(ex.source, data_dir=data_dir, file_format='array_record')
    if not ex.manual_dir:
      raise ExtractionError(
          f'{ex.source} is not prepared under data.extract.source_dir={ex.source_dir!r}; pass '
          '--config.data.extract.manual_dir=DIR holding the official tar files (nothing is '
          'downloaded)')
    logging.info('preparing %s from %s (once; later runs reuse it)', ex.source, ex.manual_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=ex.manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return builder


def read_range(builder, split: str, start: int, end: int):
  """(PIL image, label) of examples [start, end) of `split`.

  The encoded bytes are decoded here with PIL, as ADM does, whatever format the source was
  prepared in: TF's and PIL's JPEG decoders differ by a few levels per pixel.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  raw = {'image': tfds.decode.SkipDecoding()}
  if builder.info.file_format.value == 'array_record':
    source = builder.as_data_source(split=split, decoders=raw)
    examples = (source[i] for i in range(start, end))
  else:  # tfrecord: a sliced split skips whole files it does not need
    examples = tfds.as_numpy(builder.as_dataset(split=f'{split}[{start}:{end}]',
                                                shuffle_files=False, decoders=raw))
  for example in examples:
    with Image.open(io.BytesIO(example['image'])) as image:
      yield image.convert('RGB'), int(example['label'])


class TFDSImages:
  """A TFDS image classification set as extraction reads it: RGB crops of `side` pixels."""

  channels = 3

  def __init__(self, builder):
    self.builder = builder
    self.num_classes = builder.info.features['label'].num_classes

  def num_examples(self, split: str) -> int:
    return self.builder.info.splits[split].num_examples

  def images(self, split: str, start: int, end: int, side: int):
    """(uint8 (side, side, 3) array, label) of examples [start, end)."""
    for image, label in read_range(self.builder, split, start, end):
      yield center_crop_arr(image, side), label


class FashionMNISTImages:
  """Fashion-MNIST's IDX files as extraction reads them: (side, side, 1) padded images."""

  num_classes, channels = fashion_mnist.NUM_CLASSES, 1

  def __init__(self, data_dir: str):
    self.data_dir = data_dir

  def num_examples(self, split: str) -> int:
    return len(fashion_mnist.load_split(self.data_dir, split)['label'])

  def images(self, split: str, start: int, end: int, side: int):
    data = fashion_mnist.load_split(self.data_dir, split)
    padded = fashion_mnist.pad_to(data['image'][start:end], side)
    yield from zip(padded, (int(label) for label in data['label'][start:end]))


def open_images(extract_config):
  """The image source of data.extract: Fashion-MNIST's files (source 'fashion_mnist', in
  source_dir, by default where Debian installs them) or a TFDS set (`open_source`)."""
  if extract_config.source == 'fashion_mnist':
    return FashionMNISTImages(extract_config.source_dir or fashion_mnist.DEBIAN_DIR)
  return TFDSImages(open_source(extract_config))


def output_features(latent_side: int, latent_channels: int, num_classes: int):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # stored as raw bytes: parsing a float list costs ~4x more per read (pipeline.LatentRecords)
  moments = tfds.features.Tensor(shape=(2, latent_side, latent_side, latent_channels),
                                 dtype=np.float32, encoding=tfds.features.Encoding.BYTES)
  return tfds.features.FeaturesDict({
      'mean': moments, 'std': moments,
      'label': tfds.features.ClassLabel(num_classes=num_classes)})


def shard_path(out_dir: str, split: str, shard: int, num_shards: int) -> str:
  """TFDS' default file name, so `write_metadata` and `builder_from_directory` find it."""
  return os.path.join(out_dir, f'{OUTPUT_NAME}-{split}.array_record-{shard:05d}-of-'
                               f'{num_shards:05d}')


def check_settings(out_dir: str, settings: dict, lead: bool):
  """Records `settings` in out_dir (by the `lead` process), or checks they are those the
  shards already there were made with."""
  path = os.path.join(out_dir, SETTINGS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != settings:
      diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
      raise ExtractionError(f'{out_dir} holds shards extracted with other settings '
                            f'({", ".join(diff)}); use another --workdir or the same settings')
  elif lead:
    files.write_json(path, settings)


def write_records(path: str, features, examples, expected: int | None = None) -> int:
  """Serialize `examples` (dicts matching `features`) into one ArrayRecord file, in order;
  the file appears under `path` only once complete. `expected`: how many examples there
  are, for the space a full disk reports as needed."""
  count, size = 0, 0

  def needed():  # the mean record so far, times the records of the whole shard
    return size * max(expected or count, count) // max(count, 1)

  with files.atomic_path(path, what=f'latent shard {os.path.basename(path)}',
                         needed=needed) as tmp:
    # one record per group: random access; uncompressed: latents barely compress and brotli,
    # the default, costs more CPU per read than the loader can spare
    writer = ArrayRecordWriter(tmp, 'group_size:1,uncompressed')
    for example in examples:
      record = features.serialize_example(example)
      writer.write(record)
      count, size = count + 1, size + len(record)
    writer.close()
  return count


def write_dataset_info(out_dir: str, features, split: str, shard_lengths, description=''):
  """TFDS metadata over the shards `shard_path` names, so TFDS (and grain) can read them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  paths = [shard_path(out_dir, split, s, len(shard_lengths)) for s in range(len(shard_lengths))]
  missing = [q for q in paths if not os.path.exists(q)]
  if missing:
    raise ExtractionError(f'{len(missing)} shards missing, e.g. {missing[0]}; run the '
                          'extraction again to write them')
  info = tfds.core.SplitInfo(name=split, shard_lengths=list(shard_lengths),
                             num_bytes=sum(os.path.getsize(q) for q in paths))
  tfds.folder_dataset.write_metadata(data_dir=out_dir, features=features, split_infos=[info],
                                     check_data=False, description=description)


def check_latent_set(config, num_classes: Optional[int] = None):
  """An extracted latent set in data.dir whose split, classes (when the model has
  `num_classes`) and latent shape fit config.model; one ConfigError line otherwise."""
  data_dir = config.data.dir
  check(bool(data_dir) and os.path.isdir(data_dir),
        f'dataset {config.data.name} not found at data.dir={data_dir!r}; prepare it with '
        '`python launch/main.py --mode=extract_latents --config=<this config> --workdir=DIR` '
        '(see README, "ImageNet latents") and pass --config.data.dir=DIR')
  check(os.path.isfile(os.path.join(data_dir, 'dataset_info.json')),
        f'data.dir={data_dir!r} holds no dataset_info.json: the latent extraction did not '
        'finish there; run --mode=extract_latents again with --workdir=<that dir> to complete it')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  info = tfds.builder_from_directory(data_dir).info
  split = config.data.get('split', 'train')
  check(split in info.splits, f'data.split={split!r} is not in {data_dir} '
                              f'(it holds {sorted(info.splits)})')
  classes = info.features['label'].num_classes
  if num_classes is not None:
    check(classes <= num_classes,
          f'data.dir holds {classes} classes but model.num_classes={num_classes}; '
          f'pass --config.model.num_classes={classes}')
  _, side, _, channels = info.features['mean'].shape
  m = config.model
  check((side, channels) == (m.input_size, m.in_channels),
        f'the latents in data.dir are {side}x{side}x{channels} but the model takes '
        f'{m.input_size}x{m.input_size}x{m.in_channels}; set --config.model.input_size='
        f'{side} --config.model.in_channels={channels}')
