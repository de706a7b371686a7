"""DiffDis' config checks (validate.py runs them for method=diffdis): the UNet, the objective,
the SD folder it starts from and the data, each as one ConfigError line saying what to fix.

The image-text pair checks read only config.json files and safetensors headers of the SD
folder, so a bad path or a mismatched size stops the run before any weight is loaded.
"""
from __future__ import annotations

import json
import os

from diffdis_jax.validate import ConfigError, _check, _one_of

DIFFDIS_DATASETS = ('captioned_digits', 'image_text_pairs')


def check_diffdis_model(config):
  """config.model holds the UNet's fields (nn/unet.py names, as diffusers' config.json)."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.nn.unet import CROSS_ATTN_DOWN, CROSS_ATTN_UP, PLAIN_DOWN, PLAIN_UP, per_level
  m = config.model
  channels = tuple(m.block_out_channels)
  levels = len(channels)
  _check(levels >= 1 and len(m.down_block_types) == levels and len(m.up_block_types) == levels,
         f'model.block_out_channels has {levels} levels but down_block_types has '
         f'{len(m.down_block_types)} and up_block_types {len(m.up_block_types)}; give one per '
         'level')
  for kind in m.down_block_types:
    _one_of(kind, (CROSS_ATTN_DOWN, PLAIN_DOWN), 'model.down_block_types[i]')
  for kind in m.up_block_types:
    _one_of(kind, (CROSS_ATTN_UP, PLAIN_UP), 'model.up_block_types[i]')
  try:
    heads = per_level(m.attention_head_dim, levels, 'heads')
    per_level(m.transformer_layers_per_block, levels, 'transformer_layers_per_block')
    per_level(m.layers_per_block, levels, 'layers_per_block')
  except ValueError as e:
    raise ConfigError(f'model: {e}') from None
  for c, h in zip(channels, heads):
    _check(c % m.norm_num_groups == 0 and c % h == 0,
           f'model.block_out_channels entry {c} must be divisible by model.norm_num_groups '
           f'{m.norm_num_groups} and by its number of heads {h} (model.attention_head_dim)')
  side = 2 ** (levels - 1)
  _check(m.input_size % side == 0,
         f'model.input_size {m.input_size} must be divisible by {side} (one halving per level '
         'after the first)')


def check_diffdis_objective(config):
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.nn.diffdis import ALIGN_MODES, IMAGE_NULLS
  from diffdis_jax.objectives.diffdis import POSITIVES, QUERY_KINDS
  d = config.diffdis
  _one_of(d.align_mode, ALIGN_MODES, 'diffdis.align_mode')
  _one_of(d.image_null, IMAGE_NULLS, 'diffdis.image_null')
  _one_of(d.text_prediction, ('x0', 'epsilon'), 'diffdis.text_prediction')
  _one_of(d.image_prediction, ('epsilon', 'v_prediction'), 'diffdis.image_prediction')
  _one_of(d.positives, POSITIVES, 'diffdis.positives')
  _one_of(d.query, QUERY_KINDS, 'diffdis.query')
  for field in ('gen_weight', 'align_weight', 'regression_weight'):
    _check(d[field] >= 0, f'diffdis.{field} must be >= 0, got {d[field]}')
  _check(d.gen_weight > 0 or (d.align_mode != 'none' and d.align_weight > 0),
         'nothing to train: diffdis.gen_weight is 0 and there is no alignment loss; set '
         '--config.diffdis.gen_weight>0 or align_mode diffusion/contrastive with align_weight>0')
  for field in ('context_dropout', 'image_dropout'):
    _check(0.0 <= d[field] < 1.0, f'diffdis.{field} must be in [0, 1), got {d[field]}')
  _check(d.gamma > 0, f'diffdis.gamma must be > 0, got {d.gamma}')
  _check(0 <= d.align_image_timestep < d.num_train_timesteps,
         f'diffdis.align_image_timestep must be in [0, {d.num_train_timesteps})')
  if d.align_mode != 'none':
    _check(d.head_blocks >= 1, 'diffdis.head_blocks must be >= 1 with a text head')
  for field in ('zeroshot.steps', 'sample.steps'):
    value = d.zeroshot.steps if field == 'zeroshot.steps' else d.sample.steps
    _check(1 <= value <= d.num_train_timesteps,
           f'diffdis.{field} must be in [1, {d.num_train_timesteps}], got {value}')


def check_diffdis_init(config):
  """With init.sd_folder, config.model must describe the folder's UNet (its weights load
  unchanged) and diffdis.context_dim its cross-attention width."""
  folder = config.init.sd_folder
  if not folder:
    return
  path = os.path.join(folder, 'unet', 'config.json')
  _check(os.path.isfile(path),
         f'init.sd_folder={folder!r} is not a diffusers Stable Diffusion folder (no '
         'unet/config.json); pass --config.init.sd_folder=/path/to/sd-1.5')
  from diffdis_jax.build import UNET_FIELDS  # pylint: disable=g-import-not-at-top
  from diffdis_jax.nn.unet import UNet2DCondition  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    theirs = json.load(f)
  defaults = UNet2DCondition()
  norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  wanted = {k: theirs.get(k, getattr(defaults, k)) for k in UNET_FIELDS + ('in_channels',)}
  wanted['context_dim'] = theirs.get('cross_attention_dim', 1280)
  mine = {k: config.model[k] for k in UNET_FIELDS + ('in_channels',)}
  mine['context_dim'] = config.diffdis.context_dim
  diff = [f'{k}={norm(wanted[k])!r}' for k in wanted if norm(wanted[k]) != norm(mine[k])]
  _check(not diff, f'config.model does not match the UNet of {folder}: set ' + ', '.join(
      f'model.{d}' if not d.startswith('context_dim') else f'diffdis.{d}' for d in diff))


def check_diffdis_data(config):
  m, d = config.model, config.diffdis
  _one_of(config.data.name, DIFFDIS_DATASETS, 'data.name')
  if config.data.name == 'captioned_digits':
    _check(m.in_channels == 1 and m.input_size == config.data.image_size,
           'captioned digits are pixels: they need model.in_channels=1 and '
           'model.input_size=data.image_size')
    t = config.text_encoder
    _check(t.hidden_size == d.context_dim and t.projection_dim == d.text_dim,
           'the demo text encoder makes c and e: set text_encoder.hidden_size = '
           'diffdis.context_dim and text_encoder.projection_dim = diffdis.text_dim')
    _check(t.hidden_size % t.num_attention_heads == 0,
           f'text_encoder.hidden_size {t.hidden_size} is not divisible by '
           f'text_encoder.num_attention_heads {t.num_attention_heads}')
  else:
    check_pairs(config)


def _read_json(path: str, what: str) -> dict:
  _check(os.path.isfile(path), f'{path} not found: {what}')
  with open(path) as f:
    return json.load(f)


def check_shards(spec: str, field: str, if_none: str) -> list[str]:
  """The caption shards `spec` names (data/captions.find_shards), each of a known format;
  `if_none` is the line said when there are none."""
  from diffdis_jax.data.captions import find_shards, shard_format  # pylint: disable=g-import-not-at-top
  shards = find_shards(spec)
  _check(bool(shards), if_none)
  try:
    for path in shards:
      shard_format(path)
  except ValueError as err:
    raise ConfigError(f'{field}: {err}') from None
  return shards


def check_pairs(config):
  """image_text_pairs: shards in data.dir, SD's VAE matching the UNet's latents, and a text
  encoder whose outputs have the widths diffdis.context_dim / text_dim name."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.weights.stable_diffusion import clip_text_has_projection
  m, d, folder = config.model, config.diffdis, config.init.sd_folder
  _check(bool(folder), 'data.name=image_text_pairs starts from Stable Diffusion: pass '
                       '--config.init.sd_folder=/path/to/sd-1.5 (a diffusers folder)')
  data_dir = config.data.dir
  _check(bool(data_dir), 'data.dir is empty; pass --config.data.dir=<folder of caption shards '
                         '(*.tar, *.tfrecord, *.array_record) or a glob of them>')
  check_shards(data_dir, 'data.dir', f'data.dir={data_dir!r} holds no caption shards (*.tar, '
               '*.tfrecord*, *.array_record*); see docs/data.md for their layout')
  vae = _read_json(os.path.join(folder, 'vae', 'config.json'),
                   f'init.sd_folder={folder!r} has no VAE (vae/config.json)')
  _check(vae.get('latent_channels', 4) == m.in_channels,
         f"the VAE of {folder} makes {vae.get('latent_channels', 4)}-channel latents but "
         f'model.in_channels={m.in_channels}')
  text_dir = config.init.text_encoder or os.path.join(folder, 'text_encoder')
  text = _read_json(os.path.join(text_dir, 'config.json'),
                    'no text encoder there; pass --config.init.text_encoder=<a transformers '
                    'CLIP text encoder folder>')
  text = text.get('text_config', text)
  _check(d.context_length <= text.get('max_position_embeddings', 77),
         f'diffdis.context_length {d.context_length} exceeds the text encoder\'s '
         f"{text.get('max_position_embeddings', 77)} positions")
  _check(text.get('hidden_size') == d.context_dim,
         f"the text encoder in {text_dir} is {text.get('hidden_size')} wide but "
         f'diffdis.context_dim={d.context_dim}')
  if d.query == 'projected_eot':
    _check(clip_text_has_projection(text_dir),
           f'diffdis.query=projected_eot needs the text projection, which {text_dir} lacks '
           '(SD 1.x ships CLIP\'s text tower without it): pass --config.init.text_encoder=<a '
           'CLIPTextModelWithProjection folder of the same CLIP> or --config.diffdis.query=eot')
  width = text.get('projection_dim', 768) if d.query == 'projected_eot' else text['hidden_size']
  _check(width == d.text_dim, f'the text query of {text_dir} is {width} wide but '
                              f'diffdis.text_dim={d.text_dim}; pass --config.diffdis.text_dim='
                              f'{width}')


CHECKS = (check_diffdis_model, check_diffdis_objective, check_diffdis_init, check_diffdis_data)
