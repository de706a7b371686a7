"""ImageNet (or any TFDS image classification set) -> SD-VAE latents in a TFDS ArrayRecord set.

    python launch/main.py --mode=extract_latents --config=configs/sddit_xl.py --workdir=DIR \
        --config.data.vae_path=/models/sd-vae-ft-ema \
        --config.data.extract.manual_dir=/data/imagenet_tars   # or .source_dir=<prepared TFDS>

Each image is centre-cropped and resized as ADM does (`center_crop_arr`), encoded together
with its horizontal flip, and stored as the posterior moments: 'mean' and 'std', each
(2, side/8, side/8, 4) float32 (row 0 the image, row 1 its flip), and 'label'. DIR becomes a
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
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

OUTPUT_NAME = 'imagenet256_latents'
SETTINGS_FILE = 'extraction.json'  # what the shards were made with: a restart must match
VAE_WEIGHTS = 'diffusion_pytorch_model.safetensors'


class ExtractionError(ValueError):
  pass


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


def load_vae(path: str):
  """(AutoencoderKL, params) from a diffusers VAE folder, an SD folder holding vae/, or a
  .safetensors file (with config.json beside it, else SD's AutoencoderKL config)."""
  # pylint: disable-next=g-import-not-at-top
  from diffdis_jax.weights import from_diffusers_vae, load_safetensors
  if os.path.isdir(os.path.join(path, 'vae')):
    path = os.path.join(path, 'vae')
  weights = os.path.join(path, VAE_WEIGHTS) if os.path.isdir(path) else path
  if not os.path.isfile(weights):
    raise ExtractionError(f'data.vae_path={path!r} holds no {VAE_WEIGHTS}; pass a diffusers '
                          'AutoencoderKL folder or a .safetensors file')
  config_path = os.path.join(os.path.dirname(weights), 'config.json')
  config = {}
  if os.path.isfile(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return from_diffusers_vae(config, load_safetensors(weights))


def open_source(extract_config):
  """The TFDS builder of the images, prepared from `manual_dir` first if it is not yet."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  e = extract_config
  data_dir = e.source_dir or None
  builder = tfds.builder(e.source, data_dir=data_dir)  # prepared: in whatever format it is
  if not builder.is_prepared():
    # prepared here in ArrayRecord: random access lets each host read just its shards
    builder = tfds.builder(e.source, data_dir=data_dir, file_format='array_record')
    if not e.manual_dir:
      raise ExtractionError(
          f'{e.source} is not prepared under data.extract.source_dir={e.source_dir!r}; pass '
          '--config.data.extract.manual_dir=DIR holding the official tar files (nothing is '
          'downloaded)')
    logging.info('preparing %s from %s (once; later runs reuse it)', e.source, e.manual_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=e.manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
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


def _check_settings(out_dir: str, settings: dict):
  path = os.path.join(out_dir, SETTINGS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != settings:
      diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
      raise ExtractionError(f'{out_dir} holds shards extracted with other settings '
                            f'({", ".join(diff)}); use another --workdir or the same settings')
  elif jax.process_index() == 0:
    with open(path + '.tmp', 'w') as f:
      json.dump(settings, f, indent=1, sort_keys=True)
    os.replace(path + '.tmp', path)


def write_records(path: str, features, examples) -> int:
  """Serialize `examples` (dicts matching `features`) into one ArrayRecord file, in order;
  the file appears under `path` only once complete."""
  # pylint: disable-next=g-import-not-at-top
  from array_record.python.array_record_module import ArrayRecordWriter
  tmp = path + '.tmp'
  # one record per group: random access; uncompressed: latents barely compress and brotli,
  # the default, costs more CPU per read than the loader can spare
  writer = ArrayRecordWriter(tmp, 'group_size:1,uncompressed')
  count = 0
  for example in examples:
    writer.write(features.serialize_example(example))
    count += 1
  writer.close()
  os.replace(tmp, path)
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


def encoded(encoder: LatentEncoder, examples, image_size: int):
  """{'mean', 'std', 'label'} of each (RGB PIL image, label), encoded a batch at a time."""
  images, labels = [], []

  def flush():
    mean, std = encoder(np.stack(images))
    yield from ({'mean': m, 'std': s, 'label': label}
                for m, s, label in zip(mean, std, labels))

  for image, label in examples:  # PIL images
    images.append(center_crop_arr(image, image_size))
    labels.append(label)
    if len(images) == encoder.batch_size:
      yield from flush()
      images, labels = [], []
  if images:
    yield from flush()


def extract_latents(config, out_dir: str, process_index: int | None = None,
                    process_count: int | None = None) -> dict:
  """Write this host's shards of the latent dataset into `out_dir`; returns a summary."""
  e = config.data.extract
  p = jax.process_index() if process_index is None else process_index
  n_proc = jax.process_count() if process_count is None else process_count
  if not config.data.vae_path:
    raise ExtractionError('data.vae_path is empty; pass --config.data.vae_path=<diffusers '
                          'AutoencoderKL folder or .safetensors file>')
  builder = open_source(e)
  total = builder.info.splits[e.split].num_examples
  num_shards = max(1, -(-total // e.shard_size))
  os.makedirs(out_dir, exist_ok=True)
  _check_settings(out_dir, dict(source=e.source, split=e.split, image_size=e.image_size,
                                shard_size=e.shard_size, num_examples=total,
                                vae_path=os.path.abspath(config.data.vae_path)))
  vae, params = load_vae(config.data.vae_path)
  side = e.image_size // 2 ** (len(vae.block_out_channels) - 1)
  features = output_features(side, vae.latent_channels,
                             builder.info.features['label'].num_classes)
  encoder = LatentEncoder(vae, params, e.batch_size)
  mine = [s for s in range(num_shards) if s % n_proc == p]
  todo = [s for s in mine if not os.path.exists(shard_path(out_dir, e.split, s, num_shards))]
  logging.info('extracting %d examples of %s/%s in %d shards: this host (%d of %d) has %d, '
               '%d already done', total, e.source, e.split, num_shards, p, n_proc, len(mine),
               len(mine) - len(todo))
  t0, done = time.perf_counter(), 0
  for k, shard in enumerate(todo):
    start, end = shard * e.shard_size, min((shard + 1) * e.shard_size, total)
    done += write_records(shard_path(out_dir, e.split, shard, num_shards), features,
                          encoded(encoder, read_range(builder, e.split, start, end),
                                   e.image_size))
    rate = done / (time.perf_counter() - t0)
    left = sum(min(e.shard_size, total - s * e.shard_size) for s in todo[k + 1:])
    logging.info('shard %d/%d written: %d images this run, %.1f images/s, ~%.0f s left',
                 k + 1, len(todo), done, rate, left / max(rate, 1e-9))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('latent shards written')
  if p == 0:
    lengths = [min(e.shard_size, total - s * e.shard_size) for s in range(num_shards)]
    write_dataset_info(out_dir, features, e.split, lengths,
                       description=f'SD-VAE posterior moments of {e.source}/{e.split} at '
                                   f'{e.image_size} px (row 0 the image, row 1 its flip)')
  seconds = time.perf_counter() - t0
  return dict(examples_this_run=done, seconds=seconds, shards=num_shards,
              images_per_s=done / seconds if done else 0.0)


def run_from_flags(config, workdir: str, fail):
  """launch/main.py --mode=extract_latents: bad input is one `fail` line, then the run."""
  from diffdis_jax import validate  # pylint: disable=g-import-not-at-top
  try:
    validate.validate_extraction(config)
    validate.validate_workdir(workdir)
  except validate.ConfigError as e:
    fail(str(e))
  logging.getLogger().setLevel(logging.INFO)
  try:
    summary = extract_latents(config, os.path.abspath(workdir))
  except ExtractionError as e:
    fail(str(e))
  logging.info('extraction done: %s; train with --config.data.dir=%s', summary,
               os.path.abspath(workdir))
