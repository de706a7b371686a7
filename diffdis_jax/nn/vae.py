"""Stable Diffusion's AutoencoderKL (the "SD-VAE") in Flax, NHWC.

Apply signatures (images in [-1, 1], NHWC):
  vae.apply({'params': p}, images, method='encode')          -> (mean, logvar) of the latent
  vae.apply({'params': p}, latents, method='decode')         -> images
  vae.apply({'params': p}, images, rng, method='encode_latents') -> scaled latents
  vae.apply({'params': p}, latents, method='decode_latents') -> images from scaled latents
  vae.apply({'params': p}, images)                           -> decode(mean): a reconstruction
The diagonal Gaussian posterior is returned as its moments; `gaussian_std` and
`gaussian_sample` turn them into a standard deviation or a draw. "Scaled latents" are what
diffusion models see: (z - shift_factor) * scaling_factor, 0.18215 for SD 1.x/2.x.
Field names are those of diffusers' `AutoencoderKL` config.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffdis_jax.nn import layers
from diffdis_jax.nn.unet_blocks import DownBlock, ResnetBlock, UpBlock

VAE_EPS = 1e-6  # every GroupNorm of the VAE


def gaussian_std(logvar):
  return jnp.exp(0.5 * logvar)


def gaussian_sample(rng, mean, logvar):
  """One draw from the diagonal Gaussian N(mean, exp(logvar))."""
  noise = jax.random.normal(rng, mean.shape, jnp.float32)
  return (mean.astype(jnp.float32) + gaussian_std(logvar.astype(jnp.float32)) * noise)


class AttentionBlock(nn.Module):
  """Single-level self-attention over all pixels with a GroupNorm and a residual (the VAE's
  mid-block attention; one head of width `channels` in SD)."""
  num_heads: int = 1
  norm_num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = layers.GroupNorm(self.norm_num_groups, VAE_EPS, dtype=self.dtype, name='group_norm')(x)
    y = layers.Attention(self.num_heads, dtype=self.dtype, name='attention')(
        y.reshape(b, h * w, c))
    return x + y.reshape(b, h, w, c).astype(x.dtype)


class MidBlock(nn.Module):
  """UNetMidBlock2D without time embedding: ResNet, attention, ResNet."""
  channels: int
  norm_num_groups: int = 32
  add_attention: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    resnet = lambda i: ResnetBlock(self.channels, self.norm_num_groups, VAE_EPS, dtype=self.dtype,
                                   name=f'resnets_{i}')
    x = resnet(0)(x)
    if self.add_attention:
      x = AttentionBlock(1, self.norm_num_groups, dtype=self.dtype, name='attentions_0')(x)
    return resnet(1)(x)


class _Coder(nn.Module):
  """The encoder's and the decoder's common configuration (AutoencoderKL gives both the same)
  and the layers at their two ends, which they share but for the direction. The helpers are
  `nn.nowrap`: they only build submodules of the calling `__call__`."""
  block_out_channels: Sequence[int] = (64,)
  layers_per_block: int = 1
  out_channels: int = 3
  norm_num_groups: int = 32
  mid_block_add_attention: bool = True
  dtype: Any = jnp.float32

  @nn.nowrap
  def _conv3x3(self, features: int, name: str):
    return layers.Conv(features, 3, padding=1, dtype=self.dtype, name=name)

  @nn.nowrap
  def _mid_block(self, channels: int):
    return MidBlock(channels, self.norm_num_groups, self.mid_block_add_attention,
                    dtype=self.dtype, name='mid_block')

  @nn.nowrap
  def _output(self, x):
    """GroupNorm, SiLU and the output convolution."""
    x = nn.silu(layers.GroupNorm(self.norm_num_groups, VAE_EPS, dtype=self.dtype,
                                 name='conv_norm_out')(x))
    return self._conv3x3(self.out_channels, 'conv_out')(x)


class Encoder(_Coder):
  """Images -> the posterior's moments, concatenated: conv_in, down levels, mid block."""
  out_channels: int = 8                    # 2 * latent channels: mean and logvar

  @nn.compact
  def __call__(self, x):
    ch = tuple(self.block_out_channels)
    x = self._conv3x3(ch[0], 'conv_in')(x)
    for i, c in enumerate(ch):
      x, _ = DownBlock(c, self.layers_per_block, add_downsample=i < len(ch) - 1,
                       norm_num_groups=self.norm_num_groups, norm_eps=VAE_EPS,
                       downsample_padding=0, dtype=self.dtype, name=f'down_blocks_{i}')(x)
    x = self._mid_block(ch[-1])(x)
    return self._output(x)


class Decoder(_Coder):
  """Latents -> images: conv_in, mid block, up levels (the encoder's widths reversed)."""

  @nn.compact
  def __call__(self, z):
    ch = tuple(reversed(self.block_out_channels))
    x = self._conv3x3(ch[0], 'conv_in')(z)
    x = self._mid_block(ch[0])(x)
    for i, c in enumerate(ch):
      x = UpBlock(c, self.layers_per_block + 1, add_upsample=i < len(ch) - 1,
                  norm_num_groups=self.norm_num_groups, norm_eps=VAE_EPS, dtype=self.dtype,
                  name=f'up_blocks_{i}')(x)
    return self._output(x)


class AutoencoderKL(nn.Module):
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  shift_factor: Optional[float] = None
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  dtype: Any = jnp.float32

  def setup(self):
    lc = self.latent_channels
    kw = dict(block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
              norm_num_groups=self.norm_num_groups,
              mid_block_add_attention=self.mid_block_add_attention, dtype=self.dtype)
    self.encoder = Encoder(out_channels=2 * lc, **kw)
    self.decoder = Decoder(out_channels=self.out_channels, **kw)
    if self.use_quant_conv:
      self.quant_conv = layers.Conv(2 * lc, 1, dtype=self.dtype)
    if self.use_post_quant_conv:
      self.post_quant_conv = layers.Conv(lc, 1, dtype=self.dtype)

  def encode(self, x):
    """Posterior moments (mean, logvar), float32, logvar clipped to [-30, 20] as diffusers."""
    moments = self.encoder(x.astype(self.dtype))
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    z = z.astype(self.dtype)
    if self.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def encode_latents(self, x, rng=None):
    """Scaled latents for a diffusion model: the posterior mean, or a draw when `rng` is given."""
    mean, logvar = self.encode(x)
    z = mean if rng is None else gaussian_sample(rng, mean, logvar)
    return (z - (self.shift_factor or 0.0)) * self.scaling_factor

  def decode_latents(self, latents):
    return self.decode(latents / self.scaling_factor + (self.shift_factor or 0.0))

  def __call__(self, x):
    return self.decode(self.encode(x)[0])
