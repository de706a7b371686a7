"""DiffDisUNet: shapes, names, the text-off path against the plain UNet, the alignment pass."""
import functools
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import compile_fast
from diffdis_jax.nn.diffdis import init_inputs, is_new_param, split_params, with_unet_params
from diffdis_jax.nn.unet import UNet2DCondition
from diffdis_testlib import (CTX_DIM, CTX_LEN, SIDE, TEXT_DIM, UNET, abstract_params,
                             random_params, tiny_model)

BATCH = 3


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((BATCH, SIDE, SIDE, 4)).astype(np.float32)
  c = rng.standard_normal((BATCH, CTX_LEN, CTX_DIM)).astype(np.float32)
  e = rng.standard_normal((BATCH, TEXT_DIM)).astype(np.float32)
  return x, np.array([3.0, 400.0, 999.0], np.float32), c, e


def test_param_names_shapes_and_axes():
  model = tiny_model()
  inputs = init_inputs(model, SIDE, CTX_LEN, CTX_DIM)
  boxed = abstract_params(model)
  plain = jax.eval_shape(lambda r: UNet2DCondition(**UNET).init(r, *inputs),
                         jax.random.PRNGKey(0))['params']
  unet_part, new_part = split_params(boxed)
  # the plain UNet's parameters are all there under their own names and shapes
  shapes = lambda t: jax.tree.map(lambda a: a.shape, nn.unbox(t))
  assert shapes(unet_part) == shapes(plain)
  assert sorted(new_part) == ['logit_scale', 'null_image', 'text_head', 'text_stream_down_0_0',
                              'text_stream_mid_0', 'text_time_embedding']
  # one text FFN per transformer layer: two in the first level, one in the mid block
  assert sorted(k for k in new_part['text_stream_down_0_0'] if k.startswith('ffs')) == \
      ['ffs_0', 'ffs_1']
  assert 'ffs_1' not in new_part['text_stream_mid_0']
  # the head's SD blocks never create cross-attention weights
  assert 'attn2' not in new_part['text_head']['blocks_0']
  # every new parameter carries logical axis names, one per dimension
  for leaf in jax.tree.leaves(new_part, is_leaf=lambda a: isinstance(a, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned)
    assert len(leaf.names) == leaf.value.ndim
  out = jax.eval_shape(lambda p, *a: model.apply({'params': p}, *a, method='initialize'),
                       nn.unbox(boxed), *inputs)
  assert out[0].shape == inputs[0].shape and out[1].shape == (1, TEXT_DIM)


@pytest.mark.parametrize('align,expected', [
    ('contrastive', ['logit_scale', 'null_image', 'text_head']), ('none', [])])
def test_baseline_variants_have_only_their_parameters(align, expected):
  params = abstract_params(tiny_model(align=align))
  assert sorted(k for k in params if is_new_param(k)) == expected
  if align == 'contrastive':
    assert 'query_token' in params['text_head'] and 'fc_in' not in params['text_head']


def test_text_stream_off_is_the_plain_unet_bit_for_bit():
  params = random_params()
  # different values in the UNet part, as SD weights would be, loaded by name
  plain_params = jax.tree.map(lambda a: a * 1.5 + 0.01, split_params(params)[0])
  merged = with_unet_params(params, plain_params)
  x, t, c, _ = _inputs()
  plain = UNet2DCondition(**UNET)
  capture = lambda mdl, name: mdl.name == 'mid_block'
  ref_out, state = jax.jit(lambda p: plain.apply({'params': p}, x, t, c,
                                                 capture_intermediates=capture,
                                                 mutable=['intermediates']))(plain_params)
  ref_mid = state['intermediates']['mid_block']['__call__'][0]
  model = tiny_model()
  out, mid = jax.jit(lambda p: (model.apply({'params': p}, x, t, c),
                                model.apply({'params': p}, x, t, c, method='encode')))(merged)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref_out))
  np.testing.assert_array_equal(np.asarray(mid), np.asarray(ref_mid))


def test_with_unet_params_lists_mismatches():
  params = random_params()
  unet = dict(split_params(params)[0])
  unet.pop('conv_out')
  unet['extra'] = {'w': np.zeros(3)}
  with pytest.raises(ValueError, match=r"missing \['conv_out/conv/bias'.*unexpected \['extra/w'"):
    with_unet_params(params, unet)


def test_alignment_pass_uses_down_mid_head_and_the_image_null():
  params = random_params()
  # the up path and the output layers are removed: the pass would fail if it touched them
  down_mid = {k: v for k, v in params.items()
              if not k.startswith(('up_blocks', 'conv_out', 'conv_norm_out'))}
  model = tiny_model()
  x, _, c, e = _inputs()
  t_e = np.array([10.0, 500.0, 900.0], np.float32)

  @jax.jit
  def predict(p, z, e_t, keep):
    return model.apply({'params': p}, z, 0.0, c, e_t, t_e, image_keep=keep,
                       method='predict_text')

  keep = np.ones(BATCH, bool)
  drop = np.array([True, False, True])  # image_keep: the second image is dropped
  out = np.asarray(predict(down_mid, x, e, keep))
  assert out.shape == (BATCH, TEXT_DIM) and out.dtype == np.float32
  assert np.all(np.isfinite(out))
  # the prediction depends on the noisy query and on the image
  assert not np.allclose(out, predict(down_mid, x, e + 1.0, keep), atol=1e-4)
  x2 = x + 1.0
  assert not np.allclose(out, predict(down_mid, x2, e, keep), atol=1e-4)
  # a dropped image is replaced by the learned null: its row no longer depends on x ...
  a, b = np.asarray(predict(down_mid, x, e, drop)), np.asarray(predict(down_mid, x2, e, drop))
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.allclose(a[0], b[0], atol=1e-4)
  # ... and equals the prediction for the null latent itself
  null = dict(down_mid, null_image=np.array([0.3, -0.2, 0.1, 0.5], np.float32))
  x_null = x.copy()
  x_null[1] = null['null_image']
  np.testing.assert_allclose(predict(null, x, e, drop)[1], predict(null, x_null, e, keep)[1],
                             rtol=1e-6, atol=1e-6)


def _text_and_generation_loss(model):
  """Both passes' outputs squared and averaged: a scalar whose gradient reaches every block."""
  x, t, c, e = _inputs()
  t_e = np.array([10.0, 500.0, 900.0], np.float32)

  def fn(p):
    noise_pred = model.apply({'params': p}, x, t, c)                      # generation pass
    text = model.apply({'params': p}, x, 0.0, c, e, t_e, method='predict_text')
    return (noise_pred ** 2).mean() + (text ** 2).mean()
  return fn


def _value_and_grad(fn, params):
  """One compile for the value and the gradients (the UNet's gradient compile is the cost),
  both models compiled alike."""
  return jax.device_get(compile_fast(jax.value_and_grad(fn), params)(params))


@functools.cache
def _plain_value_and_grad():
  return _value_and_grad(_text_and_generation_loss(tiny_model()), random_params())


@pytest.mark.parametrize('policy', ['full', 'dots'])
def test_remat_recomputes_blocks_without_changing_values_or_gradients(policy):
  """model.remat wraps every ResNet and transformer block (and the sub-layers DiffDis' dual-
  stream pass calls one by one) in jax.checkpoint; parameters and gradients are unchanged."""
  params = random_params()
  plain = _text_and_generation_loss(tiny_model())
  remat = _text_and_generation_loss(tiny_model(remat=policy))
  plain_jaxpr, remat_jaxpr = (str(jax.make_jaxpr(jax.grad(fn))(params)) for fn in (plain, remat))
  count = lambda jaxpr, name: len(re.findall(r'= %s\[' % name, jaxpr))
  # jax.checkpoint's primitive ('remat2' in jax 0.10, 'checkpoint' in later releases)
  checkpoints = lambda jaxpr: count(jaxpr, 'remat2') + count(jaxpr, 'checkpoint')
  assert checkpoints(plain_jaxpr) == 0
  # one per ResNet, per transformer block of the plain pass, per sub-layer of the text pass
  assert checkpoints(remat_jaxpr) >= 10
  # forwards recomputed
  assert count(remat_jaxpr, 'dot_general') > count(plain_jaxpr, 'dot_general')
  value, grads = _value_and_grad(remat, params)
  plain_value, plain_grads = _plain_value_and_grad()  # computed once for both policies
  np.testing.assert_allclose(value, plain_value, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
