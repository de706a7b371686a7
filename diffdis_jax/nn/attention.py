"""Scaled dot-product attention: which implementation runs, and the one this package writes.

`dot_product_attention` is what every model's `layers.Attention` calls. `implementation`:

  None       'einsum' when the target platform is the CPU, else `jax.nn.dot_product_attention`'s
             own choice
  'einsum'   `einsum_attention` below: two einsums, a float32 softmax, a hand-written backward
  'xla', 'cudnn'   passed to `jax.nn.dot_product_attention` (cuDNN's fused kernel on GPU)
  'splash'   jax's Pallas splash kernel for TPU (nn/splash_attention.py); for other targets it
             runs through the Pallas interpreter, which only tests should do

The target platform is `core.platform.target_platform()`: the backend, or the platform a
`jax.export` is made for, so that a step exported from a CPU host carries the target's choice.

Masked and causal attention (CLIP's text encoder, 77 tokens) always go to jax's function.

Why a hand-written backward: on XLA:CPU, autodiff of jax's reference attention materialises
the softmax scale and the normaliser as full (batch, heads, T, S) tensors and differentiates
the division in the softmax term by term, so a DiT-S/2 train step spent about a third of its
time in attention, which is 5% of its FLOPs (docs/results.md). The backward below
is the usual one (as in FlashAttention): dS = P * (dP - rowsum(dO * O)), which touches the
(T, S) matrices twice and keeps only q, k, v, the output and P for it.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.core.platform import target_platform
from diffdis_jax.nn import splash_attention


def _scale(q):
  """1 / sqrt(head_dim) in q's dtype."""
  return np.float32(1.0 / np.sqrt(q.shape[-1])).astype(q.dtype)


def _forward(q, k, v):
  """q (B, T, N, H), k and v (B, S, N, H) -> output (B, T, N, H) and probabilities (B, N, T, S)."""
  logits = jnp.einsum('btnh,bsnh->bnts', q * _scale(q), k, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum('bnts,bsnh->btnh', probs.astype(v.dtype), v)
  return out, probs


@jax.custom_vjp
def einsum_attention(q, k, v):
  """Softmax attention without mask, as jax.nn.dot_product_attention(q, k, v) computes it.

  q (batch, T, heads, head_dim); k, v (batch, S, heads, head_dim); returns (batch, T, heads,
  head_dim) in v's dtype. Logits and softmax are float32 whatever the input dtype.
  """
  return _forward(q, k, v)[0]


def _fwd(q, k, v):
  out, probs = _forward(q, k, v)
  return out, (q, k, v, out, probs)


def _bwd(residuals, d_out):
  q, k, v, out, probs = residuals
  p = probs.astype(v.dtype)
  d_v = jnp.einsum('bnts,btnh->bsnh', p, d_out)
  d_p = jnp.einsum('btnh,bsnh->bnts', d_out, v, preferred_element_type=jnp.float32)
  # rowsum(dP * P) = rowsum(dO * O): a (B, T, N) reduction over head_dim instead of over S
  row = jnp.einsum('btnh,btnh->bnt', d_out.astype(jnp.float32), out.astype(jnp.float32))
  d_logits = (probs * (d_p - row[..., None])).astype(q.dtype)
  d_q = jnp.einsum('bnts,bsnh->btnh', d_logits, k) * _scale(q)
  d_k = jnp.einsum('bnts,btnh->bsnh', d_logits, q) * _scale(q)
  return d_q, d_k, d_v


einsum_attention.defvjp(_fwd, _bwd)


IMPLEMENTATIONS = (None, 'einsum', 'xla', 'cudnn', 'splash')


def dot_product_attention(q, k, v, *, mask=None, is_causal: bool = False,
                          implementation: Optional[str] = None, partition=None):
  """(B, T, N, H) queries against (B, S, N, H) keys and values; see the module docstring.

  `partition`: the PartitionSpec of q, k and v over the mesh in context, for the one kernel
  XLA cannot partition by itself (splash).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'attention implementation must be one of {IMPLEMENTATIONS}, '
                     f'got {implementation!r}')
  target = target_platform()
  if implementation is None and target == 'cpu':
    implementation = 'einsum'
  unmasked = mask is None and not is_causal
  if implementation == 'einsum' and unmasked:
    return einsum_attention(q, k, v)
  if implementation == 'splash' and unmasked:
    return splash_attention.splash_attention(q, k, v, partition=partition,
                                             interpret=target != 'tpu')
  if implementation in ('einsum', 'splash'):  # masks: jax's reference implementation
    implementation = 'xla'
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                      implementation=implementation)
