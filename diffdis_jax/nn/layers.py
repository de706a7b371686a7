"""Building blocks shared by every model in the package (DiT, UNet, CLIP text, heads).

Conventions:
  * token tensors are (batch, tokens, channels); images are NHWC;
  * parameters are float32 and carry logical axis names (see `configs/common.py` for the
    rules that map them onto the mesh); `dtype` is the compute dtype;
  * softmax and normalisation statistics are computed in float32 whatever `dtype` is.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.nn import attention, convolution

Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros
ones = nn.initializers.ones


def partitioned(init: Callable, axes: Sequence[Optional[str]]) -> Callable:
  """An initializer whose parameter carries logical axis names."""
  return nn.with_logical_partitioning(init, tuple(axes))


# Logical names of activation dimensions. Parameters are named by what they hold ('embed',
# 'mlp', ...); activations get their own names so that the rules can split a weight's 'embed'
# dimension over 'fsdp' while the activations' width stays whole (configs/common.py).
BATCH, LENGTH, EMBED = 'activation_batch', 'activation_length', 'activation_embed'
HEADS, MLP = 'activation_heads', 'activation_mlp'
TOKENS = (BATCH, LENGTH, EMBED)
IMAGE = (BATCH, None, None, None)


def constrain(x, names: Sequence[Optional[str]]):
  """Pin the layout of an activation by logical axis names.

  Without constraints XLA's sharding propagation is free to replicate batch-sized tensors
  (e.g. after the token gather of the masked student), which costs an all-reduce of the whole
  global batch. Outside a mesh and `nn.logical_axis_rules` context this is the identity, so
  models run unchanged on one device and in tests.
  """
  return nn.with_logical_constraint(x, tuple(names))


# the activation name of a Dense's input or output, from the kernel's name for that dimension
_ACTIVATION_OF = {'mlp': MLP, 'heads': HEADS}


def _activation_names(ndim: int, kernel_axis: Optional[str]):
  if ndim < 2:  # no batch dimension: leave the layout to XLA
    return (None,) * ndim
  return (BATCH,) + (LENGTH,) * (ndim - 2) + (_ACTIVATION_OF.get(kernel_axis, EMBED),)


def _sharded_dot_general(axes):
  """`dot_general` for nn.Dense with its operands and result pinned.

  The kernel stays sharded after its cast to the compute dtype, so FSDP gathers bfloat16
  weights rather than float32 ones; input and output keep the batch split, so XLA gathers the
  weight instead of the (usually larger) activations.
  """
  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    lhs = constrain(lhs, _activation_names(lhs.ndim, axes[0]))
    rhs = constrain(rhs, axes)
    out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                              preferred_element_type=preferred_element_type)
    return constrain(out, _activation_names(out.ndim, axes[1]))
  return dot_general


class Dense(nn.Module):
  """nn.Dense with logical axis names on its kernel and bias.

  `axes` names the (input, output) dimensions of the kernel; the bias takes the output name.
  """
  features: int
  axes: tuple[Optional[str], Optional[str]] = ('embed', 'mlp')
  use_bias: bool = True
  kernel_init: Callable = xavier_uniform
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(
        self.features,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(self.kernel_init, self.axes),
        bias_init=partitioned(zeros, (self.axes[1],)),
        dot_general=_sharded_dot_general(self.axes),
        name='dense')(x)


def _float32_norm(flax_norm, x, axis_name: Optional[str], dtype: Dtype, **options):
  """`flax_norm(**options)` (nn.LayerNorm or nn.GroupNorm, submodule 'norm') applied in
  float32, its scale and bias named `axis_name`, the result cast to `dtype`: statistics of
  bfloat16 activations would lose digits."""
  y = flax_norm(dtype=jnp.float32, param_dtype=jnp.float32,
                scale_init=partitioned(ones, (axis_name,)),
                bias_init=partitioned(zeros, (axis_name,)), name='norm',
                **options)(x.astype(jnp.float32))
  return y.astype(dtype)


class LayerNorm(nn.Module):
  """LayerNorm computed in float32, returned in the compute dtype."""
  epsilon: float = 1e-6
  use_affine: bool = True
  axis_name: Optional[str] = 'embed'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _float32_norm(nn.LayerNorm, x, self.axis_name, self.dtype, epsilon=self.epsilon,
                         use_scale=self.use_affine, use_bias=self.use_affine)


# what a rematerialised block keeps for its backward (`model.remat`); the rest is recomputed
REMAT_POLICIES = {
    'none': None,  # no remat: every intermediate is kept
    'full': jax.checkpoint_policies.nothing_saveable,  # only the block's inputs
    # products with weights (no batch dimension in the kernel): the norms, activations and
    # attention's batched products are recomputed, the costly projections are not
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def maybe_remat(module_cls, remat: Union[bool, str], methods=None):
  """`module_cls`, or its jax.checkpoint-wrapped version under REMAT_POLICIES[remat]
  (True means 'full', False 'none'); `methods` names the methods to wrap besides __call__."""
  name = {True: 'full', False: 'none'}.get(remat, remat)
  if name not in REMAT_POLICIES:
    raise ValueError(f'remat must be one of {list(REMAT_POLICIES)}, got {remat!r}')
  if name == 'none':
    return module_cls
  return nn.remat(module_cls, policy=REMAT_POLICIES[name],
                  methods=list(methods) if methods else None)


def modulate(x, shift, scale):
  """adaLN modulation of (batch, tokens, width) activations by per-sample shift and scale."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


def timestep_embedding(t, dim: int, max_period: float = 10000.0,
                       flip_sin_to_cos: bool = True, freq_shift: float = 0.0):
  """Sinusoidal embedding of (possibly fractional) timesteps, float32, shape (batch, dim).

  `freq_shift` reproduces the two conventions in use: 0 for DiT and SD's UNet,
  1 for diffusers' DiT port. `flip_sin_to_cos` puts cosines first (DiT, SD).
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = jnp.asarray(t, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedder(nn.Module):
  """Sinusoidal features of a scalar timestep (or EDM c_noise) followed by a 2-layer MLP."""
  hidden: int
  freq_dim: int = 256
  freq_shift: float = 0.0
  flip_sin_to_cos: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    init = nn.initializers.normal(0.02)
    freqs = timestep_embedding(t, self.freq_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                               freq_shift=self.freq_shift).astype(self.dtype)
    h = Dense(self.hidden, ('freq', 'embed'), kernel_init=init, dtype=self.dtype,
              name='linear_1')(freqs)
    # batch-split and whole in width: else XLA may follow the fsdp-split kernel and sum the
    # second product over devices for the whole global batch
    h = constrain(h, (BATCH, EMBED))
    return constrain(Dense(self.hidden, ('embed', 'embed_out'), kernel_init=init,
                           dtype=self.dtype, name='linear_2')(nn.silu(h)), (BATCH, EMBED))


class LabelEmbedder(nn.Module):
  """Class embedding table with one extra row, index `num_classes`, for the null class."""
  num_classes: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, labels):
    table = self.param('embedding_table',
                       partitioned(nn.initializers.normal(0.02), ('classes', 'embed')),
                       (self.num_classes + 1, self.hidden), jnp.float32)
    return constrain(jnp.take(table, labels, axis=0).astype(self.dtype), (BATCH, EMBED))


class Attention(nn.Module):
  """Multi-head attention over (batch, tokens, width); self-attention when `context` is None.

  The product is `attention.dot_product_attention`: on CPU a softmax attention with a
  hand-written backward, elsewhere `jax.nn.dot_product_attention`, so XLA picks a fused
  kernel where the backend has one (`implementation='cudnn'` on GPU).
  """
  num_heads: int
  qkv_bias: bool = True
  out_bias: bool = True
  implementation: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, *, is_causal: bool = False, mask=None):
    width = x.shape[-1]
    context = x if context is None else context
    head_dim = width // self.num_heads

    def project(name, inputs):
      y = Dense(width, ('embed', 'heads'), use_bias=self.qkv_bias, dtype=self.dtype,
                name=name)(inputs)
      y = y.reshape(*y.shape[:-1], self.num_heads, head_dim)
      return constrain(y, (BATCH, LENGTH, HEADS, None))

    q, k, v = project('query', x), project('key', context), project('value', context)
    out = attention.dot_product_attention(
        q, k, v, mask=mask, is_causal=is_causal, implementation=self.implementation,
        partition=nn.logical_to_mesh_axes((BATCH, LENGTH, HEADS, None)))
    out = constrain(out, (BATCH, LENGTH, HEADS, None)).reshape(*out.shape[:-2], width)
    return Dense(width, ('heads', 'embed'), use_bias=self.out_bias, dtype=self.dtype,
                 name='out')(out)


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


def gelu(x):
  """Exact GELU as PyTorch writes it, with erf: jax.nn.gelu's erfc is 4x slower on XLA:CPU."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


ACTIVATIONS = {
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),
    'gelu': gelu,
    'quick_gelu': quick_gelu,
    'silu': nn.silu,
}


class Mlp(nn.Module):
  """Two-layer feed-forward block. `activation='geglu'` gates the hidden layer (SD's UNet)."""
  hidden: int
  out: Optional[int] = None
  activation: str = 'gelu_tanh'
  kernel_init: Callable = xavier_uniform
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = self.out or x.shape[-1]
    if self.activation == 'geglu':
      h = Dense(2 * self.hidden, ('embed', 'mlp'), kernel_init=self.kernel_init,
                dtype=self.dtype, name='fc1')(x)
      h, gate = jnp.split(h, 2, axis=-1)
      h = h * gelu(gate)
    else:
      h = Dense(self.hidden, ('embed', 'mlp'), kernel_init=self.kernel_init, dtype=self.dtype,
                name='fc1')(x)
      h = ACTIVATIONS[self.activation](h)
    h = constrain(h, (BATCH,) + (LENGTH,) * (h.ndim - 2) + (MLP,))
    return Dense(out, ('mlp', 'embed'), kernel_init=self.kernel_init, dtype=self.dtype,
                 name='fc2')(h)


# ----------------------------------------------------------------------------- convolutions


class Conv(nn.Module):
  """2-D convolution over NHWC with PyTorch's symmetric integer padding and logical axis names.

  The kernel is (kh, kw, in, out), named `axes`; the bias takes the output name. Asymmetric
  padding (the SD VAE's downsampler) is done by the caller with `jnp.pad` and `padding=0`.
  `implementation`: nn/convolution.py's choice of lowering; the parameters do not depend on it.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  axes: tuple = ('conv_height', 'conv_width', 'conv_in', 'conv_out')
  kernel_init: Callable = nn.initializers.lecun_normal()
  implementation: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.padding
    return nn.Conv(
        self.features, (self.kernel_size, self.kernel_size),
        strides=(self.strides, self.strides), padding=((p, p), (p, p)),
        use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=partitioned(self.kernel_init, self.axes),
        bias_init=partitioned(zeros, (self.axes[-1],)),
        conv_general_dilated=convolution.conv_general_dilated(self.implementation),
        name='conv')(x.astype(self.dtype))


class GroupNorm(nn.Module):
  """GroupNorm over the channels of NHWC input (contiguous groups, as PyTorch), in float32.

  Uses the two-pass variance: the one-pass E[x^2] - E[x]^2 loses digits on the large,
  off-centre activations of the SD UNet and VAE.
  """
  num_groups: int = 32
  epsilon: float = 1e-5
  axis_name: Optional[str] = 'conv_out'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _float32_norm(nn.GroupNorm, x, self.axis_name, self.dtype,
                         num_groups=self.num_groups, epsilon=self.epsilon,
                         use_fast_variance=False)
