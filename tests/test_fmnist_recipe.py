"""The Fashion-MNIST recipe end to end at toy size, on a few hundred real images: the VAE
trained and exported (diffusers layout), its latents extracted to ArrayRecord, a latent SD-DiT
trained on them through the ImageNet loader, decoded sample grids, --mode=sample's ADM file
and --mode=eval's classifier scores; and DiffDis on the same latents, scored with training
and held-out prompts."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import fmnist_diffdis, fmnist_sddit, fmnist_vae
from conftest import FAST_COMPILE, apply_overrides
from diffdis_jax import weights
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.data import fashion_mnist as fm
from diffdis_jax.data import fashion_mnist_captions as fc
from diffdis_jax.data import pipeline
from diffdis_jax.modes import run as run_modes
from diffdis_jax.modes.checks import check_run
from diffdis_jax.modes.extract_latents import extract_latents
from diffdis_jax.tasks.autoencoder.task import export_dir
from diffdis_jax.train.metrics_log import read_metrics
from test_fashion_mnist import write_idx

N_TRAIN, N_TEST = 300, 200


@pytest.fixture(scope='module')
def images_dir(tmp_path_factory):
  """The first real images of each split, as a small Fashion-MNIST folder."""
  folder = tmp_path_factory.mktemp('fmnist_small')
  for split, n in (('train', N_TRAIN), ('test', N_TEST)):
    data = fm.load_split(fm.DEBIAN_DIR, split)
    image_file, label_file = fm.SPLITS[split]
    write_idx(folder / image_file, data['image'][:n], fm.IMAGES_MAGIC)
    write_idx(folder / label_file, data['label'][:n], fm.LABELS_MAGIC)
  return str(folder)


@pytest.fixture(scope='module')
def vae_run(images_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp('fmnist')
  config = apply_overrides(fmnist_vae.get_config(), {
      'data.dir': images_dir, 'model.block_out_channels': (8, 16, 16),
      'model.norm_num_groups': 8, 'batch_size': 16, 'total_steps': 3, 'log_every': 1,
      'checkpoint_every': 3, 'sample_every': 3, 'eval.classifier_dir': str(root / 'classifier')})
  workdir = str(root / 'vae')
  check_run(config, 'train', workdir, jax.device_count())
  trainer = run_modes.build_trainer(config, workdir)
  trainer.compiler_options = FAST_COMPILE
  trainer.train()
  return root, workdir, trainer.final_scores


def test_vae_is_scored_and_exported_for_diffusers(vae_run):
  _, workdir, scores = vae_run
  for key in ('test_psnr', 'recon_class_acc', 'fd_fmnist_recon', 'classifier_test_acc',
              'scaling_factor'):
    assert np.isfinite(scores[key]), key
  assert read_metrics(workdir)[-1]['scaling_factor'] == pytest.approx(scores['scaling_factor'])
  folder = export_dir(workdir)
  with open(os.path.join(folder, 'config.json')) as f:
    exported = json.load(f)
  assert exported['_class_name'] == 'AutoencoderKL' and exported['in_channels'] == 1
  assert exported['scaling_factor'] == pytest.approx(scores['scaling_factor'])
  vae, _ = weights.load_vae(folder)
  assert vae.block_out_channels == (8, 16, 16) and vae.latent_channels == 4
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'step_00000003.png')))
  assert grid.shape[0] == 4 * (2 * 33 + 1)  # two rows of 32-pixel tiles, upscaled 4x


def sddit_config(root, images_dir, **overrides):
  vae = export_dir(os.path.join(root, 'vae'))
  config = fmnist_sddit.get_config()
  return apply_overrides(config, {
      'data.dir': str(root / 'latents'), 'data.vae_path': vae, 'sample.vae': vae,
      'data.extract.source_dir': images_dir, 'data.extract.shard_size': 128,
      'data.extract.batch_size': 64, 'eval.classifier_dir': str(root / 'classifier'),
      'model.width': 32, 'model.depth': 2, 'model.num_heads': 2, 'model.decoder_depth': 1,
      'model.decoder_width': 32, 'model.decoder_heads': 2,
      'model.head': dict(hidden=32, bottleneck=16, out_dim=32, num_layers=3),
      'batch_size': 8, 'total_steps': 2, 'log_every': 1, 'checkpoint_every': 2,
      'sample_every': 2, 'sample.steps': 2, 'sample.per_class': 1, 'eval.metric_samples': 20,
      'sample.num_samples': 16, 'sample.batch_size': 8, **overrides})


@pytest.fixture(scope='module')
def latents(vae_run, images_dir):
  root, *_ = vae_run
  config = sddit_config(root, images_dir)
  out = str(root / 'latents')
  check_run(config, 'extract_latents', out)
  summary = extract_latents(config, out)
  return root, config, out, summary


def test_extraction_writes_the_latent_set_and_resumes(latents, images_dir):
  root, config, out, summary = latents
  assert summary['examples_this_run'] == N_TRAIN and summary['shards'] == 3
  source = pipeline.latent_source(out)
  assert len(source) == N_TRAIN
  vae, params = weights.load_vae(config.data.vae_path)
  data = fm.load_split(images_dir, 'train')
  for i in (0, 150, 299):  # one per shard
    x = fm.to_model_input(data['image'][i:i + 1])
    mean, _ = vae.apply({'params': params}, np.concatenate([x, x[:, :, ::-1]]),
                        method='encode')
    np.testing.assert_allclose(source[i]['mean'], mean, atol=1e-4)
    assert int(source[i]['label']) == data['label'][i]
  assert extract_latents(config, out)['examples_this_run'] == 0  # every shard is there


def test_latent_sddit_trains_samples_and_is_scored(latents, images_dir):
  root, config, _, _ = latents
  workdir = str(root / 'sddit')
  check_run(config, 'train', workdir, jax.device_count())
  trainer = run_modes.build_trainer(config, workdir)
  trainer.compiler_options = FAST_COMPILE
  trainer.train()
  batch = next(trainer.data_iterator())  # the VAE's scale, read from its config.json
  assert batch['image'].shape == (8, 8, 8, 4)
  scores = trainer.final_scores
  assert np.isfinite(scores['fd_fmnist']) and 0 <= scores['sample_class_acc'] <= 1
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'step_00000002.png')))
  assert grid.shape[1] == 4 * (10 * 33 + 1)  # ten decoded 32-pixel tiles, upscaled 4x

  check_run(config, 'sample', workdir, jax.device_count())
  path = run_modes.sample(trainer)
  with np.load(path) as npz:
    assert npz['arr_0'].shape == (16, 32, 32, 3) and npz['arr_0'].dtype == np.uint8
    assert sorted(npz['arr_1'].tolist()) == sorted(list(range(10)) + list(range(6)))
  check_run(config, 'eval', workdir, jax.device_count())
  record = run_modes.evaluate(trainer)
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)
  assert set(saved) == {'classifier'}
  metrics = saved['classifier']['metrics']
  assert metrics == pytest.approx(record['classifier']['metrics'])
  assert np.isfinite(metrics['fd_fmnist']) and saved['classifier']['samples']['num_samples'] == 16


def diffdis_config(root, images_dir, **overrides):
  """configs/fmnist_diffdis.py on the toy latents, with the smallest UNet and text encoder."""
  return apply_overrides(fmnist_diffdis.get_config(), {
      'data.dir': str(root / 'latents'), 'data.vae_path': export_dir(os.path.join(root, 'vae')),
      'data.extract.source_dir': images_dir, 'eval.classifier_dir': str(root / 'classifier'),
      'model.block_out_channels': (16, 32), 'model.attention_head_dim': 2,
      'model.norm_num_groups': 8, 'text_encoder.hidden_size': 16,
      'text_encoder.intermediate_size': 32, 'text_encoder.projection_dim': 16,
      'text_encoder.num_hidden_layers': 1, 'text_encoder.num_attention_heads': 2,
      'text_encoder.pretrain_steps': 20, 'text_encoder.pretrain_batch': 32,
      'diffdis.context_dim': 16, 'diffdis.text_dim': 16, 'diffdis.zeroshot.steps': 2,
      'diffdis.zeroshot.batch': 64, 'diffdis.sample.steps': 2, 'diffdis.sample.per_prompt': 1,
      'batch_size': 8, 'total_steps': 2, 'log_every': 1, 'checkpoint_every': 2,
      'sample_every': 2, 'eval.metric_samples': 20, **overrides})


def test_latent_diffdis_trains_and_scores_both_prompt_sets(latents, images_dir):
  """DiffDis on the VAE's latents: zero-shot and retrieval with the training and the
  held-out prompts, text-to-image scores, to metrics.jsonl and eval.json; --mode=eval
  scores the checkpoint the same way."""
  root, *_ = latents
  config = diffdis_config(root, images_dir)
  workdir = str(root / 'diffdis')
  check_run(config, 'train', workdir, jax.device_count())
  trainer = run_modes.build_trainer(config, workdir)
  trainer.compiler_options = FAST_COMPILE
  trainer.train()
  batch = next(trainer.data_iterator())
  assert batch['image'].shape == (8, 8, 8, 4)
  assert batch['context'].shape == (8, fc.MAX_LENGTH, 16) and batch['query'].shape == (8, 16)

  scores = trainer.final_scores
  for suffix in ('', '_heldout'):
    for key in ('zeroshot_top1', 'zeroshot_top5', 'i2t_R@1', 'i2t_R@5', 'i2t_R@10',
                't2i_R@1', 't2i_R@5', 't2i_R@10'):
      assert 0 <= scores[key + suffix] <= 1, key + suffix
    assert scores['zeroshot_top1' + suffix] <= scores['zeroshot_top5' + suffix]
  assert np.isfinite(scores['fd_fmnist']) and 0 <= scores['sample_class_acc'] <= 1
  assert read_metrics(workdir)[-1]['zeroshot_top1_heldout'] == pytest.approx(
      scores['zeroshot_top1_heldout'])
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)['test_split']
  assert saved['metrics'] == pytest.approx(scores) and saved['num_images'] == N_TEST
  assert saved['settings']['prompts'] == {'train': 18, 'heldout': 12}
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'step_00000002.png')))
  assert grid.shape[0] == 4 * (10 * 33 + 1)  # one decoded row per class prompt, upscaled 4x

  check_run(config, 'eval', workdir, jax.device_count())
  record = run_modes.evaluate(trainer)
  assert record['test_split'] == pytest.approx(scores)


@pytest.mark.parametrize('overrides, words', [
    ({'data.vae_path': '/no/such/vae'}, 'not a diffusers AutoencoderKL folder'),
    ({'model.in_channels': 3}, 'the latents in data.dir are 8x8x4'),
    ({'data.latent_scale': 0.5}, 'data.latent_scale=0.5 but the VAE'),
    ({'data.extract.source_dir': '/no/such/dir'}, 'Fashion-MNIST not found'),
    ({'diffdis.context_length': 77}, 'context_length=14'),
    ({'eval.test_images': -1}, 'eval.test_images must be an integer >= 0'),
])
def test_latent_diffdis_bad_input(latents, images_dir, tmp_path, overrides, words):
  root, *_ = latents
  with pytest.raises(ConfigError, match=words):
    check_run(diffdis_config(root, images_dir, **overrides), 'train', str(tmp_path / 'w'),
              jax.device_count())
  assert not os.path.exists(tmp_path / 'w')
