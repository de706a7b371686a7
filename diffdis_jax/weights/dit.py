"""DiT weights from diffusers (`DiTTransformer2DModel`) and from facebookresearch/DiT.

Both load into `diffdis_jax.nn.dit.SDDiT` with `decoder_mode='split'`, whose parameters are
exactly DiT's. The returned module is applied as
  module.apply({'params': params}, x, t, y) -> NHWC output, channels as the checkpoint's
with x NHWC latents, t the integer DDPM timestep as a float, y class ids (`num_classes` is
the null class). With learned sigma the last C channels are the variance interpolation.
"""
from __future__ import annotations

import re
from typing import Mapping

import flax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.nn import token_ops
from diffdis_jax.nn.dit import SDDiT, parse_dit_name
from diffdis_jax.weights.convert import (check_config, config_value, convert_state_dict,
                                         expected_params)

# SDDiT fields a caller may set on an imported DiT: none of them adds or reshapes parameters.
OVERRIDABLE = ('decoder_depth', 'attention_impl', 'remat', 'dtype')


# diffusers' DiTTransformer2DModel names (dotted, `{i}` a block index) and ours (the dotted
# module path, before `blocks.3` becomes `blocks_3`), as prefixes of whole keys. Import
# (from_diffusers_dit) reads it left to right, export (weights/export.py) right to left; the
# patch embedding's conv and the per-block copies of the embedders are the exceptions each
# handles itself. A name ending in '.' is a module prefix, else a whole key.
DIFFUSERS_NAMES = (
    ('transformer_blocks.0.norm1.emb.timestep_embedder.', 't_embedder.'),
    ('transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight',
     'y_embedder.embedding_table'),
    ('transformer_blocks.{i}.norm1.linear.', 'blocks.{i}.adaLN_modulation.'),
    ('transformer_blocks.{i}.attn1.to_q.', 'blocks.{i}.attn.query.'),
    ('transformer_blocks.{i}.attn1.to_k.', 'blocks.{i}.attn.key.'),
    ('transformer_blocks.{i}.attn1.to_v.', 'blocks.{i}.attn.value.'),
    ('transformer_blocks.{i}.attn1.to_out.0.', 'blocks.{i}.attn.out.'),
    ('transformer_blocks.{i}.ff.net.0.proj.', 'blocks.{i}.mlp.fc1.'),
    ('transformer_blocks.{i}.ff.net.2.', 'blocks.{i}.mlp.fc2.'),
    ('proj_out_1.', 'final_layer.adaLN_modulation.'),
    ('proj_out_2.', 'final_layer.linear.'),
)
# diffusers keeps a copy of the timestep and class embedders in every block's norm1
DIFFUSERS_EMBEDDER_COPY = 'transformer_blocks.{i}.norm1.emb.'
DIFFUSERS_PATCH_EMBED = 'pos_embed.proj'


def _name_pattern(name: str) -> str:
  """A DIFFUSERS_NAMES entry as an anchored regex; `{i}` matches (and captures) an index."""
  pattern = '^' + re.escape(name).replace(re.escape('{i}'), r'(\d+)')
  return pattern if name.endswith('.') else pattern + '$'


def renames(direction: str) -> list[tuple[str, str]]:
  """DIFFUSERS_NAMES as (regex, replacement) pairs: 'import' maps diffusers' names to ours,
  'export' ours to diffusers'."""
  pairs = DIFFUSERS_NAMES if direction == 'import' else [(o, t) for t, o in DIFFUSERS_NAMES]
  return [(_name_pattern(src), dst.replace('{i}', r'\1')) for src, dst in pairs]


def _check_overrides(overrides, extra=()):
  bad = sorted(set(overrides) - set(OVERRIDABLE) - set(extra))
  if bad:
    raise TypeError(f'unsupported overrides {bad}; allowed: {sorted(OVERRIDABLE + tuple(extra))}')


def _build(state_dict, rules, special, ignore, what, **fields):
  model = SDDiT(decoder_mode='split', **fields)
  n = model.input_size
  expected = expected_params(model, jnp.zeros((1, n, n, model.in_channels)), jnp.zeros((1,)),
                             jnp.zeros((1,), jnp.int32))
  params = convert_state_dict(state_dict, expected, rules, special, ignore, what=what)
  return model, params


def _patch_embed(prefix: str, target: tuple[str, ...]):
  """A special() for the patch-embedding conv: (out, in, p, p) -> Dense on patchified input
  (`token_ops.patchify` orders a patch as row, column, channel, like an HWIO kernel)."""
  def special(key, value):
    if key == f'{prefix}.weight':
      return [(target + ('dense', 'kernel'),
               value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0]))]
    if key == f'{prefix}.bias':
      return [(target + ('dense', 'bias'), value)]
    return None
  return special


def _learn_sigma(in_channels: int, out_channels: int) -> bool:
  if out_channels not in (in_channels, 2 * in_channels):
    raise ValueError(f'out_channels={out_channels} is neither in_channels={in_channels} nor '
                     'twice it (learned sigma)')
  return out_channels == 2 * in_channels


def from_diffusers_dit(config: Mapping, state_dict: Mapping[str, np.ndarray], **overrides):
  """(SDDiT, params) from a diffusers DiTTransformer2DModel config.json dict and state dict.

  diffusers gives every block its own copy of the timestep/class embedder (all equal in
  converted checkpoints); block 0's is used and the others must equal it. diffusers' DiT
  embeds time with `downscale_freq_shift=1`, hence `time_freq_shift=1.0`. Its MLP LayerNorm
  uses eps=1e-5 where SDDiT uses DiT's 1e-6; the outputs differ by ~1e-6 relative.
  `overrides`: SDDiT fields in OVERRIDABLE (e.g. decoder_depth, dtype).
  """
  _check_overrides(overrides)
  what = 'DiTTransformer2DModel'
  check_config(config, what, {'norm_type': ['ada_norm_zero'],
                              'activation_fn': ['gelu-approximate'],
                              'attention_bias': [True], 'norm_elementwise_affine': [False]})
  heads, head_dim = config['num_attention_heads'], config['attention_head_dim']
  in_channels = config_value(config, 'in_channels', 4)
  depth = config['num_layers']
  _check_embedder_copies(state_dict)
  rules = renames('import')
  ignore = [r'transformer_blocks\.([1-9]\d*)\.norm1\.emb\..*', r'pos_embed\.pos_embed']
  return _build(
      state_dict, rules, _patch_embed(DIFFUSERS_PATCH_EMBED, ('x_embedder', 'proj')), ignore,
      what,
      input_size=config_value(config, 'sample_size', 32), in_channels=in_channels,
      patch=config_value(config, 'patch_size', 2), width=heads * head_dim, depth=depth,
      num_heads=heads, num_classes=config_value(config, 'num_embeds_ada_norm', 1000),
      learn_sigma=_learn_sigma(in_channels, config_value(config, 'out_channels', in_channels)),
      time_freq_shift=1.0, **{'decoder_depth': min(8, depth), **overrides})


def _check_embedder_copies(state_dict):
  differ = []
  for key, value in state_dict.items():
    prefix, sep, rest = key.partition('.norm1.emb.')
    if sep and prefix.startswith('transformer_blocks.') and prefix != 'transformer_blocks.0':
      first = state_dict.get(f'transformer_blocks.0.norm1.emb.{rest}')
      if first is None or not np.array_equal(np.asarray(first), np.asarray(value)):
        differ.append(key)
  if differ:
    raise ValueError('DiTTransformer2DModel: these per-block embedder copies differ from block '
                     '0\'s, which SDDiT shares across blocks: ' + ', '.join(differ))


def from_official_dit(state_dict: Mapping[str, np.ndarray], model: str, *, input_size=None,
                      **overrides):
  """(SDDiT, params) from a facebookresearch/DiT state dict, `model` like 'DiT-XL/2'.

  Their checkpoints (e.g. DiT-XL-2-256x256.pt) are pickles, which this package never
  unpickles. Convert once, in an environment with torch, to safetensors and load that:
    python -c "import sys, torch, safetensors.torch as st; sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); sd = sd.get('ema', sd); st.save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])" DiT-XL-2-256x256.pt dit_xl2_256.safetensors
  then `from_official_dit(load_safetensors('dit_xl2_256.safetensors'), 'DiT-XL/2')`.

  in_channels, num_classes, learned sigma and (from `pos_embed`) the input size are read
  from the weights; `input_size` is needed only if `pos_embed` is absent. The time
  embedding uses freq shift 0, as DiT. `overrides` may also set depth, width and num_heads
  for sizes outside the DiT table.
  """
  _check_overrides(overrides, extra=('depth', 'width', 'num_heads'))
  depth, width, heads, patch = parse_dit_name(model)
  depth, width = overrides.pop('depth', depth), overrides.pop('width', width)
  heads = overrides.pop('num_heads', heads)
  if 'x_embedder.proj.weight' not in state_dict or 'y_embedder.embedding_table.weight' not in \
      state_dict:
    raise ValueError('not a facebookresearch/DiT state dict: x_embedder.proj.weight or '
                     'y_embedder.embedding_table.weight missing')
  in_channels = state_dict['x_embedder.proj.weight'].shape[1]
  num_classes = state_dict['y_embedder.embedding_table.weight'].shape[0] - 1
  out_channels = state_dict['final_layer.linear.weight'].shape[0] // (patch * patch)
  if 'pos_embed' in state_dict:
    grid = int(round(np.sqrt(state_dict['pos_embed'].shape[1])))
    input_size = grid * patch
  elif input_size is None:
    raise ValueError('pos_embed absent from the state dict: pass input_size (latent side)')
  grid = input_size // patch
  pos_embed = token_ops.sincos_2d(width, grid, grid)[None]

  def special(key, value):
    if key == 'pos_embed':  # a fixed table: check it is ours instead of importing it
      if value.shape != pos_embed.shape or not np.allclose(value, pos_embed, atol=1e-5):
        raise ValueError(f'pos_embed {value.shape} is not the sin-cos table of width {width} '
                         f'on a {grid}x{grid} grid: wrong model name for these weights?')
      return []
    name = key.split('.')
    if len(name) == 5 and name[0] == 'blocks' and name[2:4] == ['attn', 'qkv']:
      base = ('blocks_' + name[1], 'attn')
      parts = np.split(value, 3, axis=0)  # rows are [q; k; v]
      leaf = ('kernel',) if name[4] == 'weight' else ('bias',)
      return [(base + (n, 'dense') + leaf, p.T if name[4] == 'weight' else p)
              for n, p in zip(('query', 'key', 'value'), parts)]
    return _patch_embed('x_embedder.proj', ('x_embedder', 'proj'))(key, value)

  rules = [(r'^t_embedder\.mlp\.0\.', 't_embedder.linear_1.'),
           (r'^t_embedder\.mlp\.2\.', 't_embedder.linear_2.'),
           (r'^y_embedder\.embedding_table\.weight$', 'y_embedder.embedding_table'),
           (r'\.attn\.proj\.', '.attn.out.'),
           (r'\.adaLN_modulation\.1\.', '.adaLN_modulation.')]
  return _build(state_dict, rules, special, (), f'facebookresearch/DiT {model}',
                input_size=input_size, in_channels=in_channels, patch=patch, width=width,
                depth=depth, num_heads=heads, num_classes=num_classes,
                learn_sigma=_learn_sigma(in_channels, out_channels), time_freq_shift=0.0,
                **{'decoder_depth': min(8, depth), **overrides})


def with_official_dit(params, state_dict: Mapping[str, np.ndarray], model: str, **overrides):
  """`params` (an SDDiT's, unboxed) with every entry a facebookresearch/DiT checkpoint has at
  the same path and shape taken from it; returns (params, loaded paths, kept paths).

  A DiT baseline (`configs/dit_xl.py`) loads completely. SD-DiT keeps what DiT does not have
  (its separate decoder, projection head) and what differs in shape (the output layer when
  DiT learned sigma and EDM does not), fresh from its own initialisation. Nothing shared:
  a ValueError naming the first paths of each side.
  """
  _, theirs = from_official_dit(state_dict, model, **overrides)
  mine = flax.traverse_util.flatten_dict(dict(params), sep='/')
  theirs = flax.traverse_util.flatten_dict(dict(theirs), sep='/')
  loaded = sorted(k for k in mine if k in theirs and np.shape(mine[k]) == np.shape(theirs[k]))
  if not loaded:
    raise ValueError(f'no DiT parameter fits this model: ours start {sorted(mine)[:3]}, '
                     f'the checkpoint\'s {sorted(theirs)[:3]}')
  merged = dict(mine, **{k: np.asarray(theirs[k]) for k in loaded})
  kept = sorted(set(mine) - set(loaded))
  return flax.traverse_util.unflatten_dict(merged, sep='/'), loaded, kept
