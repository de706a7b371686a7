"""CLIP text transformer (transformers' CLIPTextModel / CLIPTextModelWithProjection) in Flax.

Covers SD 1.x's ViT-L/14 text tower (quick-GELU) and SD 2.x's OpenCLIP ViT-H tower
(`hidden_act='gelu'`, 23 layers as shipped in diffusers folders). Field names are those of
transformers' `CLIPTextConfig`.

Apply signature:
  clip.apply({'params': p}, input_ids, attention_mask=None, output_hidden_states=False) -> dict
    'last_hidden_state': (batch, tokens, hidden) after the final LayerNorm (SD's context)
    'pooler_output':     (batch, hidden), the final-normed state at the end-of-text token
    'text_embeds':       (batch, projection_dim), only when `projection_dim` is set
    'hidden_states':     embeddings and every layer's output (before the final LayerNorm),
                         only with output_hidden_states=True (SDXL-style penultimate layers)
`attention_mask` (batch, tokens), 1 for real tokens, masks padding keys on top of the causal
mask; SD passes none.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from diffdis_jax.nn import layers

LEGACY_EOS_TOKEN_ID = 2  # configs from before transformers PR #24773 carry this placeholder


def eos_positions(input_ids, eos_token_id: int):
  """Where each sequence's end-of-text token is, the way transformers picks it.

  Legacy configs (eos_token_id == 2) take the largest token id, which is end-of-text in
  CLIP's vocabulary; newer ones take the first position equal to `eos_token_id`.
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if eos_token_id == LEGACY_EOS_TOKEN_ID:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPEncoderLayer(nn.Module):
  """Pre-LN block: causal self-attention then an MLP, each with a residual."""
  num_heads: int
  intermediate_size: int
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5
  attention_impl: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    norm = lambda name: layers.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)
    h = layers.Attention(self.num_heads, implementation=self.attention_impl, dtype=self.dtype,
                         name='self_attn')(norm('layer_norm1')(x), is_causal=True, mask=mask)
    x = x + h
    h = layers.Mlp(self.intermediate_size, activation=self.hidden_act, dtype=self.dtype,
                   name='mlp')(norm('layer_norm2')(x))
    return x + h


class CLIPTextModel(nn.Module):
  vocab_size: int = 49408
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  max_position_embeddings: int = 77
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5
  eos_token_id: int = LEGACY_EOS_TOKEN_ID
  projection_dim: Optional[int] = None   # set for CLIPTextModelWithProjection
  attention_impl: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
    if self.hidden_act not in layers.ACTIVATIONS:
      raise ValueError(f'hidden_act {self.hidden_act!r} not in {sorted(layers.ACTIVATIONS)}')
    init = nn.initializers.normal(0.02)
    token_table = self.param('token_embedding', layers.partitioned(init, ('vocab', 'embed')),
                             (self.vocab_size, self.hidden_size), jnp.float32)
    position_table = self.param('position_embedding', layers.partitioned(init, (None, 'embed')),
                                (self.max_position_embeddings, self.hidden_size), jnp.float32)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    length = input_ids.shape[-1]
    if length > self.max_position_embeddings:
      raise ValueError(f'{length} tokens exceed max_position_embeddings='
                       f'{self.max_position_embeddings}')
    x = (jnp.take(token_table, input_ids, axis=0) + position_table[:length]).astype(self.dtype)

    mask = None
    if attention_mask is not None:
      mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
    hidden_states = [x]
    for i in range(self.num_hidden_layers):
      x = CLIPEncoderLayer(self.num_attention_heads, self.intermediate_size, self.hidden_act,
                           self.layer_norm_eps, attention_impl=self.attention_impl,
                           dtype=self.dtype, name=f'layers_{i}')(x, mask)
      hidden_states.append(x)
    x = layers.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name='final_layer_norm')(x)

    pooled = x[jnp.arange(x.shape[0]), eos_positions(input_ids, self.eos_token_id)]
    out = {'last_hidden_state': x, 'pooler_output': pooled}
    if self.projection_dim is not None:
      out['text_embeds'] = layers.Dense(self.projection_dim, ('embed', 'embed_out'),
                                        use_bias=False, dtype=self.dtype,
                                        name='text_projection')(pooled)
    if output_hidden_states:
      out['hidden_states'] = tuple(hidden_states)
    return out
