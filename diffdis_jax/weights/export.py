"""Our Flax models written back out as diffusers folders: the AutoencoderKL, and a DiT as a
`DiTTransformer2DModel`.

The inverse of `from_diffusers_vae` / `load_vae` and of `from_diffusers_dit`: a VAE fine-tuned
or trained here (on a dataset with other channels, say) can be opened by
`diffusers.AutoencoderKL.from_pretrained`, a DiT trained here by
`diffusers.DiTTransformer2DModel.from_pretrained` (and sampled by `DiTPipeline` when it was
trained on DiT's DDPM objective), with no other conversion script.

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
from diffdis_jax.nn import token_ops
from diffdis_jax.nn.dit import SDDiT
from diffdis_jax.nn.vae import AutoencoderKL
from diffdis_jax.weights import dit as dit_names
from diffdis_jax.weights.convert import WeightMismatchError, expected_params
from diffdis_jax.weights.stable_diffusion import VAE_WEIGHTS

# Applied to the dotted PyTorch-style name, after `name_3` -> `name.3`.
_VAE_ATTENTION_RULES = [(r'(attentions\.\d+)\.attention\.query\.', r'\1.to_q.'),
                        (r'(attentions\.\d+)\.attention\.key\.', r'\1.to_k.'),
                        (r'(attentions\.\d+)\.attention\.value\.', r'\1.to_v.'),
                        (r'(attentions\.\d+)\.attention\.out\.', r'\1.to_out.0.')]


def _torch_entry(path: tuple[str, ...], value: np.ndarray,
                 list_index: str = r'_(\d+)$') -> tuple[str, np.ndarray]:
  """(PyTorch key, array in PyTorch layout) of one of our params, by the wrapper it sits in.
  A module name matching `list_index` is a PyTorch list entry: `name_3` -> `name.3`."""
  *module, wrapper, leaf = path
  if wrapper == 'conv' and leaf == 'kernel' and value.ndim == 4:
    leaf, value = 'weight', value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  elif wrapper == 'dense' and leaf == 'kernel' and value.ndim == 2:
    leaf, value = 'weight', value.T
  elif wrapper == 'norm' and leaf == 'scale':
    leaf = 'weight'
  elif leaf != 'bias' or wrapper not in ('conv', 'dense', 'norm'):
    raise ValueError(f'no diffusers layout for param {"/".join(path)} {value.shape}')
  key = '.'.join([re.sub(list_index, r'.\1', name) for name in module] + [leaf])
  return key, value


def _matching_params(module, params, what: str, *inputs) -> dict:
  """The flat float32 params, after checking they are exactly the tree `module.init(*inputs)`
  builds (boxed or not): a config that does not describe the weights is a broken export."""
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(params))
  expected = expected_params(module, *inputs)
  missing = ['/'.join(p) for p in expected if p not in flat]
  unexpected = [f'{"/".join(p)} {tuple(np.shape(v))}' for p, v in flat.items()
                if expected.get(p) != tuple(np.shape(v))]
  if missing or unexpected:
    raise WeightMismatchError(
        f'{what} export: params do not match the module ({len(missing)} missing, '
        f'{len(unexpected)} unexpected or mis-shaped):\n  '
        + '\n  '.join(missing + unexpected))
  return {p: np.asarray(v, np.float32) for p, v in flat.items()}


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
  side = 2 ** levels
  flat = _matching_params(vae, params, 'AutoencoderKL',
                          jnp.zeros((1, side, side, vae.in_channels)))
  state_dict = {}
  for path, value in flat.items():
    key, array = _torch_entry(path, value)
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
  config, state_dict = to_diffusers_vae(vae, params, sample_size)
  return _write_diffusers_folder(folder, config, state_dict, VAE_WEIGHTS,
                                 'the exported VAE weights')


def _write_diffusers_folder(folder, config: dict, state_dict: dict, weights_name: str,
                            what: str) -> str:
  """config.json, then the safetensors weights, each atomically, into `folder`."""
  folder = os.fspath(folder)
  os.makedirs(folder, exist_ok=True)
  files.write_json(os.path.join(folder, 'config.json'), config)
  with files.atomic_path(os.path.join(folder, weights_name), what=what,
                         needed=sum(a.nbytes for a in state_dict.values())) as tmp:
    safetensors.numpy.save_file(state_dict, tmp, metadata={'format': 'pt'})
  return folder


# An SD-DiT whose stack is a DiT (decoder_mode='split') also holds what only training reads:
# the teacher's projection head, and the mask token that fills masked positions. Sampling
# (no mask) never runs either, so the export leaves them out.
TRAINING_ONLY = ('projection_head', 'mask_token')
DIT_WEIGHTS = VAE_WEIGHTS   # diffusers' one file name for a model's weights


def dit_export_problem(model: SDDiT):
  """Why `model` has no exact DiTTransformer2DModel, or None: diffusers' DiT is the stack
  alone (no separate decoder), with a 4x MLP and its time embedding's frequency shift of 1."""
  if model.decoder_mode != 'split':
    return (f"decoder_mode={model.decoder_mode!r} adds a separate decoder stack (MaskDiT's "
            "layout), which DiTTransformer2DModel does not have; only a DiT exports "
            "(model.decoder_mode='split')")
  if model.mlp_ratio != 4.0:
    return f'mlp_ratio={model.mlp_ratio}: DiTTransformer2DModel\'s MLP is 4x wide'
  if model.time_freq_shift != 1.0:
    return (f'its time embedding has frequency shift {model.time_freq_shift:g} '
            "(facebookresearch/DiT's), DiTTransformer2DModel's has 1, and the two embed a "
            'time differently; train with model.time_freq_shift=1 to export')
  return None


def to_diffusers_dit(model: SDDiT, params) -> tuple[dict, dict[str, np.ndarray]]:
  """(config, state dict) of diffusers' DiTTransformer2DModel holding `model` with `params`
  (float32 numpy, PyTorch layout); ValueError when the model has no such form
  (`dit_export_problem`), WeightMismatchError when params are not the model's."""
  problem = dit_export_problem(model)
  if problem:
    raise ValueError(f'not exportable as a DiTTransformer2DModel: {problem}')
  dit = model.clone(head=None, infill='noisy')
  params = {k: v for k, v in flax.core.meta.unbox(params).items() if k not in TRAINING_ONLY}
  n, c = model.input_size, model.in_channels
  flat = _matching_params(dit, params, 'DiT', jnp.zeros((1, n, n, c)), jnp.zeros((1,)),
                          jnp.zeros((1,), jnp.int32))
  config = {
      '_class_name': 'DiTTransformer2DModel', 'num_attention_heads': model.num_heads,
      'attention_head_dim': model.width // model.num_heads, 'in_channels': c,
      'out_channels': c * (2 if model.learn_sigma else 1), 'num_layers': model.depth,
      'dropout': 0.0, 'norm_num_groups': 32, 'attention_bias': True, 'sample_size': n,
      'patch_size': model.patch, 'activation_fn': 'gelu-approximate',
      'num_embeds_ada_norm': model.num_classes, 'upcast_attention': False,
      'norm_type': 'ada_norm_zero', 'norm_elementwise_affine': False,
      'norm_eps': 1e-6,   # DiT's LayerNorms' (diffusers' default 1e-5 differs by ~1e-6)
  }
  p, rules = model.patch, dit_names.renames('export')
  grid = n // p
  state_dict = {f'{dit_names.DIFFUSERS_PATCH_EMBED}.weight':   # Dense on patches -> conv
                    flat.pop(('x_embedder', 'proj', 'dense', 'kernel'))
                    .reshape(p, p, c, model.width).transpose(3, 2, 0, 1),
                f'{dit_names.DIFFUSERS_PATCH_EMBED}.bias':
                    flat.pop(('x_embedder', 'proj', 'dense', 'bias')),
                'pos_embed.pos_embed': token_ops.sincos_2d(model.width, grid, grid)[None]}
  table = flat.pop(('y_embedder', 'embedding_table'))
  # blocks_3 is PyTorch's blocks.3; the embedder's linear_1 is its own name
  entries = [('y_embedder.embedding_table', table)] + [
      _torch_entry(path, value, list_index=r'(?<=^blocks)_(\d+)$') for path, value in flat.items()]
  shared = dit_names.DIFFUSERS_EMBEDDER_COPY.format(i=0)
  for key, array in entries:
    for pattern, repl in rules:
      key = re.sub(pattern, repl, key)
    copies = range(model.depth) if key.startswith(shared) else [None]
    for i in copies:   # diffusers keeps the embedders once per block, all equal
      name = key if i is None else dit_names.DIFFUSERS_EMBEDDER_COPY.format(i=i) + key[
          len(shared):]
      state_dict[name] = array
  return config, {k: np.ascontiguousarray(v, np.float32) for k, v in state_dict.items()}


def save_diffusers_dit(folder, model: SDDiT, params) -> str:
  """Writes config.json and diffusion_pytorch_model.safetensors of a DiTTransformer2DModel
  into `folder` (created if needed), each atomically, the config first (as
  save_diffusers_vae); returns the folder. `from_diffusers_dit` reads it back exactly."""
  config, state_dict = to_diffusers_dit(model, params)
  return _write_diffusers_folder(folder, config, state_dict, DIT_WEIGHTS,
                                 'the exported DiT weights')
