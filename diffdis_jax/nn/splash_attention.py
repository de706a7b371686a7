"""TPU splash attention (Pallas) behind the package's attention interface.

`splash_attention` takes and returns (batch, length, heads, head_dim) arrays like
`jax.nn.dot_product_attention` and runs jax's Pallas splash kernel, which never holds a
(T, S) matrix in HBM: the SD UNet's 64x64 level at 512 px has 4096 tokens, so the
materialised alternative is 4096^2 floats per head and example. The kernel has its own
backward, so training needs no autodiff through the softmax either.

What the kernel needs, and what this module does about it:

* One example, (heads, length, head_dim): the batch is a `vmap`.
* Lengths a multiple of its tile: queries are padded and the padded rows dropped; keys and
  values are padded and a static mask hides the padded columns (SD's cross-attention has 77
  text tokens).
* A head dimension the TPU lane width (128) divides: q, k and v are zero-padded, which leaves
  q.k unchanged and gives zero output columns that are dropped (DiT-XL/2 has 72).
* No softmax scale of its own: q is scaled before the call.
* A Pallas call XLA cannot partition: under a mesh the kernel runs in `jax.shard_map` with
  q, k and v split as `partition` says (batch and heads; lengths must be whole, since every
  query needs every key).

`interpret=True` runs the same kernel through Pallas's interpreter, on any backend: tests
use it on CPU. On a TPU it is slow and only for debugging.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

LANE = 128        # TPU lane width: tiles and the head dimension are padded to multiples of it
MAX_BLOCK = 512   # largest query and key tile


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def tile(length: int, max_block: int = MAX_BLOCK) -> int:
  """The tile for a sequence of `length`: a multiple of 128, at most `max_block`."""
  return min(max_block, _round_up(length, LANE))


def _kernel(t_pad: int, s_pad: int, s: int, heads: int, block_q: int, block_kv: int,
            interpret: bool):
  """The splash kernel for (heads, t_pad, d) queries against s_pad keys of which s are real."""
  # pylint: disable=g-import-not-at-top  (Pallas's TPU package is only needed on this path)
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  if s == s_pad:
    head_mask = sm.FullMask((t_pad, s_pad))
  else:
    valid = np.zeros((t_pad, s_pad), dtype=np.bool_)
    valid[:, :s] = True
    head_mask = sm.NumpyMask(valid)
  sizes = sk.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                        block_q_dkv=block_q, block_kv_dkv=block_kv,
                        block_kv_dkv_compute=block_kv, block_q_dq=block_q, block_kv_dq=block_kv)
  return sk.make_splash_mha(sm.MultiHeadMask([head_mask] * heads), head_shards=1,
                            q_seq_shards=1, block_sizes=sizes, interpret=interpret)


def _pad_axis(x, axis: int, size: int):
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _local_attention(q, k, v, *, max_block: int, interpret: bool):
  """Splash attention on one device's (B, T, N, H) block: pad, transpose, vmap, unpad."""
  (_, t, heads, head_dim), s = q.shape, k.shape[1]
  block_q, block_kv = tile(t, max_block), tile(s, max_block)
  t_pad, s_pad = _round_up(t, block_q), _round_up(s, block_kv)
  d_pad = _round_up(head_dim, LANE)
  q = q * np.float32(1.0 / np.sqrt(head_dim)).astype(q.dtype)

  def to_kernel_layout(x, length):  # (B, L, N, H) -> (B, N, L_pad, H_pad)
    return _pad_axis(_pad_axis(x, 1, length), 3, d_pad).transpose(0, 2, 1, 3)

  kernel = _kernel(t_pad, s_pad, s, heads, block_q, block_kv, interpret)
  out = jax.vmap(kernel)(to_kernel_layout(q, t_pad), to_kernel_layout(k, s_pad),
                         to_kernel_layout(v, s_pad))
  return out.transpose(0, 2, 1, 3)[:, :t, :, :head_dim]


def splash_attention(q, k, v, *, partition: Optional[P] = None, max_block: int = MAX_BLOCK,
                     interpret: bool = False):
  """Softmax attention without mask, as jax.nn.dot_product_attention(q, k, v) computes it.

  q (batch, T, heads, head_dim); k, v (batch, S, heads, head_dim). `partition` is how the
  four axes are split over the mesh in context (`jax.set_mesh`); the length entries are
  ignored, as each device needs whole sequences. Without a mesh the kernel runs as is.
  """
  local = functools.partial(_local_attention, max_block=max_block, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q, k, v)
  axes = tuple(partition) if partition is not None else ()
  axes += (None,) * (4 - len(axes))
  spec = P(axes[0], None, axes[2], None)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q, k, v)
