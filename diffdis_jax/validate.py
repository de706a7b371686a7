"""Checks of a config before anything is compiled or written.

Every problem is reported as one `ConfigError` line that says what is wrong and how to fix it.
`validate` runs the checks every run shares, then the method's own checks (METHOD_CHECKS: one
function per concern, so each method's model, objective and data are checked separately),
then the mesh checks.
"""
from __future__ import annotations

import json
import os

from diffdis_jax.diffusion.edm import TEACHER_SIGMA_POLICIES

DATASETS = ('digits', 'imagenet256_latents')               # SD-DiT
DIFFDIS_DATASETS = ('captioned_digits', 'image_text_pairs')  # DiffDis


class ConfigError(ValueError):
  pass


def _check(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def _one_of(value, allowed, field: str):
  _check(value in allowed, f'{field}={value!r} is not one of {list(allowed)}; '
                           f'pass --config.{field}=<one of them>')


def validate(config, num_devices: int | None = None):
  """Raise ConfigError on the first problem found. `num_devices` enables the mesh checks."""
  check_common(config)
  for check in METHOD_CHECKS[config.method]:
    check(config)
  if num_devices is not None:
    check_mesh(config, num_devices)


# ----------------------------------------------------------------------------- every method


def check_common(config):
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.build import DTYPES
  from diffdis_jax.objectives import OBJECTIVES

  _one_of(config.method, sorted(set(OBJECTIVES) & set(METHOD_CHECKS)), 'method')
  for field in ('total_steps', 'batch_size', 'log_every', 'checkpoint_every', 'sample_every',
                'keep_checkpoints'):
    value = config[field]
    _check(isinstance(value, int) and value > 0,
           f'{field} must be a positive integer, got {value!r}; pass --config.{field}=N')
  _check(0.0 <= config.ema_decay < 1.0, f'ema_decay must be in [0, 1), got {config.ema_decay}')
  _one_of(config.nonfinite, ('skip', 'stop'), 'nonfinite')
  _one_of(config.compute_dtype, sorted(DTYPES), 'compute_dtype')


def check_mesh(config, num_devices: int):
  from diffdis_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  try:
    sizes = mesh_lib.resolve_mesh_shape(config.mesh, num_devices)
  except mesh_lib.MeshError as e:
    raise ConfigError(str(e)) from None
  dp = sizes[0] * sizes[1]
  _check(config.batch_size % dp == 0,
         f'batch_size {config.batch_size} is not divisible by the data-parallel size {dp} '
         '(mesh.data * mesh.fsdp); change --config.batch_size or the mesh')


# ----------------------------------------------------------------------------- SD-DiT


def check_sddit_model(config):
  from diffdis_jax.nn.dit import parse_dit_name  # pylint: disable=g-import-not-at-top
  m = config.model
  try:
    depth, width, heads, patch = parse_dit_name(m.name)
  except ValueError as e:
    raise ConfigError(f'model.name: {e}') from None
  width, heads, depth = m.width or width, m.num_heads or heads, m.depth or depth
  _check(width % heads == 0, f'model width {width} is not divisible by {heads} heads')
  _check(m.input_size % patch == 0,
         f'model.input_size {m.input_size} is not divisible by the patch size {patch}')
  _one_of(m.decoder_mode, ('separate', 'split'), 'model.decoder_mode')
  _one_of(m.infill, ('noisy', 'mask_token'), 'model.infill')
  if m.decoder_mode == 'split':
    _check(0 <= m.decoder_depth <= depth,
           f'model.decoder_depth {m.decoder_depth} must be between 0 and the depth {depth}')
  else:
    _check(m.decoder_depth >= 1 and m.decoder_width % m.decoder_heads == 0,
           'a separate decoder needs decoder_depth >= 1 and decoder_width divisible by '
           'decoder_heads')


def check_sddit_objective(config):
  s = config.sddit
  _check(0.0 <= s.mask_ratio < 1.0, f'sddit.mask_ratio must be in [0, 1), got {s.mask_ratio}')
  _check(s.dis_weight >= 0, f'sddit.dis_weight must be >= 0, got {s.dis_weight}')
  _one_of(s.teacher_sigma, TEACHER_SIGMA_POLICIES, 'sddit.teacher_sigma')
  _one_of(s.gen_loss_tokens, ('all', 'visible'), 'sddit.gen_loss_tokens')
  _check(not (s.gen_loss_tokens == 'visible' and s.mask_ratio == 0 and s.masked_recon_weight),
         'sddit.masked_recon_weight needs a mask: set sddit.mask_ratio > 0')
  _one_of(config.sample.solver, ('heun', 'euler'), 'sample.solver')
  _check(config.sample.steps >= 1, 'sample.steps must be >= 1')


def check_sddit_data(config):
  m = config.model
  _one_of(config.data.name, DATASETS, 'data.name')
  if config.data.name == 'digits':
    _check(m.num_classes == 10 and m.in_channels == 1 and m.input_size == config.data.image_size,
           'the digits data needs model.num_classes=10, model.in_channels=1 and '
           'model.input_size=data.image_size')
  elif not config.data.dir or not os.path.isdir(config.data.dir):
    raise ConfigError(
        f'dataset {config.data.name} not found at data.dir={config.data.dir!r}; prepare it with '
        '`python launch/main.py --mode=extract_latents --config=<this config> --workdir=DIR` '
        '(see README, "ImageNet latents") and pass --config.data.dir=DIR')


# ----------------------------------------------------------------------------- DiffDis


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
    _check(bool(config.init.sd_folder),
           'data.name=image_text_pairs starts from Stable Diffusion: pass '
           '--config.init.sd_folder=/path/to/sd-1.5 (a diffusers folder)')
    raise ConfigError(
        'data.name=image_text_pairs: the image-text pair pipeline (SD latents + CLIP c and e '
        'per caption) does not exist yet (issue 6); use configs/demo_diffdis.py meanwhile')


# method -> its checks, run in order after check_common
METHOD_CHECKS = {
    'sddit': (check_sddit_model, check_sddit_objective, check_sddit_data),
    'diffdis': (check_diffdis_model, check_diffdis_objective, check_diffdis_init,
                check_diffdis_data),
}
