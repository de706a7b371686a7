"""DiffDis: SD's UNet with a text stream in the down and mid levels and a text head.

`DiffDisUNet` subclasses `UNet2DCondition`, so every parameter of the plain UNet keeps its
name and SD weights load unchanged (`with_unet_params`). Apply signatures:

  model.apply(v, x, t, context)                       -> eps (the plain SD UNet, unchanged:
                                                          DiffDis's generation pass, text masked)
  model.apply(v, z, t, context, e_t, t_e, image_keep=keep, method='predict_text')
                                                       -> (batch, text_dim) float32: the head's
                                                          prediction (x0 or eps of the query)
  model.apply(v, x, t, context, method='encode')      -> mid-block output, text stream off
  model.init(rng, x, t, context, method='initialize') -> every parameter (both passes)

`predict_text` runs only conv_in, the down levels, the mid block and the head: the up levels
never run in the alignment pass. In every SpatialTransformer it passes through, the dual-stream
block does (paper Fig. 3; `TextStream` holds the new weights):

  u = h_e + e_t + Embedder(t_e)          h_e: the previous block's text state, 0 at the first
  token = FC_in(u)                       one token of the block width C_l
  per transformer layer k:
    [image; token] <- shared self-attention over the joint sequence (SD's norm1 + attn1)
    image <- SD's cross-attention to `context`, then SD's feed-forward
    token <- token + TextFFN_k(TextNorm_k(token))     (skips the cross-attention)
  h_e = FC_out(token)                    back to the text width d_y

`align` picks the variant: 'diffusion' (DiffDis), 'contrastive' (the CLIP-style baseline: no
text stream, the head reads a learned query token over the clean image's mid-block tokens),
'none' (generation only: no new parameters at all).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util

from diffdis_jax.nn import layers
from diffdis_jax.nn.text_denoiser import TextHead, TextStream
from diffdis_jax.nn.unet import CROSS_ATTN_DOWN, UNet2DCondition, per_level

ALIGN_MODES = ('diffusion', 'contrastive', 'none')
IMAGE_NULLS = ('learned', 'zeros')
# top-level parameter names that the plain UNet does not have
NEW_PARAM_PREFIXES = ('text_', 'logit_scale', 'null_image')


def is_new_param(top_level_key: str) -> bool:
  return top_level_key.startswith(NEW_PARAM_PREFIXES)


class DiffDisUNet(UNet2DCondition):
  """UNet2DCondition plus DiffDis's text stream, text head, logit scale and image null."""
  text_dim: int = 768                 # d_y: width of the text query e
  align: str = 'diffusion'            # 'diffusion' | 'contrastive' | 'none'
  head_blocks: int = 2                # M
  text_ff_mult: int = 4               # text feed-forward width, as SD's image feed-forward
  image_null: str = 'learned'         # image condition when dropped: 'learned' | 'zeros'
  logit_scale_init: float = 1 / 0.07  # stored as its log, as CLIP

  def setup(self):
    super().setup()
    if self.align not in ALIGN_MODES:
      raise ValueError(f'align must be one of {ALIGN_MODES}, got {self.align!r}')
    if self.image_null not in IMAGE_NULLS:
      raise ValueError(f'image_null must be one of {IMAGE_NULLS}, got {self.image_null!r}')
    if self.align == 'none':
      return
    levels = len(self.block_out_channels)
    channels = tuple(self.block_out_channels)
    heads = per_level(self.num_attention_heads or self.attention_head_dim, levels, 'heads')
    depth = per_level(self.transformer_layers_per_block, levels, 'transformer_layers_per_block')
    n_layers = per_level(self.layers_per_block, levels, 'layers_per_block')
    if self.align == 'diffusion':
      stream = lambda i: TextStream(channels[i], self.text_dim, depth[i], self.text_ff_mult,
                                    self.norm_eps, dtype=self.dtype)
      streams = {f'down_{i}_{j}': stream(i) for i, kind in enumerate(self.down_block_types)
                 if kind == CROSS_ATTN_DOWN for j in range(n_layers[i])}
      if self.mid_block_type is not None:
        streams['mid_0'] = stream(levels - 1)
      self.text_stream = streams
      self.text_time_embedding = layers.TimestepEmbedder(
          self.text_dim, freq_dim=channels[0], freq_shift=self.freq_shift,
          flip_sin_to_cos=self.flip_sin_to_cos, dtype=self.dtype)
    self.text_head = TextHead(channels[-1], self.text_dim, heads[-1], self.head_blocks,
                              query_token=self.align == 'contrastive', norm_eps=self.norm_eps,
                              attention_impl=self.attention_impl, dtype=self.dtype)
    self.logit_scale = self.param(
        'logit_scale', layers.partitioned(
            nn.initializers.constant(math.log(self.logit_scale_init)), ()), (), jnp.float32)
    if self.image_null == 'learned':
      self.null_image = self.param('null_image', layers.partitioned(layers.zeros, (None,)),
                                   (self.in_channels,), jnp.float32)

  # ------------------------------------------------------------------ passes

  def _dual_stream(self, stream, attn, h, context, text):
    """One SpatialTransformer `attn` with the text token joining its self-attention (the
    module docstring's per-block steps). `text` is u = h_e + e_t + Embedder(t_e); returns the
    image activation and the new text state h_e."""
    tokens = attn.to_tokens(h)
    token = stream.to_token(text).astype(tokens.dtype)
    n = tokens.shape[1]
    for k, block in enumerate(attn.transformer_blocks):
      joint = block.self_attention(jnp.concatenate([tokens, token], axis=1))
      tokens, token = joint[:, :n], joint[:, n:]
      tokens = block.feed_forward(block.cross_attention(tokens, context))
      token = stream.feed_forward(k, token)
    return attn.from_tokens(tokens, h), stream.from_token(token)

  def _down_mid_with_text(self, x, t, context, text_in):
    """The UNet's down/mid pass (`_down_mid`) with every SpatialTransformer dual-stream.

    Only the attention calls change, so the pass goes through the plain UNet's code with an
    `attend` hook rather than a copy of its loops. The text state h_e runs from block to block
    in the order the blocks run, which the hook keeps in a closure; it starts at 0.
    Returns (mid-block output, final h_e).
    """
    h_e = jnp.zeros_like(text_in)

    def dual_stream(key, attn, h, context):
      nonlocal h_e
      h, h_e = self._dual_stream(self.text_stream[key], attn, h, context, h_e + text_in)
      return h

    h = self._down_mid(x, t, context, attend=dual_stream)[0]
    return h, h_e

  def encode(self, x, t, context):
    """The mid-block output of the plain UNet (text stream off)."""
    return self._down_mid(x, t, context)[0]

  def predict_text(self, z, t, context, e_t=None, t_e=None, image_keep=None):
    """The alignment pass: image condition z at UNet timestep t, noisy query e_t at t_e.

    image_keep: optional (batch,) bool; where False, z is replaced by the image null (the
    learned per-channel latent, or zeros). e_t and t_e are ignored for align='contrastive'.
    """
    if self.align == 'none':
      raise ValueError("predict_text needs align='diffusion' or 'contrastive'")
    if image_keep is not None:
      null = (self.null_image if self.image_null == 'learned'
              else jnp.zeros((z.shape[-1],), jnp.float32))
      z = jnp.where(image_keep[:, None, None, None], z, null.astype(z.dtype))
    if self.align == 'diffusion':
      batch = z.shape[0]
      t_e = jnp.broadcast_to(jnp.asarray(t_e, jnp.float32).reshape(-1), (batch,))
      text_in = e_t.astype(self.dtype) + self.text_time_embedding(t_e)
      h, h_e = self._down_mid_with_text(z, t, context, text_in)
    else:  # contrastive: the head's learned query reads the plain pass's mid-block tokens
      h, h_e = self._down_mid(z, t, context)[0], None
    b, hh, ww, c = h.shape
    return self.text_head(h_e, h.reshape(b, hh * ww, c))

  def initialize(self, x, t, context, e_t=None, t_e=None):
    """Touches every parameter: `model.init(rng, x, t, context, method='initialize')`."""
    out = self(x, t, context)
    if self.align == 'none':
      return out, None
    if e_t is None:
      e_t = jnp.zeros((x.shape[0], self.text_dim), jnp.float32)
    keep = jnp.ones((x.shape[0],), bool)
    return out, self.predict_text(x, t, context, e_t, t if t_e is None else t_e, keep)


def init_inputs(model: DiffDisUNet, latent_size: int, context_length: int, context_dim: int,
                batch: int = 1):
  """Zero arguments for `model.init(rng, *inputs, method='initialize')`."""
  x = jnp.zeros((batch, latent_size, latent_size, model.in_channels), jnp.float32)
  return (x, jnp.zeros((batch,), jnp.float32),
          jnp.zeros((batch, context_length, context_dim), jnp.float32))


def split_params(params):
  """(plain UNet params, new DiffDis params) of a DiffDisUNet parameter tree."""
  unet = {k: v for k, v in params.items() if not is_new_param(k)}
  new = {k: v for k, v in params.items() if is_new_param(k)}
  return unet, new


def with_unet_params(params, unet_params):
  """`params` (unboxed) with every plain-UNet entry taken from `unet_params` (e.g. SD weights
  from `weights.from_diffusers_unet`); the new DiffDis parameters are kept. Fails listing any
  key or shape that differs."""
  mine = traverse_util.flatten_dict(split_params(params)[0], sep='/')
  theirs = traverse_util.flatten_dict(dict(unet_params), sep='/')
  missing, unexpected = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
  shapes = sorted(k for k in set(mine) & set(theirs)
                  if jnp.shape(mine[k]) != jnp.shape(theirs[k]))
  if missing or unexpected or shapes:
    raise ValueError(f'UNet parameters do not match DiffDisUNet: missing {missing}, '
                     f'unexpected {unexpected}, shape mismatch {shapes}')
  return {**params, **dict(unet_params)}
