"""Building blocks of Stable Diffusion's UNet and VAE: ResNet blocks, resampling, the
SpatialTransformer and the down/mid/up levels that combine them. NHWC throughout.

Submodule names follow diffusers' (`resnets_0`, `attentions_0`, `downsamplers_0`, `conv1`,
`time_emb_proj`, `transformer_blocks_0`, `attn1`, ...) so that `diffdis_jax.weights` converts
a diffusers state dict by renaming keys rather than by a hand-written table.

Extension points for DiffDis: `DownBlock` and `MidBlock` take an `attend` hook that runs each
of their SpatialTransformers (`apply_attention` by default), so a caller can replace those
calls without restating the levels' loops; `BasicTransformerBlock` exposes its three residual
steps as methods (`self_attention`, `cross_attention`, `feed_forward`), and
`SpatialTransformer` its entry and exit (`to_tokens`, `from_tokens`), so such a hook can let
an extra text token join self-attention.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffdis_jax.nn import layers

Dtype = Any


def upsample_nearest(x, size: Optional[tuple[int, int]] = None):
  """Nearest-neighbour upsampling of NHWC input, 2x or to `size` (PyTorch's 'nearest')."""
  b, h, w, c = x.shape
  if size is None or tuple(size) == (2 * h, 2 * w):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  # PyTorch 'nearest' reads source index floor(dst * in / out).
  rows = np.floor(np.arange(size[0]) * h / size[0]).astype(np.int32)
  cols = np.floor(np.arange(size[1]) * w / size[1]).astype(np.int32)
  return x[:, rows][:, :, cols]


class ResnetBlock(nn.Module):
  """GroupNorm-SiLU-Conv twice, with the timestep embedding added in between (diffusers'
  ResnetBlock2D, `time_embedding_norm='default'`); a 1x1 shortcut when channels change."""
  out_channels: int
  norm_num_groups: int = 32
  eps: float = 1e-5
  conv_impl: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb=None):
    x = x.astype(self.dtype)
    norm = lambda name: layers.GroupNorm(self.norm_num_groups, self.eps, dtype=self.dtype,
                                         name=name)
    conv = lambda name: layers.Conv(self.out_channels, 3, padding=1,
                                    implementation=self.conv_impl, dtype=self.dtype, name=name)
    h = conv('conv1')(nn.silu(norm('norm1')(x)))
    if temb is not None:
      t = layers.Dense(self.out_channels, ('embed', 'conv_out'), dtype=self.dtype,
                       name='time_emb_proj')(nn.silu(temb))
      h = h + t[:, None, None, :]
    h = conv('conv2')(nn.silu(norm('norm2')(h)))
    if x.shape[-1] != self.out_channels:
      x = layers.Conv(self.out_channels, 1, implementation=self.conv_impl, dtype=self.dtype,
                      name='conv_shortcut')(x)
    return x + h


class Downsample(nn.Module):
  """Stride-2 3x3 convolution. `padding=0` is the VAE's variant: pad right and bottom by one."""
  channels: int
  padding: int = 1
  conv_impl: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.padding == 0:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return layers.Conv(self.channels, 3, strides=2, padding=self.padding,
                       implementation=self.conv_impl, dtype=self.dtype, name='conv')(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x (or to `size`) followed by a 3x3 convolution."""
  channels: int
  conv_impl: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, size=None):
    return layers.Conv(self.channels, 3, padding=1, implementation=self.conv_impl,
                       dtype=self.dtype, name='conv')(upsample_nearest(x, size))


class BasicTransformerBlock(nn.Module):
  """Pre-LN self-attention, cross-attention to the text context, and a GEGLU feed-forward."""
  width: int
  num_heads: int
  ff_mult: int = 4
  norm_eps: float = 1e-5
  attention_impl: Optional[str] = None
  dtype: Dtype = jnp.float32

  def setup(self):
    norm = lambda: layers.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype)
    # SD's attention projections have no bias on q/k/v, a bias on the output.
    attn = lambda: layers.Attention(self.num_heads, qkv_bias=False, out_bias=True,
                                    implementation=self.attention_impl, dtype=self.dtype)
    self.norm1, self.norm2, self.norm3 = norm(), norm(), norm()
    self.attn1, self.attn2 = attn(), attn()
    self.ff = layers.Mlp(self.ff_mult * self.width, activation='geglu', dtype=self.dtype)

  def self_attention(self, x):
    return x + self.attn1(self.norm1(x))

  def cross_attention(self, x, context):
    return x + self.attn2(self.norm2(x), context.astype(self.dtype))

  def feed_forward(self, x):
    return x + self.ff(self.norm3(x))

  def __call__(self, x, context):
    return self.feed_forward(self.cross_attention(self.self_attention(x), context))


TRANSFORMER_METHODS = ('__call__', 'self_attention', 'cross_attention', 'feed_forward')


class BlockOptions(nn.Module):
  """Settings the UNet hands unchanged to each level and from there to each SpatialTransformer.

  Declared once here and keyword-only, so that every block keeps its own leading fields
  positional: `SpatialTransformer(channels, num_heads)`, `DownBlock(out_channels, num_layers)`.
  """
  _: dataclasses.KW_ONLY
  use_linear_projection: bool = False
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  attention_impl: Optional[str] = None
  conv_impl: Optional[str] = None
  remat: Union[bool, str] = False  # recompute each ResNet and transformer block in the backward
  dtype: Dtype = jnp.float32

  @nn.nowrap  # a constructor helper: no Flax scope, no entry in captured intermediates
  def block_options(self) -> dict[str, Any]:
    """These settings as keyword arguments for a sub-block."""
    return {name: getattr(self, name) for name in BLOCK_OPTIONS}


BLOCK_OPTIONS = tuple(f.name for f in dataclasses.fields(BlockOptions)
                      if f.name not in ('parent', 'name'))


class SpatialTransformer(BlockOptions):
  """diffusers' Transformer2DModel on continuous input: GroupNorm, project the pixels to
  tokens (1x1 conv, or linear with `use_linear_projection` as in SD 2.x), `depth` transformer
  blocks, project back and add the input."""
  channels: int
  num_heads: int
  depth: int = 1

  def setup(self):
    c = self.channels
    self.norm = layers.GroupNorm(self.norm_num_groups, 1e-6, dtype=self.dtype)
    if self.use_linear_projection:
      self.proj_in = layers.Dense(c, ('conv_out', 'embed'), dtype=self.dtype)
      self.proj_out = layers.Dense(c, ('embed', 'conv_out'), dtype=self.dtype)
    else:
      self.proj_in = layers.Conv(c, 1, axes=('conv_height', 'conv_width', 'conv_out', 'embed'),
                                 implementation=self.conv_impl, dtype=self.dtype)
      self.proj_out = layers.Conv(c, 1, axes=('conv_height', 'conv_width', 'embed', 'conv_out'),
                                  implementation=self.conv_impl, dtype=self.dtype)
    # DiffDis' dual-stream pass calls the three sub-layers one by one: remat each of them
    block = layers.maybe_remat(BasicTransformerBlock, self.remat, TRANSFORMER_METHODS)
    self.transformer_blocks = [
        block(c, self.num_heads, norm_eps=self.norm_eps, attention_impl=self.attention_impl,
              dtype=self.dtype)
        for _ in range(self.depth)]

  def to_tokens(self, x):
    """NHWC -> (batch, h*w, channels) after the norm and the input projection."""
    b, h, w, c = x.shape
    y = self.norm(x)
    if self.use_linear_projection:
      return self.proj_in(y.reshape(b, h * w, c))
    return self.proj_in(y).reshape(b, h * w, self.channels)

  def from_tokens(self, tokens, residual):
    """Output projection back to NHWC plus the block's residual input."""
    b, h, w, _ = residual.shape
    if self.use_linear_projection:
      y = self.proj_out(tokens).reshape(b, h, w, self.channels)
    else:
      y = self.proj_out(tokens.reshape(b, h, w, self.channels))
    return y + residual.astype(y.dtype)

  def __call__(self, x, context):
    tokens = self.to_tokens(x)
    for block in self.transformer_blocks:
      tokens = block(tokens, context)
    return self.from_tokens(tokens, x)


def apply_attention(layer: int, attention: SpatialTransformer, x, context):
  """The default `attend` of DownBlock and MidBlock: the SpatialTransformer as it is.

  `attend(layer, attention, x, context) -> x` is how a caller changes what happens at each
  SpatialTransformer of a level (DiffDis runs it dual-stream, with a text token) while the
  level's ResNets, skips and resampling stay written once, here. `layer` is the
  SpatialTransformer's index in the level.
  """
  del layer
  return attention(x, context)


class _Level(BlockOptions):
  """`num_layers` ResNet blocks, each paired with a SpatialTransformer when `num_heads` is set:
  what the down, mid and up levels are made of (names `resnets_i`, `attentions_i`)."""
  out_channels: int
  num_layers: int = 1
  num_heads: Optional[int] = None
  transformer_depth: int = 1

  @property
  def num_resnets(self) -> int:
    return self.num_layers

  def setup(self):
    c = self.out_channels
    resnet = layers.maybe_remat(ResnetBlock, self.remat)
    self.resnets = [resnet(c, self.norm_num_groups, self.norm_eps, self.conv_impl,
                           dtype=self.dtype)
                    for _ in range(self.num_resnets)]
    if self.num_heads is not None:
      self.attentions = [
          SpatialTransformer(c, self.num_heads, self.transformer_depth, **self.block_options())
          for _ in range(self.num_layers)]

  @nn.nowrap
  def _attention(self, layer: int, x, context, attend=apply_attention):
    """Layer `layer`'s SpatialTransformer through `attend`; the identity without attention."""
    if self.num_heads is None:
      return x
    return attend(layer, self.attentions[layer], x, context)


class DownBlock(_Level):
  """One encoder level: `num_layers` ResNet blocks (each followed by a SpatialTransformer
  when `num_heads` is set), then an optional stride-2 downsampler. Returns the output and
  the skip activations the up path consumes. Without attention and time embedding it is the
  VAE's DownEncoderBlock2D."""
  add_downsample: bool = True
  downsample_padding: int = 1

  def setup(self):
    super().setup()
    if self.add_downsample:
      self.downsamplers = [Downsample(self.out_channels, self.downsample_padding,
                                      self.conv_impl, dtype=self.dtype)]

  def __call__(self, x, temb=None, context=None, attend=apply_attention):
    skips = []
    for i, resnet in enumerate(self.resnets):
      x = self._attention(i, resnet(x, temb), context, attend)
      skips.append(x)
    if self.add_downsample:
      x = self.downsamplers[0](x)
      skips.append(x)
    return x, skips


class MidBlock(_Level):
  """UNetMidBlock2DCrossAttn: ResNet, then (SpatialTransformer, ResNet) per layer."""

  @property
  def num_resnets(self) -> int:
    return self.num_layers + 1

  def __call__(self, x, temb, context, attend=apply_attention):
    x = self.resnets[0](x, temb)
    for i, resnet in enumerate(self.resnets[1:]):
      x = resnet(self._attention(i, x, context, attend), temb)
    return x


class UpBlock(_Level):
  """One decoder level: `num_layers` ResNet blocks, each fed the running activation
  concatenated (channels last) with the matching skip, optional SpatialTransformers, then an
  optional upsampler. With `skips=None` it is the VAE's UpDecoderBlock2D."""
  add_upsample: bool = True

  def setup(self):
    super().setup()
    if self.add_upsample:
      self.upsamplers = [Upsample(self.out_channels, self.conv_impl, dtype=self.dtype)]

  def __call__(self, x, skips: Optional[Sequence[Any]] = None, temb=None, context=None,
               upsample_size=None):
    """`skips` are this level's skip activations in the order the down path produced them;
    they are consumed last first."""
    skips = list(skips) if skips is not None else None
    for i, resnet in enumerate(self.resnets):
      if skips is not None:
        x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
      x = self._attention(i, resnet(x, temb), context)
    if self.add_upsample:
      x = self.upsamplers[0](x, upsample_size)
    return x
