"""DiffDis's text stream: the per-block text token adapters and the head after the mid block.

`TextStream` holds the new parameters of one dual-stream attention block (see `diffdis.py`,
which owns the joint self-attention): the projection of the text state into the block width,
the modality-specific norm and feed-forward per transformer layer, and the projection back to
the text width. `TextHead` is the M-block transformer over [text token; mid-block image
tokens] followed by the linear predictor of the clean text query.

Both reuse SD's blocks: the head's layers are `BasicTransformerBlock`s of which only
`self_attention` and `feed_forward` run (so their cross-attention parameters are never
created), and the text feed-forward is `layers.Mlp` with SD's GEGLU.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from diffdis_jax.nn import layers
from diffdis_jax.nn.unet_blocks import BasicTransformerBlock

# The text width (d_y) is 'embed_out', which the rules leave replicated: a kernel of shape
# (d_y, C) cannot name 'embed' twice, and the block width C already takes 'embed'.
TEXT_TO_BLOCK = ('embed_out', 'embed')
BLOCK_TO_TEXT = ('embed', 'embed_out')


class TextStream(nn.Module):
  """New parameters of one dual-stream SpatialTransformer with `depth` transformer layers."""
  width: int                 # the block's token width C_l
  text_dim: int              # d_y
  depth: int = 1
  ff_mult: int = 4
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  def setup(self):
    self.fc_in = layers.Dense(self.width, TEXT_TO_BLOCK, dtype=self.dtype)
    # modality-specific norm + GEGLU feed-forward, shaped like SD's image feed-forward
    self.norms = [layers.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype)
                  for _ in range(self.depth)]
    self.ffs = [layers.Mlp(self.ff_mult * self.width, activation='geglu', dtype=self.dtype)
                for _ in range(self.depth)]
    self.fc_out = layers.Dense(self.text_dim, BLOCK_TO_TEXT, dtype=self.dtype)

  def to_token(self, u):
    """(batch, d_y) -> one token (batch, 1, C)."""
    return self.fc_in(u.astype(self.dtype))[:, None, :]

  def feed_forward(self, layer: int, token):
    return token + self.ffs[layer](self.norms[layer](token))

  def from_token(self, token):
    """(batch, 1, C) -> text state (batch, d_y)."""
    return self.fc_out(token[:, 0])

  def __call__(self, u):  # only for stand-alone init; diffdis.py calls the pieces
    token = self.to_token(u)
    for i in range(self.depth):
      token = self.feed_forward(i, token)
    return self.from_token(token)


class TextHead(nn.Module):
  """M transformer blocks over [text token; image tokens] and a linear predictor of e_0.

  `text` is either the text state (batch, d_y), projected to the image width, or, with
  `query_token=True` (the CLIP-style baseline), ignored in favour of a learned token.
  """
  width: int                 # mid-block width
  text_dim: int
  num_heads: int
  num_blocks: int = 2
  query_token: bool = False
  norm_eps: float = 1e-5
  attention_impl: Optional[str] = None
  dtype: Any = jnp.float32

  def setup(self):
    if self.query_token:
      self.token = self.param('query_token', layers.partitioned(
          nn.initializers.normal(0.02), (None, 'embed')), (1, self.width), jnp.float32)
    else:
      self.fc_in = layers.Dense(self.width, TEXT_TO_BLOCK, dtype=self.dtype)
    self.blocks = [BasicTransformerBlock(self.width, self.num_heads, norm_eps=self.norm_eps,
                                         attention_impl=self.attention_impl, dtype=self.dtype)
                   for _ in range(self.num_blocks)]
    self.norm_out = layers.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype)
    self.predictor = layers.Dense(self.text_dim, BLOCK_TO_TEXT, dtype=self.dtype)

  def __call__(self, text, image_tokens):
    """text (batch, d_y) or None, image_tokens (batch, n, C) -> prediction (batch, d_y) f32."""
    b = image_tokens.shape[0]
    if self.query_token:
      token = jnp.broadcast_to(self.token.astype(self.dtype)[None], (b, 1, self.width))
    else:
      token = self.fc_in(text.astype(self.dtype))[:, None, :]
    x = jnp.concatenate([token, image_tokens.astype(self.dtype)], axis=1)
    for block in self.blocks:
      x = block.feed_forward(block.self_attention(x))
    return self.predictor(self.norm_out(x[:, 0])).astype(jnp.float32)
