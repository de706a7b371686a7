"""A pretrained start for DiffDis: the UNet of a generation-only run (`align_mode='none'`).

The paper fine-tunes Stable Diffusion, a generator trained first; `init.pretrained_generator`
names the workdir of such a run trained here on the same data, and every variant (DiffDis,
its CLIP-style and align-only baselines, and generation-only training continued) starts from
the UNet of its latest intact checkpoint:

    check_generator(config)                     # ConfigError lines; reads only JSON files
    params, ema = with_generator(config, params, ema)    # host trees, in finish_init

The generator's UNet takes precedence over init.sd_folder's (which then gives only the VAE
and the text encoder). The generator's sampling weights (its EMA) become both the params and the EMA of the new
run, as SD's released (EMA) weights start the paper's fine-tune; the new text-stream
parameters keep their initialisation. The generation pass runs the plain UNet with the text
stream masked (nn/diffdis.py), so the new run starts generating exactly as the generator.

The generator's folder is only read (train/checkpoint.py's read-only Checkpointer): a
checkpoint it cannot read is skipped, not moved, and nothing there is written. A captioned
class set's frozen text encoder is the generator's own (its <workdir>/text_encoder/ cache):
the UNet learned its condition c from that encoder, so a config that would train another
one is refused.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from diffdis_jax.core.checks import ConfigError, check
from diffdis_jax.nn.diffdis import with_unet_params
from diffdis_jax.tasks.diffdis.model import unet_fields
from diffdis_jax.train import checkpoint as ckpt_lib

FIELD = 'init.pretrained_generator'
# what must agree between the generator's config and this one for its UNet to be this UNet
SAME_FIELDS = ('model', 'data.name', 'diffdis.context_length', 'diffdis.context_dim')


def generator_command(path: str) -> str:
  return (f'python launch/main.py --config=<this config> --workdir={path} '
          "--config.diffdis.align_mode=none")


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _get(tree, dotted: str):
  for part in dotted.split('.'):
    tree = tree[part]
  return tree


def _norm(value):
  """JSON and ConfigDict values alike: sequences as tuples, dicts by key."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _norm(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_norm(v) for v in value)
  return value


def generator_config(path: str) -> dict:
  """The generator run's config.json (written by its first training run)."""
  config_file = os.path.join(path, 'config.json')
  check(os.path.isfile(config_file),
        f'{FIELD}={path!r} has no config.json: not the workdir of a DiffDis training run; '
        f'train the generator first: {generator_command(path)}')
  return _read_json(config_file)


def check_generator(config, text_encoder_file=None):
  """One ConfigError line when init.pretrained_generator cannot start this run: no trained
  run there, not a generation-only DiffDis run, a UNet of another shape or condition, or
  (captioned class sets) no text encoder there that fits this config. `text_encoder_file`:
  the file name this config's text encoder is cached under, or None where it has none.
  Reads JSON files and folder listings only."""
  path = config.init.pretrained_generator
  if not path:
    return
  steps = os.path.join(path, 'checkpoints')
  check(os.path.isdir(steps) and any(n.isdigit() for n in os.listdir(steps)),
        f'{FIELD}={path!r} holds no checkpoint ({steps}/<step>); train the generator first: '
        f'{generator_command(path)}')
  theirs = generator_config(path)
  check(theirs.get('method') == 'diffdis' and
        _get(theirs, 'diffdis.align_mode') == 'none',
        f'{FIELD}={path!r} is not a generation-only DiffDis run (method '
        f'{theirs.get("method")!r}, diffdis.align_mode '
        f'{theirs.get("diffdis", {}).get("align_mode")!r}); pass a run trained with '
        '--config.diffdis.align_mode=none')
  mine = {'model': dict(unet_fields(config.model), in_channels=config.model.in_channels,
                        input_size=config.model.input_size)}
  for field in SAME_FIELDS[1:]:
    mine[field] = _get(config, field)
  diff = []
  for field, value in mine.items():
    if field == 'model':
      there = {k: _norm(theirs['model'].get(k)) for k in value}
      diff += [f'model.{k}={there[k]!r} there, {_norm(v)!r} here'
               for k, v in value.items() if _norm(v) != there[k]]
    elif _norm(_get(theirs, field)) != _norm(value):
      diff.append(f'{field}={_get(theirs, field)!r} there, {value!r} here')
  check(not diff, f'the UNet of {FIELD}={path!r} does not fit this config: {"; ".join(diff)}; '
                  'pass the generator\'s fields or another generator')
  vae = lambda data: os.path.realpath(data.get('vae_path') or '')
  check(vae(theirs.get('data', {})) == vae(config.data),
        f'{FIELD}={path!r} was trained on the latents of another VAE (data.vae_path='
        f'{theirs.get("data", {}).get("vae_path")!r} there, {config.data.vae_path!r} here): its '
        'UNet denoises another latent space; pass the same data.vae_path')
  if text_encoder_file is not None:
    folder = os.path.join(path, 'text_encoder')
    check(os.path.isfile(os.path.join(folder, text_encoder_file)),
          f'the text encoder in {folder} does not fit this config (no {text_encoder_file}): '
          f'the generator was conditioned on a text encoder of other text_encoder.* fields '
          'or seed; pass the generator\'s text_encoder fields')
    return
  folder = lambda init: os.path.realpath(init.get('text_encoder') or init.get('sd_folder') or '')
  check(folder(theirs.get('init', {})) == folder(config.init),
        f'the text encoder of {FIELD}={path!r} ({folder(theirs.get("init", {}))}) is not this '
        f'config\'s ({folder(config.init)}): the generator learned its condition from it; pass '
        'the same init.text_encoder / init.sd_folder')


def check_not_own_workdir(config, workdir: str):
  path = config.init.pretrained_generator
  check(not path or os.path.abspath(path) != os.path.abspath(workdir),
        f'{FIELD} is this run\'s own --workdir; the generator must be another run\'s')


def load_generator(path: str) -> dict:
  """The sampling (EMA) parameters of the newest intact checkpoint under `path`, as host
  numpy, read without writing anything there."""
  checkpointer = ckpt_lib.Checkpointer(path, read_only=True)
  try:
    state = checkpointer.restore_latest(('ema_params', 'params'), required=True)
  except FileNotFoundError:
    raise ConfigError(f'{FIELD}={path!r}: none of its checkpoints reads back; train the '
                      f'generator again: {generator_command(path)}') from None
  finally:
    checkpointer.close()
  return state['ema_params']


def with_generator(config, params):
  """(params, ema_params): `params` (host, unboxed) with every plain-UNet entry the
  generator's; the EMA a separate copy (the step donates both)."""
  generator = load_generator(config.init.pretrained_generator)
  try:
    params = with_unet_params(params, generator)
  except ValueError as err:
    raise ConfigError(f'{FIELD}={config.init.pretrained_generator!r}: '
                      f'{str(err).splitlines()[0][:400]}') from None
  return params, jax.tree.map(np.array, params)
