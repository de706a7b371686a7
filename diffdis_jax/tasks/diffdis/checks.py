"""DiffDis' config checks: the UNet, the objective, the SD folder it starts from, the data, and
what --mode=eval needs, each as one ConfigError line saying what to fix.

The image-text pair checks read only config.json files and safetensors headers of the SD
folder, so a bad path or a mismatched size stops the run before any weight is loaded.
"""
from __future__ import annotations

import json
import os

from diffdis_jax.core.checks import ConfigError, check, has_checkpoint, one_of
from diffdis_jax.core.spaces import is_pixel_space
from diffdis_jax.data import digits_captions, fashion_mnist, fashion_mnist_captions
from diffdis_jax.data.captions import find_shards, shard_format
from diffdis_jax.data.latent_sets import check_latent_set
from diffdis_jax.diffusion.ddpm import DDIM_SPACINGS
from diffdis_jax.eval import zeroshot_suite as suite
from diffdis_jax.eval.image_set_metrics import images_dir
from diffdis_jax.nn.diffdis import ALIGN_MODES, IMAGE_NULLS
from diffdis_jax.nn.unet import (CROSS_ATTN_DOWN, CROSS_ATTN_UP, PLAIN_DOWN, PLAIN_UP,
                                 UNet2DCondition, per_level)
from diffdis_jax.objectives.diffdis import (IMAGE_PREDICTIONS, POSITIVES, QUERY_KINDS,
                                            TEXT_PREDICTIONS)
from diffdis_jax.tasks.diffdis.model import UNET_FIELDS
from diffdis_jax.tasks.diffdis.pretrained import check_generator, check_not_own_workdir
from diffdis_jax.tasks.diffdis.sources import SOURCES
from diffdis_jax.tasks.diffdis.text_encoders import PRETRAIN_POSITIVES
from diffdis_jax.weights.stable_diffusion import clip_text_has_projection


def check_model(config):
  """config.model holds the UNet's fields (nn/unet.py names, as diffusers' config.json)."""
  m = config.model
  channels = tuple(m.block_out_channels)
  levels = len(channels)
  check(levels >= 1 and len(m.down_block_types) == levels and len(m.up_block_types) == levels,
        f'model.block_out_channels has {levels} levels but down_block_types has '
        f'{len(m.down_block_types)} and up_block_types {len(m.up_block_types)}; give one per '
        'level')
  for kind in m.down_block_types:
    one_of(kind, (CROSS_ATTN_DOWN, PLAIN_DOWN), 'model.down_block_types[i]')
  for kind in m.up_block_types:
    one_of(kind, (CROSS_ATTN_UP, PLAIN_UP), 'model.up_block_types[i]')
  try:
    heads = per_level(m.attention_head_dim, levels, 'heads')
    per_level(m.transformer_layers_per_block, levels, 'transformer_layers_per_block')
    per_level(m.layers_per_block, levels, 'layers_per_block')
  except ValueError as e:
    raise ConfigError(f'model: {e}') from None
  for c, h in zip(channels, heads):
    check(c % m.norm_num_groups == 0 and c % h == 0,
          f'model.block_out_channels entry {c} must be divisible by model.norm_num_groups '
          f'{m.norm_num_groups} and by its number of heads {h} (model.attention_head_dim)')
  side = 2 ** (levels - 1)
  check(m.input_size % side == 0,
        f'model.input_size {m.input_size} must be divisible by {side} (one halving per level '
        'after the first)')


def check_objective(config):
  d = config.diffdis
  one_of(d.align_mode, ALIGN_MODES, 'diffdis.align_mode')
  one_of(d.image_null, IMAGE_NULLS, 'diffdis.image_null')
  one_of(d.text_prediction, TEXT_PREDICTIONS, 'diffdis.text_prediction')
  one_of(d.image_prediction, IMAGE_PREDICTIONS, 'diffdis.image_prediction')
  one_of(d.positives, POSITIVES, 'diffdis.positives')
  one_of(d.query, QUERY_KINDS, 'diffdis.query')
  for field in ('gen_weight', 'align_weight', 'regression_weight'):
    check(d[field] >= 0, f'diffdis.{field} must be >= 0, got {d[field]}')
  check(d.gen_weight > 0 or (d.align_mode != 'none' and d.align_weight > 0),
        'nothing to train: diffdis.gen_weight is 0 and there is no alignment loss; set '
        '--config.diffdis.gen_weight>0 or align_mode diffusion/contrastive with align_weight>0')
  for field in ('context_dropout', 'image_dropout'):
    check(0.0 <= d[field] < 1.0, f'diffdis.{field} must be in [0, 1), got {d[field]}')
  check(d.gamma > 0, f'diffdis.gamma must be > 0, got {d.gamma}')
  check(0 <= d.align_image_timestep < d.num_train_timesteps,
        f'diffdis.align_image_timestep must be in [0, {d.num_train_timesteps})')
  if d.align_mode != 'none':
    check(d.head_blocks >= 1, 'diffdis.head_blocks must be >= 1 with a text head')
  for name, sampler in (('zeroshot', d.zeroshot), ('sample', d.sample)):
    check(1 <= sampler.steps <= d.num_train_timesteps,
          f'diffdis.{name}.steps must be in [1, {d.num_train_timesteps}], got {sampler.steps}')
    one_of(sampler.spacing, DDIM_SPACINGS, f'diffdis.{name}.spacing')


def check_init(config):
  """With init.sd_folder, config.model must describe the folder's UNet (its weights load
  unchanged) and diffdis.context_dim its cross-attention width; with
  init.pretrained_generator, that run's UNet and text encoder must be this config's."""
  source = SOURCES.get(config.data.name)
  text_encoder_file = None
  if config.data.name in CAPTIONED_SOURCES and config.init.pretrained_generator:
    check_text_encoder_fields(config)
    text_encoder_file = source.text_encoder_file(config)
  check_generator(config, text_encoder_file)
  folder = config.init.sd_folder
  if not folder:
    return
  path = os.path.join(folder, 'unet', 'config.json')
  check(os.path.isfile(path),
        f'init.sd_folder={folder!r} is not a diffusers Stable Diffusion folder (no '
        'unet/config.json); pass --config.init.sd_folder=/path/to/sd-1.5')
  with open(path) as f:
    theirs = json.load(f)
  defaults = UNet2DCondition()
  norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  wanted = {k: theirs.get(k, getattr(defaults, k)) for k in UNET_FIELDS + ('in_channels',)}
  wanted['context_dim'] = theirs.get('cross_attention_dim', 1280)
  mine = {k: config.model[k] for k in UNET_FIELDS + ('in_channels',)}
  mine['context_dim'] = config.diffdis.context_dim
  diff = [f'{k}={norm(wanted[k])!r}' for k in wanted if norm(wanted[k]) != norm(mine[k])]
  check(not diff, f'config.model does not match the UNet of {folder}: set ' + ', '.join(
      f'model.{d}' if not d.startswith('context_dim') else f'diffdis.{d}' for d in diff))


def check_data(config):
  one_of(config.data.name, SOURCES, 'data.name')
  SOURCE_CHECKS[config.data.name](config)


def check_captioned_digits(config):
  """Pixels at the data's side, and a demo text encoder that fits."""
  m = config.model
  check(m.in_channels == 1 and m.input_size == config.data.image_size,
        'captioned digits are pixels: they need model.in_channels=1 and '
        'model.input_size=data.image_size')
  check_captioned_set(config, digits_captions)


def check_captioned_fmnist(config):
  """The latent set and its VAE fit the model, the Fashion-MNIST files are there (test
  images, the text encoder's pre-stage, the metric), and a demo text encoder that fits."""
  m, data = config.model, config.data
  check_captioned_set(config, fashion_mnist_captions)
  check(isinstance(config.eval.test_images, int) and config.eval.test_images >= 0,
        f'eval.test_images must be an integer >= 0 (0: all 10,000), got '
        f'{config.eval.test_images!r}')
  check_latent_set(config)
  vae = _read_json(os.path.join(data.vae_path, 'config.json'),
                   f'data.vae_path={data.vae_path!r} is not a diffusers AutoencoderKL folder; '
                   'pass the VAE the latents were extracted with (make fmnist: '
                   'workdirs/fmnist/vae/diffusers)')
  check(vae.get('latent_channels') == m.in_channels,
        f"the VAE in data.vae_path makes {vae.get('latent_channels')}-channel latents but "
        f'model.in_channels={m.in_channels}')
  scale = vae.get('scaling_factor')
  check(not data.latent_scale or abs(data.latent_scale - scale) < 1e-6,
        f'data.latent_scale={data.latent_scale} but the VAE in data.vae_path scales by {scale}; '
        'pass --config.data.latent_scale=0 (the VAE\'s own)')
  fashion_mnist.check_dir(images_dir(config))


def check_text_encoder_fields(config):
  t = config.text_encoder
  one_of(t.positives, PRETRAIN_POSITIVES, 'text_encoder.positives')
  check(t.caption_weight >= 0, f'text_encoder.caption_weight must be >= 0, got '
                               f'{t.caption_weight}')


def check_captioned_set(config, captions):
  """The demo text encoder makes c and e at the widths and length the UNet takes."""
  check_text_encoder_fields(config)
  d, t = config.diffdis, config.text_encoder
  check(t.hidden_size == d.context_dim and t.projection_dim == d.text_dim,
        'the demo text encoder makes c and e: set text_encoder.hidden_size = '
        'diffdis.context_dim and text_encoder.projection_dim = diffdis.text_dim')
  check(t.hidden_size % t.num_attention_heads == 0,
        f'text_encoder.hidden_size {t.hidden_size} is not divisible by '
        f'text_encoder.num_attention_heads {t.num_attention_heads}')
  check(d.context_length == captions.MAX_LENGTH,
        f'the {captions.NAME} captions are {captions.MAX_LENGTH} tokens long: set '
        f'--config.diffdis.context_length={captions.MAX_LENGTH}')
  check(isinstance(config.eval.metric_samples, int) and config.eval.metric_samples >= 0,
        f'eval.metric_samples must be an integer >= 0 (0: none), got '
        f'{config.eval.metric_samples!r}')


def _read_json(path: str, what: str) -> dict:
  check(os.path.isfile(path), f'{path} not found: {what}')
  with open(path) as f:
    return json.load(f)


def check_shards(spec: str, field: str, if_none: str) -> list[str]:
  """The caption shards `spec` names (data/captions.find_shards), each of a known format;
  `if_none` is the line said when there are none."""
  shards = find_shards(spec)
  check(bool(shards), if_none)
  try:
    for path in shards:
      shard_format(path)
  except ValueError as err:
    raise ConfigError(f'{field}: {err}') from None
  return shards


def check_pairs(config):
  """image_text_pairs: shards in data.dir, SD's VAE matching the UNet's latents, and a text
  encoder whose outputs have the widths diffdis.context_dim / text_dim name."""
  m, d, folder = config.model, config.diffdis, config.init.sd_folder
  check(bool(folder), 'data.name=image_text_pairs starts from Stable Diffusion: pass '
                      '--config.init.sd_folder=/path/to/sd-1.5 (a diffusers folder)')
  data_dir = config.data.dir
  check(bool(data_dir), 'data.dir is empty; pass --config.data.dir=<folder of caption shards '
                        '(*.tar, *.tfrecord, *.array_record) or a glob of them>')
  check_shards(data_dir, 'data.dir', f'data.dir={data_dir!r} holds no caption shards (*.tar, '
               '*.tfrecord*, *.array_record*); see docs/data.md for their layout')
  vae = _read_json(os.path.join(folder, 'vae', 'config.json'),
                   f'init.sd_folder={folder!r} has no VAE (vae/config.json)')
  check(vae.get('latent_channels', 4) == m.in_channels,
        f"the VAE of {folder} makes {vae.get('latent_channels', 4)}-channel latents but "
        f'model.in_channels={m.in_channels}')
  text_dir = config.init.text_encoder or os.path.join(folder, 'text_encoder')
  text = _read_json(os.path.join(text_dir, 'config.json'),
                    'no text encoder there; pass --config.init.text_encoder=<a transformers '
                    'CLIP text encoder folder>')
  text = text.get('text_config', text)
  check(d.context_length <= text.get('max_position_embeddings', 77),
        f'diffdis.context_length {d.context_length} exceeds the text encoder\'s '
        f"{text.get('max_position_embeddings', 77)} positions")
  check(text.get('hidden_size') == d.context_dim,
        f"the text encoder in {text_dir} is {text.get('hidden_size')} wide but "
        f'diffdis.context_dim={d.context_dim}')
  if d.query == 'projected_eot':
    check(clip_text_has_projection(text_dir),
          f'diffdis.query=projected_eot needs the text projection, which {text_dir} lacks '
          '(SD 1.x ships CLIP\'s text tower without it): pass --config.init.text_encoder=<a '
          'CLIPTextModelWithProjection folder of the same CLIP> or --config.diffdis.query=eot')
  width = text.get('projection_dim', 768) if d.query == 'projected_eot' else text['hidden_size']
  check(width == d.text_dim, f'the text query of {text_dir} is {width} wide but '
                             f'diffdis.text_dim={d.text_dim}; pass --config.diffdis.text_dim='
                             f'{width}')


# each data source's own checks (sources.py holds the sources)
CAPTIONED_SOURCES = ('captioned_digits', 'captioned_fmnist')
SOURCE_CHECKS = {'captioned_digits': check_captioned_digits,
                 'captioned_fmnist': check_captioned_fmnist, 'image_text_pairs': check_pairs}


def check_config(config):
  for part in (check_model, check_objective, check_init, check_data):
    part(config)


def check_mode(config, mode: str, workdir: str):
  """--mode=eval needs something to evaluate, every input it names and a checkpoint; a run
  that starts from a generator is not that generator's workdir."""
  check_not_own_workdir(config, workdir)
  if mode == 'eval':
    check_eval_inputs(config, workdir)


def check_eval_inputs(config, workdir: str):
  """Something to evaluate, every named input present, a checkpoint to evaluate. A captioned
  class set evaluates its own test split when no suite input is named."""
  ev, d, m = config.eval, config.diffdis, config.model
  specs = suite.load_specs()
  try:
    datasets = suite.parse_datasets(ev.zeroshot_datasets, specs)
  except ValueError as err:
    raise ConfigError(f'eval.zeroshot_datasets: {err}') from None
  own_test_set = config.data.name in CAPTIONED_SOURCES
  check(bool(datasets or ev.retrieval_shards or own_test_set),
        'nothing to evaluate: name zero-shot datasets with --config.eval.zeroshot_datasets='
        'cifar10,dtd,... (or all) and/or image-text shards with '
        '--config.eval.retrieval_shards=GLOB')
  check(d.align_mode != 'none' or (own_test_set and not (datasets or ev.retrieval_shards)
                                   and ev.metric_samples),
        "diffdis.align_mode='none' has no text head: it cannot classify or retrieve; evaluate "
        'a diffusion or contrastive run')
  check(d.zeroshot.batch >= 1 and d.zeroshot.seeds >= 1,
        'diffdis.zeroshot.batch and diffdis.zeroshot.seeds must be >= 1')
  for field in ('zeroshot_max_images', 'retrieval_max_pairs'):
    check(isinstance(ev[field], int) and ev[field] >= 0,
          f'eval.{field} must be an integer >= 0 (0: all), got {ev[field]!r}')
  if datasets:
    folder = ev.tfds_data_dir
    check(bool(folder) and os.path.isdir(folder),
          f'eval.tfds_data_dir={folder!r} is not a directory; pass --config.eval.tfds_data_dir='
          'DIR holding the prepared tfds datasets (nothing is downloaded)')
    ready = [n for n in datasets if suite.prepared_dir(specs[n]['tfds'], folder)]
    # a partly prepared suite runs (the rest is recorded as skipped); none at all is a mistake
    check(bool(ready or ev.retrieval_shards),
          f'none of {datasets} is prepared under eval.tfds_data_dir={folder!r} (tfds names: '
          f'{[specs[n]["tfds"] for n in datasets]}); prepare them there or pass another DIR')
  if ev.retrieval_shards:
    check_shards(ev.retrieval_shards, 'eval.retrieval_shards',
                 f'eval.retrieval_shards={ev.retrieval_shards!r} matches no file; pass '
                 '--config.eval.retrieval_shards=GLOB of image-text shards (*.tar, '
                 '*.tfrecord*, *.array_record*)')
  if not is_pixel_space(m.in_channels):
    check(bool(config.init.sd_folder or config.data.vae_path),
          f'model.in_channels={m.in_channels}: latent models read images through a VAE; pass '
          '--config.init.sd_folder=DIR (SD\'s) or --config.data.vae_path=DIR')
  has_checkpoint(workdir)
