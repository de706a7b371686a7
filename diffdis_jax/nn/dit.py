"""DiT (Peebles & Xie) and its SD-DiT split into a student encoder and decoder.

`SDDiT` is the one model class: a plain DiT is `SDDiT` with `decoder_mode='split'` (the last
`decoder_depth` blocks of the stack act as the decoder, so the parameter set is exactly DiT's)
and no mask. `decoder_mode='separate'` is the MaskDiT layout: the whole DiT stack encodes and
a narrower stack of `decoder_depth` blocks decodes.

Apply signatures (x is NHWC, already scaled by the caller's preconditioning):
  model.apply({'params': p}, x, t, y)                       -> network output, NHWC
  model.apply(..., x, t, y, keep_idx, method='forward_with_tokens') -> (output, encoder tokens)
  model.apply(..., x, t, y, method='encode')               -> encoder tokens of every patch
  model.apply(..., tokens, method='project')               -> projection-head logits
`t` is whatever scalar the timestep embedder is fed (EDM's c_noise here); `y` are class ids,
`num_classes` meaning the null class used for classifier-free guidance.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import flax.linen as nn
import jax.numpy as jnp

from diffdis_jax.nn import layers, token_ops
from diffdis_jax.nn.heads import ProjectionHead

# depth, width, heads (DiT paper, Table 1)
DIT_SIZES = {'S': (12, 384, 6), 'B': (12, 768, 12), 'L': (24, 1024, 16), 'XL': (28, 1152, 16)}
DECODER_MODES = ('separate', 'split')   # MaskDiT's own decoder stack | the stack's last blocks
INFILLS = ('noisy', 'mask_token')       # what the decoder sees at masked positions


def parse_dit_name(name: str) -> tuple[int, int, int, int]:
  """'DiT-XL/2' -> (depth, width, heads, patch)."""
  try:
    size, patch = name.removeprefix('DiT-').split('/')
    return (*DIT_SIZES[size], int(patch))
  except (KeyError, ValueError):
    raise ValueError(f'unknown model name {name!r}: expected DiT-<S|B|L|XL>/<2|4|8>') from None


class DiTBlock(nn.Module):
  """Pre-LN transformer block with adaLN-Zero conditioning (the identity at initialisation)."""
  width: int
  num_heads: int
  mlp_ratio: float = 4.0
  attention_impl: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c):
    x = layers.constrain(x, layers.TOKENS)
    mod = layers.Dense(6 * self.width, ('embed', 'modulation'), kernel_init=layers.zeros,
                       dtype=self.dtype, name='adaLN_modulation')(nn.silu(c))
    mod = layers.constrain(mod, (layers.BATCH, layers.EMBED))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    norm = lambda name: layers.LayerNorm(use_affine=False, dtype=self.dtype, name=name)
    h = layers.modulate(norm('norm1')(x), shift_msa, scale_msa)
    h = layers.Attention(self.num_heads, implementation=self.attention_impl, dtype=self.dtype,
                         name='attn')(h)
    x = x + gate_msa[:, None, :] * h
    h = layers.modulate(norm('norm2')(x), shift_mlp, scale_mlp)
    h = layers.Mlp(int(self.width * self.mlp_ratio), dtype=self.dtype, name='mlp')(h)
    return layers.constrain(x + gate_mlp[:, None, :] * h, layers.TOKENS)


class FinalLayer(nn.Module):
  """adaLN-modulated LayerNorm and a zero-initialised projection back to patch pixels."""
  patch: int
  out_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c):
    width = x.shape[-1]
    mod = layers.Dense(2 * width, ('embed', 'modulation'), kernel_init=layers.zeros,
                       dtype=self.dtype, name='adaLN_modulation')(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    x = layers.modulate(layers.LayerNorm(use_affine=False, dtype=self.dtype, name='norm')(x),
                        shift, scale)
    return layers.Dense(self.patch * self.patch * self.out_channels, ('embed', 'patch'),
                        kernel_init=layers.zeros, dtype=self.dtype, name='linear')(x)


class SDDiT(nn.Module):
  """DiT with an encoder/decoder split, token masking and an optional projection head."""
  input_size: int = 32
  in_channels: int = 4
  patch: int = 2
  width: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  learn_sigma: bool = False
  decoder_mode: str = 'separate'     # 'separate' (MaskDiT) | 'split' (last blocks of the stack)
  decoder_depth: int = 8
  decoder_width: int = 512
  decoder_heads: int = 16
  infill: str = 'noisy'              # masked positions in the decoder: 'noisy' | 'mask_token'
  head: Optional[dict] = None        # ProjectionHead fields; None: no head
  time_freq_shift: float = 0.0
  attention_impl: Optional[str] = None
  remat: Union[bool, str] = False
  dtype: Any = jnp.float32

  def setup(self):
    if self.decoder_mode not in DECODER_MODES:
      raise ValueError(f'decoder_mode must be one of {DECODER_MODES}, got {self.decoder_mode!r}')
    if self.infill not in INFILLS:
      raise ValueError(f'infill must be one of {INFILLS}, got {self.infill!r}')
    block = layers.maybe_remat(DiTBlock, self.remat)
    grid = self.input_size // self.patch
    kw = dict(attention_impl=self.attention_impl, dtype=self.dtype)
    self.x_embedder = token_ops.PatchEmbed(self.patch, self.width, dtype=self.dtype)
    self.t_embedder = layers.TimestepEmbedder(self.width, freq_shift=self.time_freq_shift,
                                              dtype=self.dtype)
    self.y_embedder = layers.LabelEmbedder(self.num_classes, self.width, dtype=self.dtype)
    self.pos_embed = jnp.asarray(token_ops.sincos_2d(self.width, grid, grid))[None]
    split = self.decoder_mode == 'split'
    n_encoder = self.depth - self.decoder_depth if split else self.depth
    self.encoder_blocks = [block(self.width, self.num_heads, self.mlp_ratio, **kw,
                                 name=f'blocks_{i}') for i in range(n_encoder)]
    dec_width, dec_heads = (self.width, self.num_heads) if split else (
        self.decoder_width, self.decoder_heads)
    first = n_encoder if split else 0
    prefix = 'blocks' if split else 'decoder_blocks'
    self.decoder_blocks = [block(dec_width, dec_heads, self.mlp_ratio, **kw,
                                 name=f'{prefix}_{first + i}') for i in range(self.decoder_depth)]
    if not split:
      self.decoder_norm = layers.LayerNorm(dtype=self.dtype)
      self.decoder_embed = layers.Dense(dec_width, ('embed', 'embed_out'), dtype=self.dtype)
      self.decoder_pos_embed = jnp.asarray(token_ops.sincos_2d(dec_width, grid, grid))[None]
    if self.infill == 'mask_token':
      self.mask_token = self.param('mask_token',
                                   layers.partitioned(nn.initializers.normal(0.02),
                                                      (None, None, 'embed')),
                                   (1, 1, self.width), jnp.float32)
    out_channels = self.in_channels * (2 if self.learn_sigma else 1)
    self.final_layer = FinalLayer(self.patch, out_channels, dtype=self.dtype)
    if self.head is not None:
      self.projection_head = ProjectionHead(**self.head, dtype=self.dtype)

  @property
  def num_tokens(self) -> int:
    return (self.input_size // self.patch) ** 2

  def _embed(self, x, t, y):
    tokens = self.x_embedder(layers.constrain(x, layers.IMAGE))
    tokens = layers.constrain(tokens + self.pos_embed.astype(self.dtype), layers.TOKENS)
    t, y = layers.constrain(t, (layers.BATCH,)), layers.constrain(y, (layers.BATCH,))
    c = layers.constrain(self.t_embedder(t) + self.y_embedder(y), (layers.BATCH, layers.EMBED))
    return tokens, c

  def encode(self, x, t, y, keep_idx=None):
    """Encoder tokens: of the kept patches when `keep_idx` is given, else of all patches."""
    return self._encode(x, t, y, keep_idx)[0]

  def _encode(self, x, t, y, keep_idx):
    tokens, c = self._embed(x, t, y)
    h = tokens if keep_idx is None else layers.constrain(
        token_ops.gather_tokens(tokens, keep_idx), layers.TOKENS)
    for blk in self.encoder_blocks:
      h = blk(h, c)
    return h, tokens, c

  def _decode(self, h, tokens, c, keep_idx):
    if keep_idx is not None:
      fill = tokens if self.infill == 'noisy' else jnp.broadcast_to(
          self.mask_token.astype(self.dtype), tokens.shape)
      h = layers.constrain(token_ops.scatter_tokens(fill, h, keep_idx), layers.TOKENS)
    if self.decoder_mode == 'separate':
      h = self.decoder_embed(self.decoder_norm(h)) + self.decoder_pos_embed.astype(self.dtype)
    for blk in self.decoder_blocks:
      h = blk(h, c)
    out = layers.constrain(self.final_layer(h, c), layers.TOKENS)
    out = token_ops.unpatchify(out, self.patch, self.input_size, self.input_size)
    return layers.constrain(out, layers.IMAGE)

  def forward_with_tokens(self, x, t, y, keep_idx=None):
    """Network output (NHWC) and the encoder tokens it was decoded from."""
    h, tokens, c = self._encode(x, t, y, keep_idx)
    return self._decode(h, tokens, c, keep_idx), h

  def project(self, tokens):
    return self.projection_head(tokens)

  def __call__(self, x, t, y, keep_idx=None):
    out, tokens = self.forward_with_tokens(x, t, y, keep_idx)
    if self.head is not None and self.is_initializing():
      self.project(tokens)  # create the head's parameters
    return out
