"""2-D convolution: which implementation runs, and the one this package writes.

`conv_general_dilated(implementation)` returns the function `layers.Conv` hands to flax's
`nn.Conv` in place of `lax.conv_general_dilated` (same signature, so parameters, names and
weight conversion do not change). `implementation`:

  None      for a CPU target (core/platform.py): 'im2col' for a 1x1 kernel, or when the
            convolution has no more output positions (batch x height x width) than output
            channels; else, and on every other target, 'xla'
  'xla'     `lax.conv_general_dilated`: XLA's own convolution (cuDNN on GPU, the MXU on TPU)
  'im2col'  `im2col_conv` below: the kh*kw shifted views of the input side by side on the
            channel axis, then one matrix product with the kernel reshaped to
            (kh*kw*in, out); autodiff gives the backward as two more matrix products

Why: XLA:CPU's convolution, and even more its input and kernel gradients, are slow when the
feature map is small and the channels are many, which is most of an SD UNet's deep levels:
at batch 1, a 3x3 1280->1280 convolution's forward and backward on a 4x4 map took 105 ms in
XLA, 42 ms in PyTorch 2.13 and 32 ms as im2col (`bench/conv.py`, docs/results.md). There
the kernel, not the activation, is the big operand, so the matrix product runs near the
CPU's peak and the patches cost no more memory than the kernel does. On big maps with few
channels (the VAE, the early levels at larger batches) XLA's 3x3 convolution wins and the
patches would hold kh*kw copies of the input, so `None` keeps XLA there. A 1x1 kernel has no
patches to build: it is a plain matrix product, which beat XLA's 1x1 convolution 1.3 to 2.9
times on every shape measured, up to 128x128 maps and batch 32.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
from jax import lax

from diffdis_jax.core.platform import target_platform

IMPLEMENTATIONS = (None, 'xla', 'im2col')


def _pairs(padding, spatial: int):
  """lax's padding argument (a string or (lo, hi) pairs) as (lo, hi) pairs, or None."""
  if isinstance(padding, str):
    return None
  pairs = tuple(tuple(int(p) for p in pair) for pair in padding)
  return pairs if len(pairs) == spatial else None


def _is_nhwc_hwio(dimension_numbers, ndim: int) -> bool:
  """Whether lax's dimension numbers are channels-last input and output, HWIO kernel."""
  if ndim != 4:
    return False
  dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers or
                                  ('NHWC', 'HWIO', 'NHWC'))
  return dn == lax.conv_dimension_numbers((1,) * 4, (1,) * 4, ('NHWC', 'HWIO', 'NHWC'))


def im2col_supports(lhs_shape, rhs_shape, padding, lhs_dilation=None, rhs_dilation=None,
                    dimension_numbers=None, feature_group_count: int = 1) -> bool:
  """Whether `im2col_conv` computes this convolution (else it defers to lax)."""
  plain = lambda d: d is None or all(int(v) == 1 for v in d)
  return (_is_nhwc_hwio(dimension_numbers, len(lhs_shape)) and feature_group_count == 1
          and plain(lhs_dilation) and plain(rhs_dilation) and _pairs(padding, 2) is not None
          and rhs_shape[2] == lhs_shape[3])


def im2col_conv(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None,
                rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` for NHWC input and HWIO kernel, as patches @ kernel.

  Explicit (lo, hi) padding, any stride, no dilation, one feature group; anything else goes
  to lax unchanged.
  """
  if not im2col_supports(lhs.shape, rhs.shape, padding, lhs_dilation, rhs_dilation,
                         dimension_numbers, feature_group_count):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  kh, kw, c_in, c_out = rhs.shape
  (top, bottom), (left, right) = _pairs(padding, 2)
  sh, sw = window_strides
  x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  b, h, w, _ = x.shape
  out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
  # tap (i, j) is the input each output position sees through kernel entry (i, j)
  taps = [lax.slice(x, (0, i, j, 0), (b, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1,
                                        c_in), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  # (i, j, c) order on the patch axis is HWIO's row-major order: the kernel reshapes freely
  return jnp.dot(patches, rhs.reshape(kh * kw * c_in, c_out), precision=precision,
                 preferred_element_type=preferred_element_type)


def prefers_im2col(lhs_shape, rhs_shape, window_strides, padding) -> bool:
  """The `None` rule: a CPU target, and a 1x1 kernel (patches are the input itself) or no
  more output positions than output channels (the patch matrix is no larger than the
  kernel matrix)."""
  if target_platform() != 'cpu':
    return False
  pairs = _pairs(padding, 2)
  if pairs is None:
    return False
  if tuple(rhs_shape[:2]) == (1, 1):
    return True
  positions = lhs_shape[0]
  for size, k, s, (lo, hi) in zip(lhs_shape[1:3], rhs_shape[:2], window_strides, pairs):
    positions *= (size + lo + hi - k) // s + 1
  return positions <= rhs_shape[3]


def conv_general_dilated(implementation: Optional[str] = None):
  """The convolution function for `implementation` (see the module docstring)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'convolution implementation must be one of {IMPLEMENTATIONS}, '
                     f'got {implementation!r}')
  if implementation == 'xla':
    return lax.conv_general_dilated
  if implementation == 'im2col':
    return im2col_conv

  def by_shape(lhs, rhs, window_strides, padding, **kwargs):
    if (prefers_im2col(lhs.shape, rhs.shape, window_strides, padding)
        and im2col_supports(lhs.shape, rhs.shape, padding, kwargs.get('lhs_dilation'),
                            kwargs.get('rhs_dilation'), kwargs.get('dimension_numbers'),
                            kwargs.get('feature_group_count', 1))):
      return im2col_conv(lhs, rhs, window_strides, padding, **kwargs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)

  return by_shape
