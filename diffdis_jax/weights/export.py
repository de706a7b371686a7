"""Our Flax AutoencoderKL written back out as a diffusers AutoencoderKL folder.

The inverse of `from_diffusers_vae` / `load_vae`: a VAE fine-tuned or trained here (on a
dataset with other channels, say) can be opened by `diffusers.AutoencoderKL.from_pretrained`,
used in a diffusers pipeline, or read back by `load_vae`, with no other conversion script.

The layout rules mirror `convert._place`: our params sit one wrapper module below the
diffusers module they stand for (`.../conv/kernel`, `.../dense/kernel`, `.../norm/scale`);
conv kernels go HWIO -> OIHW, Dense kernels are transposed, a norm's scale is its weight,
Flax submodule names `name_3` become PyTorch list indices `name.3`, and the mid-block
attention's query/key/value/out become diffusers' to_q/to_k/to_v/to_out.0.
"""
from __future__ import annotations

import os
import re

import flax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from diffdis_jax.core import files
from diffdis_jax.nn.vae import AutoencoderKL
from diffdis_jax.weights.convert import WeightMismatchError, expected_params
from diffdis_jax.weights.stable_diffusion import VAE_WEIGHTS

# Applied to the dotted PyTorch-style name, after `name_3` -> `name.3`.
_VAE_ATTENTION_RULES = [(r'(attentions\.\d+)\.attention\.query\.', r'\1.to_q.'),
                        (r'(attentions\.\d+)\.attention\.key\.', r'\1.to_k.'),
                        (r'(attentions\.\d+)\.attention\.value\.', r'\1.to_v.'),
                        (r'(attentions\.\d+)\.attention\.out\.', r'\1.to_out.0.')]


def _torch_entry(path: tuple[str, ...], value: np.ndarray) -> tuple[str, np.ndarray]:
  """(PyTorch key, array in PyTorch layout) of one of our params, by the wrapper it sits in."""
  *module, wrapper, leaf = path
  if wrapper == 'conv' and leaf == 'kernel' and value.ndim == 4:
    leaf, value = 'weight', value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  elif wrapper == 'dense' and leaf == 'kernel' and value.ndim == 2:
    leaf, value = 'weight', value.T
  elif wrapper == 'norm' and leaf == 'scale':
    leaf = 'weight'
  elif leaf != 'bias' or wrapper not in ('conv', 'dense', 'norm'):
    raise ValueError(f'no diffusers layout for param {"/".join(path)} {value.shape}')
  key = '.'.join([re.sub(r'_(\d+)$', r'.\1', name) for name in module] + [leaf])
  return key, value


def to_diffusers_vae(vae: AutoencoderKL, params, sample_size: int = 32
                     ) -> tuple[dict, dict[str, np.ndarray]]:
  """(config, state dict) of diffusers' AutoencoderKL holding `vae` with `params`.

  The state dict is float32 numpy in PyTorch layout (bfloat16 params are widened). `params`
  must be exactly the tree `vae.init` builds (boxed or not); anything else raises
  WeightMismatchError, since a config that does not describe the weights is a broken export.
  `sample_size` only fills the config field diffusers uses as its default image size.
  """
  levels = len(vae.block_out_channels)
  config = {
      '_class_name': 'AutoencoderKL',
      'in_channels': vae.in_channels, 'out_channels': vae.out_channels,
      'down_block_types': ['DownEncoderBlock2D'] * levels,
      'up_block_types': ['UpDecoderBlock2D'] * levels,
      'block_out_channels': [int(c) for c in vae.block_out_channels],
      'layers_per_block': vae.layers_per_block, 'act_fn': 'silu',
      'latent_channels': vae.latent_channels, 'norm_num_groups': vae.norm_num_groups,
      'sample_size': sample_size, 'scaling_factor': float(vae.scaling_factor),
      'shift_factor': None if vae.shift_factor is None else float(vae.shift_factor),
      'use_quant_conv': vae.use_quant_conv, 'use_post_quant_conv': vae.use_post_quant_conv,
      'mid_block_add_attention': vae.mid_block_add_attention, 'force_upcast': True,
  }
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(params))
  side = 2 ** levels
  expected = expected_params(vae, jnp.zeros((1, side, side, vae.in_channels)))
  missing = ['/'.join(p) for p in expected if p not in flat]
  unexpected = [f'{"/".join(p)} {tuple(np.shape(v))}' for p, v in flat.items()
                if expected.get(p) != tuple(np.shape(v))]
  if missing or unexpected:
    raise WeightMismatchError(
        f'AutoencoderKL export: params do not match the module ({len(missing)} missing, '
        f'{len(unexpected)} unexpected or mis-shaped):\n  '
        + '\n  '.join(missing + unexpected))
  state_dict = {}
  for path, value in flat.items():
    key, array = _torch_entry(path, np.asarray(value, np.float32))
    for pattern, repl in _VAE_ATTENTION_RULES:
      key = re.sub(pattern, repl, key)
    state_dict[key] = np.ascontiguousarray(array)
  return config, state_dict


def save_diffusers_vae(folder, vae: AutoencoderKL, params, sample_size: int = 32) -> str:
  """Writes config.json and diffusion_pytorch_model.safetensors into `folder` (created if
  needed), each atomically; returns the folder. `load_vae(folder)` reads it back exactly.

  The config is written first: a first export cut short leaves no weights file, which
  `load_vae` refuses, rather than weights it would pair with its default SD config.
  """
  folder = os.fspath(folder)
  config, state_dict = to_diffusers_vae(vae, params, sample_size)
  os.makedirs(folder, exist_ok=True)
  files.write_json(os.path.join(folder, 'config.json'), config)
  with files.atomic_path(os.path.join(folder, VAE_WEIGHTS), what='the exported VAE weights',
                         needed=sum(a.nbytes for a in state_dict.values())) as tmp:
    safetensors.numpy.save_file(state_dict, tmp, metadata={'format': 'pt'})
  return folder
