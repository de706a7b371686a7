"""DiT's token plumbing: images to patch tokens and back, fixed sin-cos position tables, and
the gather/scatter of the tokens a masked student keeps."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.nn.layers import Dense

Dtype = Any


# ----------------------------------------------------------------------------- patches


def patchify(x, patch: int):
  """NHWC image -> (batch, tokens, patch*patch*channels), tokens in row-major order.

  Within a token the order is (row in patch, column in patch, channel), the same order in
  which a (kh, kw, cin, cout) convolution kernel flattens, so a patch-embedding convolution
  and Dense on patchified input are the same map.
  """
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens, patch: int, height: int, width: int):
  """Inverse of `patchify`: (batch, tokens, patch*patch*channels) -> NHWC."""
  b, n, d = tokens.shape
  c = d // (patch * patch)
  gh, gw = height // patch, width // patch
  x = tokens.reshape(b, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = positions.reshape(-1)[:, None] * omega[None, :]
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2-D sin-cos position table, (grid_h * grid_w, dim), row-major tokens.

  As in MAE and DiT, the first half of the channels encodes the column and the second half
  the row.
  """
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                           np.arange(grid_w, dtype=np.float64), indexing='ij')
  return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)],
                        axis=1).astype(np.float32)


class PatchEmbed(nn.Module):
  """Patchify an NHWC image and project each patch to `hidden` (a strided conv as Dense)."""
  patch: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    tokens = patchify(x.astype(self.dtype), self.patch)
    return Dense(self.hidden, ('patch', 'embed'), dtype=self.dtype, name='proj')(tokens)


# ----------------------------------------------------------------------------- token masks


def gather_tokens(x, keep_idx):
  """Select the tokens at `keep_idx` (batch, kept) from x (batch, tokens, width)."""
  return jnp.take_along_axis(x, keep_idx[..., None], axis=1)


def scatter_tokens(fill, kept, keep_idx):
  """Put `kept` (batch, kept, width) back at `keep_idx` in a copy of `fill` (batch, tokens, width).

  Written per example (vmap) so the scatter has a batch dimension that a sharded batch splits
  without communication, and with unique indices (kept positions are distinct), whose
  derivative is a plain gather instead of a scatter of ids to resolve collisions.
  """
  put = lambda f, k, i: f.at[i].set(k.astype(f.dtype), unique_indices=True)
  return jax.vmap(put)(fill, kept, keep_idx)
