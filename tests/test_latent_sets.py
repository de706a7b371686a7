"""ImageNet -> SD-VAE latents: a tiny manual_dir in the official tar layout goes through tfds'
imagenet2012 builder, ADM cropping, a tiny random diffusers VAE, the ArrayRecord writer (two
simulated hosts, then a resume), the training input and one train step."""
import io
import os
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST_COMPILE, tiny_sddit_config
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.data import latent_sets as il
from diffdis_jax.data import pipeline
from diffdis_jax.modes.checks import check_run
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.modes.extract_latents import extract_latents
from peer_utils import nchw, nhwc, randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNSETS = ('n01440764', 'n01443537')  # the first two of tfds' imagenet2012 labels.txt
PER_CLASS = 4
SIZES = ((40, 30), (24, 50), (33, 33), (64, 20))  # (width, height): crops of every shape


def _jpeg(rng, size) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(buf, 'JPEG')
  return buf.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  rng = np.random.default_rng(0)
  manual = root / 'manual'
  manual.mkdir()
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as train:
    for synset in SYNSETS:  # a tar of per-class tars, as ImageNet ships it
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as cls:
        for i in range(PER_CLASS):
          _add(cls, f'{synset}_{i}.JPEG', _jpeg(rng, SIZES[i]))
      _add(train, f'{synset}.tar', inner.getvalue())
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as val:  # the builder needs one
    for i in (1, 2):
      _add(val, f'ILSVRC2012_val_{i:08d}.JPEG', _jpeg(rng, (20, 20)))
  from diffusers import AutoencoderKL  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  vae = randomize(AutoencoderKL(
      block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
      down_block_types=('DownEncoderBlock2D',) * 2, up_block_types=('UpDecoderBlock2D',) * 2))
  vae.save_pretrained(root / 'vae', safe_serialization=True)
  return root, vae


def extraction_config(root, **extract):
  config = tiny_sddit_config()
  config.data.vae_path = str(root / 'vae')
  config.data.extract.source_dir = str(root / 'tfds')
  config.data.extract.manual_dir = str(root / 'manual')
  config.data.extract.image_size = 16
  config.data.extract.batch_size = 2
  config.data.extract.shard_size = 3  # 8 examples: 3 shards, the last one short
  config.data.extract.update(extract)
  return config


@pytest.fixture(scope='module')
def extracted(files):
  root, _ = files
  out = str(root / 'latents')
  config = extraction_config(root)
  check_run(config, 'extract_latents', out)
  second = extract_latents(config, out, process_index=1, process_count=2)
  written = sorted(f for f in os.listdir(out) if '.array_record-' in f)
  first = extract_latents(config, out, process_index=0, process_count=2)
  return out, config, written, second, first


def test_center_crop_arr_follows_adm():
  # a white band in the middle fifth of a wide black image: 200x50 halves once (50 >= 2*16)
  # to 100x25, is resized to 64x16, and the central 16 columns are the band
  image = np.zeros((50, 200, 3), np.uint8)
  image[:, 80:120] = 255
  crop = il.center_crop_arr(Image.fromarray(image), 16)
  assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
  assert crop[:, 3:13].min() > 200
  tall = il.center_crop_arr(Image.fromarray(np.zeros((90, 17, 3), np.uint8)), 16)
  assert tall.shape == (16, 16, 3)


def test_hosts_write_disjoint_shards_and_metadata_comes_last(extracted):
  out, _, written_by_host1, second, first = extracted
  assert written_by_host1 == [os.path.basename(il.shard_path(out, 'train', 1, 3))]
  assert second['examples_this_run'] == 3 and first['examples_this_run'] == 5
  assert os.path.isfile(os.path.join(out, 'dataset_info.json'))
  assert not [f for f in os.listdir(out) if f.endswith('.tmp')]


def test_latents_are_the_vae_moments_of_the_crop_and_its_flip(files, extracted):
  root, torch_vae = files
  out, config, *_ = extracted
  source = il.open_source(config.data.extract)
  images = list(il.read_range(source, 'train', 0, 8))
  latents = pipeline.latent_source(out)
  assert len(latents) == 8
  assert sorted(int(latents[i]['label']) for i in range(8)) == [0] * 4 + [1] * 4
  for i in (0, 5, 7):  # one per shard
    crop = il.center_crop_arr(images[i][0], 16)
    x = crop[None].astype(np.float32) / 127.5 - 1.0
    with torch.no_grad():
      dist = torch_vae.encode(nchw(np.concatenate([x, x[:, :, ::-1]]))).latent_dist
    example = latents[i]
    assert int(example['label']) == images[i][1]
    assert example['mean'].shape == (2, 8, 8, 4)
    np.testing.assert_allclose(example['mean'], nhwc(dist.mean), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(example['std'], nhwc(dist.std), rtol=1e-4, atol=1e-4)


def test_restart_redoes_only_missing_shards_and_refuses_other_settings(files, extracted):
  root, _ = files
  out, config, *_ = extracted
  lost = il.shard_path(out, 'train', 2, 3)
  kept = il.shard_path(out, 'train', 0, 3)
  before = pipeline.latent_source(out)[7]['mean']
  mtime = os.path.getmtime(kept)
  os.remove(lost)
  summary = extract_latents(config, out)
  assert summary['examples_this_run'] == 2  # only the short last shard
  assert os.path.getmtime(kept) == mtime
  np.testing.assert_allclose(pipeline.latent_source(out)[7]['mean'], before, atol=1e-6)
  with pytest.raises(il.ExtractionError, match='image_size'):
    extract_latents(extraction_config(root, image_size=24), out)


def test_train_step_on_extracted_latents(extracted):
  out, *_ = extracted
  config = tiny_sddit_config(**{'data.name': 'latents', 'data.dir': out,
                                'model.in_channels': 4, 'model.num_classes': 1000})
  check_run(config, 'train', out, jax.device_count())
  with pytest.raises(ConfigError, match='model.in_channels=4'):
    check_run(tiny_sddit_config(**{'data.name': 'latents', 'data.dir': out,
                                   'model.num_classes': 1000}), 'train', out)
  trainer = build_trainer(config, out, devices=jax.devices()[:1])  # one device: faster compile
  trainer.compiler_options = FAST_COMPILE
  batch = next(trainer.data_iterator())
  assert batch['image'].shape == (8, 8, 8, 4) and batch['label'].shape == (8,)
  assert set(np.unique(batch['label'])) <= {0, 1}
  state, metrics = trainer.compile_step()(trainer.init_state(), trainer.shard(batch))
  assert int(state.step) == 1 and np.isfinite(float(metrics['loss']))


def test_cli_bad_vae_path_is_one_line(tmp_path):
  run = subprocess.run(
      [sys.executable, 'launch/main.py', '--config=configs/sddit_xl.py', '--mode=extract_latents',
       f'--workdir={tmp_path}/out', '--config.data.vae_path=/no/such/vae'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1].startswith('error: data.vae_path=')
  assert not os.path.exists(tmp_path / 'out')
  unfinished = subprocess.run(
      [sys.executable, 'launch/main.py', '--config=configs/sddit_xl.py',
       f'--workdir={tmp_path}/run', f'--config.data.dir={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert unfinished.returncode == 2
  assert 'holds no dataset_info.json' in unfinished.stderr.strip().splitlines()[-1]


def test_reads_a_source_prepared_as_tfrecord(files, extracted, tmp_path):
  """ImageNet prepared earlier in TFDS' default TFRecord format is read as it is."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  root, _ = files
  _, config, *_ = extracted
  tfds.builder('imagenet2012', data_dir=str(tmp_path)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(root / 'manual')))
  prepared = il.open_source(
      extraction_config(root, source_dir=str(tmp_path), manual_dir='').data.extract)
  assert prepared.info.file_format.value == 'tfrecord'
  ours = list(il.read_range(prepared, 'train', 2, 7))
  reference = list(il.read_range(il.open_source(config.data.extract), 'train', 2, 7))
  assert [label for _, label in ours] == [label for _, label in reference]
  for (a, _), (b, _) in zip(ours, reference):  # decoded by PIL either way
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
