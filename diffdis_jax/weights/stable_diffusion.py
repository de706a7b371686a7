"""Stable Diffusion components from diffusers / transformers safetensors: UNet, VAE, CLIP text.

Each `from_*` takes the component's config.json as a dict and its state dict (numpy or
anything `np.asarray` accepts) and returns (module, params); see the modules' docstrings for
their apply signatures. `load_stable_diffusion` reads a whole diffusers-layout folder.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from diffdis_jax.nn.clip_text import CLIPTextModel
from diffdis_jax.nn.unet import UNet2DCondition
from diffdis_jax.nn.vae import AutoencoderKL
from diffdis_jax.weights.convert import (check_config, config_value, convert_state_dict,
                                         expected_params, load_safetensors, PICKLE_SUFFIXES)

# Attention and feed-forward names shared by the UNet's transformer blocks.
_ATTENTION_RULES = [(r'\.to_q\.', '.query.'), (r'\.to_k\.', '.key.'), (r'\.to_v\.', '.value.'),
                    (r'\.to_out\.0\.', '.out.'),
                    (r'\.ff\.net\.0\.proj\.', '.ff.fc1.'), (r'\.ff\.net\.2\.', '.ff.fc2.')]

# diffusers UNet2DConditionModel config values other than these change the network in ways
# this port does not implement; refuse them rather than compute something else.
_UNET_SUPPORTED = {
    'act_fn': ['silu'], 'mid_block_type': ['UNetMidBlock2DCrossAttn', None],
    'class_embed_type': [None], 'addition_embed_type': [None], 'encoder_hid_dim': [None],
    'resnet_time_scale_shift': ['default'], 'time_embedding_type': ['positional'],
    'only_cross_attention': [False], 'dual_cross_attention': [False],
    'conv_in_kernel': [3], 'conv_out_kernel': [3], 'center_input_sample': [False],
    'mid_block_scale_factor': [1, 1.0], 'resnet_out_scale_factor': [1, 1.0],
    'time_cond_proj_dim': [None], 'attention_type': ['default'], 'cross_attention_norm': [None],
    'time_embedding_dim': [None], 'time_embedding_act_fn': [None], 'timestep_post_act': [None],
    'reverse_transformer_layers_per_block': [None], 'class_embeddings_concat': [False],
    'resnet_skip_time_act': [False], 'mid_block_only_cross_attention': [None, False],
    'num_class_embeds': [None], 'addition_time_embed_dim': [None],
}


def _as_tuple(value):
  return value if isinstance(value, int) else tuple(value)


def from_diffusers_unet(config: Mapping, state_dict: Mapping[str, np.ndarray], *,
                        dtype=jnp.float32, attention_impl: Optional[str] = None):
  """(UNet2DCondition, params) from a diffusers UNet2DConditionModel config and state dict."""
  what = 'UNet2DConditionModel'
  check_config(config, what, _UNET_SUPPORTED)
  cross_dim = config_value(config, 'cross_attention_dim', 1280)
  if not isinstance(cross_dim, int):
    raise ValueError(f'{what}: per-level cross_attention_dim {cross_dim} is not supported')
  levels = len(config_value(config, 'block_out_channels', (320, 640, 1280, 1280)))
  defaults = UNet2DCondition()
  fields = {}
  for name in ('in_channels', 'out_channels', 'block_out_channels', 'down_block_types',
               'up_block_types', 'layers_per_block', 'attention_head_dim', 'num_attention_heads',
               'transformer_layers_per_block', 'use_linear_projection', 'norm_num_groups',
               'norm_eps', 'flip_sin_to_cos', 'freq_shift', 'downsample_padding'):
    value = config_value(config, name, getattr(defaults, name))
    fields[name] = value if isinstance(value, (int, float, bool, str)) or value is None \
        else _as_tuple(value)
  unet = UNet2DCondition(**fields, mid_block_type=config.get('mid_block_type',
                                                              'UNetMidBlock2DCrossAttn'),
                         attention_impl=attention_impl, dtype=dtype)
  side = 2 ** (levels - 1)
  expected = expected_params(unet, jnp.zeros((1, side, side, fields['in_channels'])),
                             jnp.zeros((1,)), jnp.zeros((1, 1, cross_dim)))
  return unet, convert_state_dict(state_dict, expected, _ATTENTION_RULES, what=what)


def from_diffusers_vae(config: Mapping, state_dict: Mapping[str, np.ndarray], *,
                       dtype=jnp.float32):
  """(AutoencoderKL, params) from a diffusers AutoencoderKL config and state dict.

  Accepts both current attention names (to_q, ..., to_out.0) and the deprecated ones
  (query, key, value, proj_attn) that older SD VAE files carry.
  """
  what = 'AutoencoderKL'
  for name, types in (('down_block_types', ['DownEncoderBlock2D']),
                      ('up_block_types', ['UpDecoderBlock2D'])):
    if any(t not in types for t in config.get(name, types)):
      raise ValueError(f'{what}: unsupported {name} {config[name]}')
  check_config(config, what, {'act_fn': ['silu']})
  defaults = AutoencoderKL()
  fields = {name: config_value(config, name, getattr(defaults, name)) for name in (
      'in_channels', 'out_channels', 'layers_per_block', 'latent_channels', 'norm_num_groups',
      'scaling_factor', 'shift_factor', 'use_quant_conv', 'use_post_quant_conv',
      'mid_block_add_attention')}
  fields['shift_factor'] = config.get('shift_factor')
  fields['block_out_channels'] = tuple(config_value(config, 'block_out_channels',
                                                    defaults.block_out_channels))
  vae = AutoencoderKL(**fields, dtype=dtype)
  side = 2 ** len(fields['block_out_channels'])
  expected = expected_params(vae, jnp.zeros((1, side, side, fields['in_channels'])))
  attn = r'(mid_block\.attentions\.0)\.'
  rules = [(attn + r'(?:to_q|query)\.', r'\1.attention.query.'),
           (attn + r'(?:to_k|key)\.', r'\1.attention.key.'),
           (attn + r'(?:to_v|value)\.', r'\1.attention.value.'),
           (attn + r'(?:to_out\.0|proj_attn)\.', r'\1.attention.out.')]
  return vae, convert_state_dict(state_dict, expected, rules, what=what)


_CLIP_ACTIVATIONS = {'quick_gelu': 'quick_gelu', 'gelu': 'gelu', 'gelu_new': 'gelu_tanh',
                     'gelu_pytorch_tanh': 'gelu_tanh'}


def from_transformers_clip_text(config: Mapping, state_dict: Mapping[str, np.ndarray], *,
                                dtype=jnp.float32, attention_impl: Optional[str] = None):
  """(CLIPTextModel, params) from a transformers CLIPTextModel or CLIPTextModelWithProjection
  config and state dict. The projection is built when the config's architecture says so or
  the state dict holds `text_projection.weight`."""
  what = 'CLIPTextModel'
  config = dict(config.get('text_config', config))  # a full CLIPConfig holds it nested
  act = config.get('hidden_act', 'quick_gelu')
  if act not in _CLIP_ACTIVATIONS:
    raise ValueError(f'{what}: unsupported hidden_act {act!r}')
  with_projection = ('CLIPTextModelWithProjection' in (config.get('architectures') or [])
                     or 'text_projection.weight' in state_dict)
  defaults = CLIPTextModel()
  fields = {name: config_value(config, name, getattr(defaults, name)) for name in (
      'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
      'num_attention_heads', 'max_position_embeddings', 'layer_norm_eps', 'eos_token_id')}
  clip = CLIPTextModel(**fields, hidden_act=_CLIP_ACTIVATIONS[act],
                       projection_dim=config_value(config, 'projection_dim', 768)
                       if with_projection else None,
                       attention_impl=attention_impl, dtype=dtype)
  expected = expected_params(clip, jnp.zeros((1, 1), jnp.int32))
  rules = [(r'^text_model\.', ''),
           (r'^embeddings\.(token|position)_embedding\.weight$', r'\1_embedding'),
           (r'^encoder\.layers\.', 'layers.'),
           (r'\.self_attn\.q_proj\.', '.self_attn.query.'),
           (r'\.self_attn\.k_proj\.', '.self_attn.key.'),
           (r'\.self_attn\.v_proj\.', '.self_attn.value.'),
           (r'\.self_attn\.out_proj\.', '.self_attn.out.')]
  return clip, convert_state_dict(state_dict, expected, rules,
                                  ignore=[r'text_model\.embeddings\.position_ids'], what=what)


class StableDiffusion(NamedTuple):
  unet: UNet2DCondition
  unet_params: Any
  vae: AutoencoderKL
  vae_params: Any
  text_encoder: CLIPTextModel
  text_encoder_params: Any
  tokenizer: Any                       # transformers.CLIPTokenizer
  scheduler_config: Optional[dict]     # scheduler/scheduler_config.json when present


def _read_component(folder: str, sub: str, weight_file: str):
  directory = os.path.join(folder, sub)
  config_path = os.path.join(directory, 'config.json')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{config_path} not found: {folder} is not a diffusers-layout '
                            'Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/)')
  with open(config_path) as f:
    config = json.load(f)
  for name in (weight_file, weight_file + '.index.json'):
    if os.path.isfile(os.path.join(directory, name)):
      return config, load_safetensors(os.path.join(directory, name))
  pickles = [n for n in sorted(os.listdir(directory)) if n.endswith(PICKLE_SUFFIXES)]
  if pickles:  # e.g. pytorch_model.bin: let load_safetensors say how to convert
    load_safetensors(os.path.join(directory, pickles[0]))
  raise FileNotFoundError(f'{directory} holds no {weight_file}; found {sorted(os.listdir(directory))}')


def load_stable_diffusion(folder, *, dtype=jnp.float32,
                          attention_impl: Optional[str] = None) -> StableDiffusion:
  """UNet, VAE and CLIP text encoder (with params) and the tokenizer of a diffusers folder.

  The folder is what `StableDiffusionPipeline.save_pretrained(..., safe_serialization=True)`
  writes (or a hub snapshot): unet/ and vae/ with diffusion_pytorch_model.safetensors,
  text_encoder/ with model.safetensors, each beside its config.json, and tokenizer/.
  """
  from transformers import CLIPTokenizer
  folder = os.fspath(folder)
  # Read everything before converting anything, so a bad folder fails fast.
  unet_files = _read_component(folder, 'unet', 'diffusion_pytorch_model.safetensors')
  vae_files = _read_component(folder, 'vae', 'diffusion_pytorch_model.safetensors')
  clip_files = _read_component(folder, 'text_encoder', 'model.safetensors')
  if not os.path.isdir(os.path.join(folder, 'tokenizer')):
    raise FileNotFoundError(f'{folder}/tokenizer not found (vocab.json, merges.txt)')
  unet, unet_params = from_diffusers_unet(*unet_files, dtype=dtype,
                                          attention_impl=attention_impl)
  vae, vae_params = from_diffusers_vae(*vae_files, dtype=dtype)
  clip, clip_params = from_transformers_clip_text(*clip_files, dtype=dtype,
                                                  attention_impl=attention_impl)
  tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, 'tokenizer'))
  scheduler_path = os.path.join(folder, 'scheduler', 'scheduler_config.json')
  scheduler_config = None
  if os.path.isfile(scheduler_path):
    with open(scheduler_path) as f:
      scheduler_config = json.load(f)
  return StableDiffusion(unet, unet_params, vae, vae_params, clip, clip_params, tokenizer,
                         scheduler_config)


VAE_WEIGHTS = 'diffusion_pytorch_model.safetensors'


def _vae_files(path) -> tuple[dict, str]:
  """(config.json as a dict, {} when absent; the weights file) of a VAE path."""
  path = os.fspath(path)
  if os.path.isdir(os.path.join(path, 'vae')):
    path = os.path.join(path, 'vae')
  weights = os.path.join(path, VAE_WEIGHTS) if os.path.isdir(path) else path
  if not os.path.isfile(weights):
    raise FileNotFoundError(f'{path} holds no {VAE_WEIGHTS}; pass a diffusers AutoencoderKL '
                            'folder (or an SD folder holding vae/) or a .safetensors file')
  config_path = os.path.join(os.path.dirname(weights), 'config.json')
  config = {}
  if os.path.isfile(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return config, weights


def vae_config(path) -> dict:
  """The diffusers AutoencoderKL config of a VAE path, without loading its weights: the
  file's own, with SD's defaults (AutoencoderKL's fields) for what it does not say."""
  config, _ = _vae_files(path)
  defaults = AutoencoderKL()
  out = {name: getattr(defaults, name) for name in (
      'in_channels', 'out_channels', 'block_out_channels', 'latent_channels',
      'scaling_factor', 'shift_factor')}
  out.update({k: v for k, v in config.items() if v is not None or k == 'shift_factor'})
  return out


def load_vae(path, *, dtype=jnp.float32):
  """(AutoencoderKL, params) from a diffusers AutoencoderKL folder (config.json beside
  diffusion_pytorch_model.safetensors), a Stable Diffusion folder holding one as vae/, or a
  .safetensors file (its folder's config.json when there is one, else SD's VAE config)."""
  config, weights = _vae_files(path)
  return from_diffusers_vae(config, load_safetensors(weights), dtype=dtype)


def load_clip_text_encoder(directory, *, dtype=jnp.float32, attention_impl: Optional[str] = None):
  """(CLIPTextModel, params) from a transformers text-encoder folder (config.json beside
  model.safetensors), e.g. a CLIPTextModelWithProjection of CLIP ViT-L/14: SD 1.x's own
  text_encoder/ is the same tower without the projection DiffDis' text query uses."""
  config, state_dict = _read_component(os.fspath(directory), '', 'model.safetensors')
  return from_transformers_clip_text(config, state_dict, dtype=dtype,
                                     attention_impl=attention_impl)


def clip_text_has_projection(directory) -> bool:
  """Whether a text-encoder folder holds `text_projection` (read from its config and the
  safetensors header, without loading weights)."""
  with open(os.path.join(directory, 'config.json')) as f:
    config = json.load(f)
  if 'CLIPTextModelWithProjection' in (config.get('architectures') or []):
    return True
  index = os.path.join(directory, 'model.safetensors.index.json')
  if os.path.isfile(index):
    with open(index) as f:
      return 'text_projection.weight' in json.load(f)['weight_map']
  with safe_open(os.path.join(directory, 'model.safetensors'), framework='np') as f:
    return 'text_projection.weight' in f.keys()
