"""nn/convolution.py: the im2col lowering equals XLA's convolution, values and gradients, and
the default picks it only where it is meant to."""
import collections
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import demo_diffdis
from conftest import compile_fast
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.modes.checks import check_run
from diffdis_jax.nn import convolution, layers
from diffdis_jax.nn.unet import UNet2DCondition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NHWC = ('NHWC', 'HWIO', 'NHWC')

# (input shape, kernel size, output channels, stride, (lo, hi) padding per spatial axis)
CASES = {
    '3x3_same': ((2, 7, 5, 3), 3, 4, 1, ((1, 1), (1, 1))),
    '3x3_stride2': ((2, 8, 9, 3), 3, 5, 2, ((1, 1), (1, 1))),
    'vae_downsample': ((1, 9, 9, 6), 3, 2, 2, ((0, 1), (0, 1))),  # pad right/bottom only
    '1x1': ((2, 5, 5, 3), 1, 4, 1, ((0, 0), (0, 0))),
    'no_padding_5x5': ((1, 9, 8, 2), 5, 3, 1, ((0, 0), (0, 0))),
}


def _inputs(shape, kernel, c_out, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1], c_out)) / kernel, jnp.float32)
  return x, w


@pytest.mark.parametrize('case', CASES.values(), ids=CASES.keys())
def test_im2col_matches_lax_values_and_gradients(case):
  shape, kernel, c_out, stride, padding = case
  x, w = _inputs(shape, kernel, c_out)
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(
      lax.conv_general_dilated(x, w, (stride,) * 2, padding, dimension_numbers=NHWC).shape),
      jnp.float32)

  def loss(conv):
    return lambda x, w: jnp.sum(conv(x, w, (stride,) * 2, padding, dimension_numbers=NHWC)
                                * cotangent)

  ref_value, ref_grads = jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
  value, grads = jax.jit(jax.value_and_grad(loss(convolution.im2col_conv), (0, 1)))(x, w)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for ours, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_im2col_defers_to_lax_where_it_does_not_apply():
  """Dilation, grouped channels and string padding: lax's answer, not a wrong one."""
  x, w = _inputs((1, 9, 9, 4), 3, 4)
  for kwargs in (dict(rhs_dilation=(2, 2)), dict(feature_group_count=2)):
    kernel = w[:, :, :2] if 'feature_group_count' in kwargs else w
    want = lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=NHWC, **kwargs)
    got = convolution.im2col_conv(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=NHWC, **kwargs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      convolution.im2col_conv(x, w, (1, 1), 'SAME', dimension_numbers=NHWC),
      lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC), rtol=1e-5,
      atol=1e-5)


def _primitives(fn, *args):
  """Every primitive of fn's jaxpr, nested jaxprs (jit, remat) included."""
  names, todo = set(), [jax.make_jaxpr(fn)(*args).jaxpr]
  while todo:
    for eqn in todo.pop().eqns:
      names.add(eqn.primitive.name)
      for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
          if isinstance(item, jax.extend.core.ClosedJaxpr):
            todo.append(item.jaxpr)
          elif isinstance(item, jax.extend.core.Jaxpr):
            todo.append(item)
  return names


def test_default_uses_im2col_on_cpu_for_1x1_and_small_maps_with_many_channels():
  assert jax.default_backend() == 'cpu'
  auto = convolution.conv_general_dilated(None)
  pad = ((1, 1), (1, 1))
  # an SD UNet's deep level at batch 1: 16 positions, 64 output channels
  small_map = (jnp.zeros((1, 4, 4, 32)), jnp.zeros((3, 3, 32, 64)))
  # an early level at batch 8: 2048 positions, 16 output channels
  big_map = (jnp.zeros((8, 16, 16, 8)), jnp.zeros((3, 3, 8, 16)))
  conv = lambda x, w: auto(x, w, (1, 1), pad, dimension_numbers=NHWC)
  assert 'dot_general' in _primitives(conv, *small_map)
  assert 'conv_general_dilated' not in _primitives(conv, *small_map)
  assert 'conv_general_dilated' in _primitives(conv, *big_map)
  # a 1x1 kernel is a matrix product on any map
  no_pad = lambda x, w: auto(x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=NHWC)
  assert 'conv_general_dilated' not in _primitives(no_pad, big_map[0], jnp.zeros((1, 1, 8, 16)))
  # the rule counts output positions: stride 2 on 16x16 leaves 64 <= 64 channels
  assert convolution.prefers_im2col((1, 16, 16, 8), (3, 3, 8, 64), (2, 2), pad)
  assert not convolution.prefers_im2col((1, 16, 16, 8), (3, 3, 8, 64), (1, 1), pad)
  forced = lambda x, w: convolution.conv_general_dilated('xla')(x, w, (1, 1), pad,
                                                                 dimension_numbers=NHWC)
  assert 'conv_general_dilated' in _primitives(forced, *small_map)
  with pytest.raises(ValueError, match='one of'):
    convolution.conv_general_dilated('fast')


def test_conv_layer_parameters_do_not_depend_on_the_implementation():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 3)), jnp.float32)
  make = lambda impl: layers.Conv(5, 3, strides=2, padding=1, implementation=impl)
  params = make('xla').init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(make('im2col').init(jax.random.PRNGKey(0), x)) == \
      jax.tree.structure(params)
  assert 'conv_general_dilated' not in _primitives(make('im2col').apply, params, x)
  assert 'conv_general_dilated' in _primitives(make('xla').apply, params, x)
  np.testing.assert_allclose(make('im2col').apply(params, x), make('xla').apply(params, x),
                             rtol=1e-5, atol=1e-5)


def test_unet_gives_the_same_output_and_gradients_with_either_convolution():
  unet = lambda impl: UNet2DCondition(
      block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=2,
      down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
      up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'), norm_num_groups=8, conv_impl=impl)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
  context = jnp.asarray(rng.standard_normal((2, 5, 12)), jnp.float32)
  params = unet('xla').init(jax.random.PRNGKey(0), x, 3.0, context)
  primitives = lambda impl: _primitives(lambda p: unet(impl).apply(p, x, 3.0, context), params)
  assert 'conv_general_dilated' not in primitives('im2col')
  assert 'conv_general_dilated' in primitives('xla')

  def grads(impl):
    loss = lambda p: jnp.mean(unet(impl).apply(p, x, 3.0, context) ** 2)
    return compile_fast(jax.value_and_grad(loss), params)(params)

  (ref_loss, ref_grads), (loss, grads_) = grads('xla'), grads('im2col')
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for ours, ref in zip(jax.tree.leaves(grads_), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-5)


def test_unknown_conv_impl_is_refused_in_one_line(tmp_path):
  config = demo_diffdis.get_config()
  config.model.conv_impl = 'fast'
  with pytest.raises(ConfigError, match='model.conv_impl') as error:
    check_run(config, 'train', str(tmp_path))
  assert '\n' not in str(error.value)


def test_conv_bench_reads_every_convolution_off_the_sd15_unet():
  """bench/conv.py's list is the model's: SD 1.5's UNet has 52 3x3 convolutions (conv_in,
  44 in 22 ResNets, 3 down- and 3 upsamplers, conv_out) and 46 1x1 (14 ResNet shortcuts,
  16 transformers' two projections)."""
  sys.path.insert(0, os.path.join(ROOT, 'bench'))
  import conv as conv_bench  # pylint: disable=g-import-not-at-top
  import train_step  # pylint: disable=g-import-not-at-top
  found = conv_bench.model_convolutions(train_step.diffdis_bench_config('sd15', 1, 32, 'none'))
  by_kernel = collections.Counter()
  for (_, kernel, _, _), count in found.items():
    by_kernel[kernel[:2]] += count
  assert by_kernel == {(3, 3): 52, (1, 1): 46}
  assert found[((1, 4, 4, 1280), (3, 3, 1280, 1280), (1, 1), ((1, 1), (1, 1)))] == 11
