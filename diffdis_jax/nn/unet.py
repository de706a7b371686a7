"""Stable Diffusion's UNet2DConditionModel (SD 1.x and 2.x) in Flax, NHWC.

Apply signature:
  unet.apply({'params': p}, x, t, context) -> noise prediction (or v), NHWC like x
x: (batch, h, w, in_channels) latents; t: timesteps, a scalar or (batch,), the integer
DDPM step as a float (any real value works); context: (batch, tokens, cross_attention_dim)
text-encoder hidden states.

Field names are those of diffusers' `UNet2DConditionModel` config, including its quirk that
`attention_head_dim` is the number of heads per level (SD 1.x: 8 everywhere; SD 2.x: (5, 10,
20, 20), with `use_linear_projection=True`). Building blocks are in `unet_blocks.py`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from diffdis_jax.nn import layers
from diffdis_jax.nn.unet_blocks import (BLOCK_OPTIONS, DownBlock, MidBlock, UpBlock,
                                        apply_attention)

IntOrSeq = Union[int, Sequence[int]]

CROSS_ATTN_DOWN, PLAIN_DOWN = 'CrossAttnDownBlock2D', 'DownBlock2D'
CROSS_ATTN_UP, PLAIN_UP = 'CrossAttnUpBlock2D', 'UpBlock2D'


def per_level(value: IntOrSeq, levels: int, name: str) -> tuple[int, ...]:
  """An int repeated per level, or a per-level sequence checked for length."""
  if isinstance(value, int):
    return (value,) * levels
  value = tuple(value)
  if len(value) != levels:
    raise ValueError(f'{name} has {len(value)} entries for {levels} levels')
  return value


# attend(key, attention, h, context) -> h; see UNet2DCondition._down_mid
AttendHook = Callable[[str, Any, Any, Any], Any]


def _keyed(attend: Optional[AttendHook], prefix: str):
  """A level's `attend(layer, ...)` hook that calls the UNet-wide `attend('{prefix}_{layer}',
  ...)`: levels number their layers, the UNet's hook needs names unique across levels."""
  if attend is None:
    return apply_attention
  return lambda layer, attention, h, context: attend(f'{prefix}_{layer}', attention, h, context)


class UNet2DCondition(nn.Module):
  """Text-conditioned UNet: conv_in, down levels, mid block, up levels with skips, conv_out."""
  in_channels: int = 4
  out_channels: int = 4
  block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
  down_block_types: Sequence[str] = (CROSS_ATTN_DOWN,) * 3 + (PLAIN_DOWN,)
  up_block_types: Sequence[str] = (PLAIN_UP,) + (CROSS_ATTN_UP,) * 3
  layers_per_block: IntOrSeq = 2
  attention_head_dim: IntOrSeq = 8          # diffusers' name; it is the number of heads
  num_attention_heads: Optional[IntOrSeq] = None
  transformer_layers_per_block: IntOrSeq = 1
  use_linear_projection: bool = False
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  downsample_padding: int = 1
  mid_block_type: Optional[str] = 'UNetMidBlock2DCrossAttn'  # or None: no mid block
  attention_impl: Optional[str] = None
  conv_impl: Optional[str] = None                       # nn/convolution.py; None: by shape
  remat: Union[bool, str] = False                       # recompute ResNet and transformer blocks (backward)
  dtype: Any = jnp.float32

  def setup(self):
    levels = len(self.block_out_channels)
    if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
      raise ValueError('down_block_types, up_block_types and block_out_channels differ in length')
    for kind in self.down_block_types:
      if kind not in (CROSS_ATTN_DOWN, PLAIN_DOWN):
        raise ValueError(f'unsupported down block {kind!r}')
    for kind in self.up_block_types:
      if kind not in (CROSS_ATTN_UP, PLAIN_UP):
        raise ValueError(f'unsupported up block {kind!r}')
    heads = per_level(self.num_attention_heads or self.attention_head_dim, levels, 'heads')
    depth = per_level(self.transformer_layers_per_block, levels, 'transformer_layers_per_block')
    n_layers = per_level(self.layers_per_block, levels, 'layers_per_block')
    channels = tuple(self.block_out_channels)
    common = {name: getattr(self, name) for name in BLOCK_OPTIONS}  # UNet fields of those names

    self.conv_in = layers.Conv(channels[0], 3, padding=1, implementation=self.conv_impl,
                               dtype=self.dtype)
    self.time_embedding = layers.TimestepEmbedder(
        4 * channels[0], freq_dim=channels[0], freq_shift=self.freq_shift,
        flip_sin_to_cos=self.flip_sin_to_cos, dtype=self.dtype)
    self.down_blocks = [
        DownBlock(channels[i], n_layers[i], add_downsample=i < levels - 1,
                  num_heads=heads[i] if kind == CROSS_ATTN_DOWN else None,
                  transformer_depth=depth[i], downsample_padding=self.downsample_padding,
                  **common)
        for i, kind in enumerate(self.down_block_types)]
    if self.mid_block_type not in ('UNetMidBlock2DCrossAttn', None):
      raise ValueError(f'unsupported mid block {self.mid_block_type!r}')
    if self.mid_block_type is not None:
      self.mid = MidBlock(channels[-1], num_heads=heads[-1], transformer_depth=depth[-1],
                          **common, name='mid_block')
    # The up path mirrors the down path: level i of it works at channels[-1 - i].
    self.up_blocks = [
        UpBlock(channels[levels - 1 - i], n_layers[levels - 1 - i] + 1,
                add_upsample=i < levels - 1,
                num_heads=heads[levels - 1 - i] if kind == CROSS_ATTN_UP else None,
                transformer_depth=depth[levels - 1 - i], **common)
        for i, kind in enumerate(self.up_block_types)]
    self.conv_norm_out = layers.GroupNorm(self.norm_num_groups, self.norm_eps, dtype=self.dtype)
    self.conv_out = layers.Conv(self.out_channels, 3, padding=1, implementation=self.conv_impl,
                                dtype=self.dtype)

  def _down_mid(self, x, t, context, attend: Optional[AttendHook] = None):
    """The UNet's first half: time embedding, conv_in, the down levels and the mid block.

    Written once for every pass that needs it: `__call__` continues into the up levels,
    DiffDis's alignment pass stops here. `attend(key, attention, h, context) -> h` runs each
    SpatialTransformer (by default as it is), `key` naming it 'down_{level}_{layer}' or
    'mid_{layer}': a caller that changes those calls (DiffDis runs them dual-stream, with a
    text token) gets the ResNets, resampling and skips unchanged, bit for bit.

    Returns the mid-block output (the last down level's without a mid block), the skip
    activations, the time embedding and `context` in the compute dtype.
    """
    batch = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (batch,))
    temb = self.time_embedding(t)
    context = context.astype(self.dtype)

    h = self.conv_in(x)
    skips = [h]
    for i, block in enumerate(self.down_blocks):
      h, level_skips = block(h, temb, context, attend=_keyed(attend, f'down_{i}'))
      skips.extend(level_skips)
    if self.mid_block_type is not None:
      h = self.mid(h, temb, context, attend=_keyed(attend, 'mid'))
    return h, skips, temb, context

  def __call__(self, x, t, context):
    h, skips, temb, context = self._down_mid(x, t, context)
    for block in self.up_blocks:
      n = block.num_layers
      level_skips, skips = skips[-n:], skips[:-n]
      # Upsample to the next skip's size so odd latent sizes round-trip like diffusers.
      size = skips[-1].shape[1:3] if skips else None
      h = block(h, level_skips, temb, context, upsample_size=size)
    h = nn.silu(self.conv_norm_out(h))
    return self.conv_out(h)
