"""The FID InceptionV3 (TensorFlow's inception-2015-12-05 graph) in Flax, NHWC.

This is the network behind FID, sFID, IS and precision/recall in ADM's evaluator and in
pytorch-fid: torchvision's InceptionV3 with pytorch-fid's patches (`FIDInceptionA/C/E_1/E_2`):
the pooling branches of the A, C and E blocks average without counting padded zeros, and the
last E block max-pools. Module and parameter names follow torchvision's (`Mixed_6d.branch1x1`)
so the converter below is a renaming plus a transpose.

Outputs (a dict of float32 arrays):
  'pool'             (n, 2048)   pool_3, the FID features;
  'spatial'          (n, 2023)   ADM's `mixed_6/conv` (= Mixed_6d.branch1x1) first 7 channels of
                                 the 17x17 map, flattened in (h, w, c) order: sFID features;
  'logits_unbiased'  (n, 1008)   pool @ fc kernel, what ADM's softmax (and so its IS) uses;
  'logits'           (n, 1008)   the same plus the fc bias (pytorch's `fc` output).

Input: NHWC images of any size with values in `value_range` (uint8 [0, 255] by default, the
ADM `.npz` format). Two preprocessing modes:
  'adm'          what the TF graph ADM feeds does: TF1 `ResizeBilinear` to 299 without half-pixel
                 centres, on [0, 255], then (x - 128) / 128;
  'pytorch_fid'  what pytorch-fid does: [0, 1] input, `F.interpolate(..., 'bilinear',
                 align_corners=False)` (half-pixel centres, no antialiasing), then 2x - 1.

Weights: pytorch-fid's released `pt_inception-2015-12-05-6726825d.pth` (a port of the TF graph),
converted once to safetensors with torch installed:

  python -c "import torch, safetensors.torch as st; sd = torch.load('pt_inception-2015-12-05-6726825d.pth', map_location='cpu'); st.save_file({k: v.contiguous() for k, v in sd.items()}, 'pt_inception-2015-12-05.safetensors')"

then `load_inception_variables('pt_inception-2015-12-05.safetensors')`. Nothing is downloaded.

Parameter logical axes: conv kernels ('conv_height', 'conv_width', 'conv_in', 'conv_out'),
batch-norm scale/bias/mean/var ('conv_out',), fc kernel ('embed', 'classes'), fc bias
('classes',). Batch-norm statistics live in the 'batch_stats' collection (inference only).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.nn.layers import partitioned

Dtype = Any
IntPair = Union[int, Sequence[int]]

INPUT_SIZE = 299
NUM_CLASSES = 1008     # the TF graph's softmax has 1008 outputs (1000 classes + unused)
SPATIAL_CHANNELS = 7   # ADM keeps mixed_6/conv[..., :7]
BN_EPS = 1e-3
CONV_AXES = ('conv_height', 'conv_width', 'conv_in', 'conv_out')


def _precision(dtype):
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _pair(v: IntPair) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------- resizing


def resize_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
  """(out_size, in_size) bilinear interpolation weights along one axis.

  'pytorch_fid': src = (dst + 0.5) * in / out - 0.5, clamped at 0 (PyTorch, align_corners=False).
  'adm':         src = dst * in / out (TF1 ResizeBilinear, align_corners=False, no half pixel).
  Neither antialiases when shrinking: that is what both references do.
  """
  # Source coordinates in float32, as both references compute them (it moves results by 1e-5).
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  dst = np.arange(out_size, dtype=f32)
  if mode == 'pytorch_fid':
    src = np.maximum(scale * (dst + f32(0.5)) - f32(0.5), f32(0))
  elif mode == 'adm':
    src = dst * scale
  else:
    raise ValueError(f"unknown Inception preprocessing mode {mode!r}: use 'adm' or 'pytorch_fid'")
  src = src.astype(np.float64)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  weights = np.zeros((out_size, in_size), np.float64)
  np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  return weights


def resize_bilinear(images, size: int, mode: str):
  """Resizes NHWC float images to size x size with the chosen convention (separable matmuls)."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  rows = jnp.asarray(resize_matrix(h, size, mode), jnp.float32)
  cols = jnp.asarray(resize_matrix(w, size, mode), jnp.float32)
  hi = jax.lax.Precision.HIGHEST  # full float32 on TPU/GPU, where the default may be bf16 passes
  out = jnp.einsum('oh,nhwc->nowc', rows, images, precision=hi)
  return jnp.einsum('pw,nowc->nopc', cols, out, precision=hi)


# ----------------------------------------------------------------------------- blocks


class BasicConv(nn.Module):
  """Conv (no bias) -> batch norm with frozen statistics (eps 1e-3) -> ReLU.

  float32 convolutions run at full precision: by default TPUs (bf16 passes) and GPUs (TF32)
  round their inputs, while the reference implementations compute in full float32.
  """
  features: int
  kernel_size: IntPair = 1
  strides: IntPair = 1
  padding: IntPair = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    y = nn.Conv(
        self.features, _pair(self.kernel_size), strides=_pair(self.strides),
        padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
        param_dtype=jnp.float32, precision=_precision(self.dtype),
        kernel_init=partitioned(nn.initializers.lecun_normal(), CONV_AXES),
        name='conv')(x.astype(self.dtype))
    return nn.relu(FrozenBatchNorm(name='bn')(y)).astype(self.dtype)


class FrozenBatchNorm(nn.Module):
  """Inference batch norm in float32; statistics in the 'batch_stats' collection."""
  epsilon: float = BN_EPS

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', partitioned(nn.initializers.ones, ('conv_out',)), (c,))
    bias = self.param('bias', partitioned(nn.initializers.zeros, ('conv_out',)), (c,))
    mean = self.variable('batch_stats', 'mean',
                         partitioned(nn.initializers.zeros, ('conv_out',)), None, (c,)).value
    var = self.variable('batch_stats', 'var',
                        partitioned(nn.initializers.ones, ('conv_out',)), None, (c,)).value
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    return (x.astype(jnp.float32) - mean) * mul + bias


def _avg_pool_3x3(x):
  # TF's average pool ignores the padded zeros: count_include_pad=False (pytorch-fid's patch).
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class _InceptionModule(nn.Module):
  """A module of the network above BasicConv: its convolutions compute in `dtype`, which is
  keyword-only so that each block keeps its own fields positional."""
  _: dataclasses.KW_ONLY
  dtype: Dtype = jnp.float32

  @nn.nowrap  # a constructor helper: no Flax scope, no entry in captured intermediates
  def conv(self, *args, **kwargs) -> BasicConv:
    """A BasicConv submodule in this module's dtype."""
    return BasicConv(*args, dtype=self.dtype, **kwargs)


class InceptionA(_InceptionModule):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = self.conv(64, name='branch1x1')(x)
    b5 = self.conv(48, name='branch5x5_1')(x)
    b5 = self.conv(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = self.conv(64, name='branch3x3dbl_1')(x)
    b3 = self.conv(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = self.conv(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = self.conv(self.pool_features, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_InceptionModule):

  @nn.compact
  def __call__(self, x):
    b3 = self.conv(384, 3, strides=2, name='branch3x3')(x)
    bd = self.conv(64, name='branch3x3dbl_1')(x)
    bd = self.conv(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = self.conv(96, 3, strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x).astype(self.dtype)], axis=-1)


class InceptionC(_InceptionModule):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = self.conv(192, name='branch1x1')(x)
    b7 = self.conv(c7, name='branch7x7_1')(x)
    b7 = self.conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = self.conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = self.conv(c7, name='branch7x7dbl_1')(x)
    bd = self.conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = self.conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = self.conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = self.conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = self.conv(192, name='branch_pool')(_avg_pool_3x3(x))
    # Returned separately too: ADM's sFID reads the 1x1 branch of Mixed_6d (`mixed_6/conv`).
    return jnp.concatenate([b1, b7, bd, bp], axis=-1), b1


class InceptionD(_InceptionModule):

  @nn.compact
  def __call__(self, x):
    b3 = self.conv(192, name='branch3x3_1')(x)
    b3 = self.conv(320, 3, strides=2, name='branch3x3_2')(b3)
    b7 = self.conv(192, name='branch7x7x3_1')(x)
    b7 = self.conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = self.conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = self.conv(192, 3, strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x).astype(self.dtype)], axis=-1)


class InceptionE(_InceptionModule):
  """`max_pool=False`: FIDInceptionE_1 (Mixed_7b); True: FIDInceptionE_2 (Mixed_7c)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = self.conv(320, name='branch1x1')(x)
    b3 = self.conv(384, name='branch3x3_1')(x)
    b3 = jnp.concatenate([self.conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          self.conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)],
                         axis=-1)
    bd = self.conv(448, name='branch3x3dbl_1')(x)
    bd = self.conv(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([self.conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          self.conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)],
                         axis=-1)
    if self.max_pool:  # the TF graph's last block max-pools (a quirk pytorch-fid reproduces)
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = self.conv(192, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# ----------------------------------------------------------------------------- network


class InceptionV3(_InceptionModule):
  """FID InceptionV3; see the module docstring for inputs and outputs.

  `dtype` is the convolution compute dtype; float32 is what the published numbers used, keep it
  for reported metrics.
  """
  preprocess: str = 'adm'
  value_range: tuple[float, float] = (0.0, 255.0)
  resize_input: bool = True

  def normalize(self, images):
    """Maps images in `value_range` to the network's [-1, 1] input at 299 x 299."""
    lo, hi = self.value_range
    x = (jnp.asarray(images).astype(jnp.float32) - lo) / (hi - lo)  # [0, 1]
    if self.preprocess == 'adm':
      x = x * 255.0
      if self.resize_input:
        x = resize_bilinear(x, INPUT_SIZE, 'adm')
      return (x - 128.0) / 128.0
    if self.preprocess == 'pytorch_fid':
      if self.resize_input:
        x = resize_bilinear(x, INPUT_SIZE, 'pytorch_fid')
      return 2.0 * x - 1.0
    raise ValueError(f"unknown Inception preprocessing {self.preprocess!r}: "
                     "use 'adm' or 'pytorch_fid'")

  @nn.compact
  def __call__(self, images) -> dict[str, jax.Array]:
    x = self.normalize(images)
    x = self.conv(32, 3, strides=2, name='Conv2d_1a_3x3')(x)
    x = self.conv(32, 3, name='Conv2d_2a_3x3')(x)
    x = self.conv(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = self.conv(80, 1, name='Conv2d_3b_1x1')(x)
    x = self.conv(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, dtype=self.dtype, name='Mixed_5b')(x)
    x = InceptionA(64, dtype=self.dtype, name='Mixed_5c')(x)
    x = InceptionA(64, dtype=self.dtype, name='Mixed_5d')(x)
    x = InceptionB(dtype=self.dtype, name='Mixed_6a')(x)
    x, _ = InceptionC(128, dtype=self.dtype, name='Mixed_6b')(x)
    x, _ = InceptionC(160, dtype=self.dtype, name='Mixed_6c')(x)
    x, mixed_6_conv = InceptionC(160, dtype=self.dtype, name='Mixed_6d')(x)
    x, _ = InceptionC(192, dtype=self.dtype, name='Mixed_6e')(x)
    x = InceptionD(dtype=self.dtype, name='Mixed_7a')(x)
    x = InceptionE(max_pool=False, dtype=self.dtype, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, dtype=self.dtype, name='Mixed_7c')(x)
    pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    kernel = self.param('fc_kernel', partitioned(nn.initializers.lecun_normal(),
                                                 ('embed', 'classes')), (2048, NUM_CLASSES))
    bias = self.param('fc_bias', partitioned(nn.initializers.zeros, ('classes',)), (NUM_CLASSES,))
    logits = jnp.dot(pool, kernel, precision=jax.lax.Precision.HIGHEST)
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].astype(jnp.float32)
    return {
        'pool': pool,
        'spatial': spatial.reshape(spatial.shape[0], -1),
        'logits_unbiased': logits,
        'logits': logits + bias,
    }


# ----------------------------------------------------------------------------- weights


def abstract_variables(model: InceptionV3 | None = None) -> dict:
  """Shapes of the variables, {'params': ..., 'batch_stats': ...}, without computing anything."""
  model = model or InceptionV3()
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)
  return flax.core.unfreeze(nn.meta.unbox(shapes))


def _torch_key_to_flax(key: str) -> tuple[str, tuple[str, ...], str] | None:
  """('params' | 'batch_stats', flax path, layout) for a pytorch-fid key; None to ignore."""
  parts = key.split('.')
  if key == 'fc.weight':
    return 'params', ('fc_kernel',), 'linear'
  if key == 'fc.bias':
    return 'params', ('fc_bias',), 'copy'
  if parts[-1] == 'num_batches_tracked':
    return None
  if len(parts) >= 3 and parts[-2] == 'conv' and parts[-1] == 'weight':
    return 'params', (*parts[:-1], 'kernel'), 'conv'
  if len(parts) >= 3 and parts[-2] == 'bn':
    leaf = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
            'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
    if parts[-1] in leaf:
      col, name = leaf[parts[-1]]
      return col, (*parts[:-1], name), 'copy'
  return '?', tuple(parts), 'copy'


def convert_torch_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """pytorch-fid / torchvision FID-Inception state dict (torch names) -> Flax variables.

  Conv weights go from (out, in, kh, kw) to (kh, kw, in, out), the fc weight is transposed.
  Fails with the lists of missing, unexpected and mis-shaped keys.
  """
  want = flax.traverse_util.flatten_dict(abstract_variables())
  got, unexpected = {}, []
  for key, value in state_dict.items():
    target = _torch_key_to_flax(key)
    if target is None:
      continue
    col, path, layout = target
    value = np.asarray(value.detach().cpu().numpy() if hasattr(value, 'detach') else value,
                       np.float32)
    if layout == 'conv' and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif layout == 'linear' and value.ndim == 2:
      value = value.T
    if (col, *path) not in want:
      unexpected.append(key)
      continue
    got[(col, *path)] = value
  missing = ['/'.join(k) for k in want if k not in got]
  bad_shape = [f"{'/'.join(k)}: {v.shape} != {want[k].shape}" for k, v in got.items()
               if v.shape != tuple(want[k].shape)]
  if missing or unexpected or bad_shape:
    raise ValueError('FID Inception weights do not match the network: '
                     f'missing {missing}, unexpected {unexpected}, wrong shapes {bad_shape}')
  return flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in got.items()})


def load_inception_variables(path: str) -> dict:
  """Variables from a safetensors file holding pytorch-fid's state dict (torch key names)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return convert_torch_state_dict(load_file(path))
