"""The TPU splash kernel path (nn/splash_attention.py), run through the Pallas interpreter.

The interpreter executes the same kernel, grid and masks the TPU would, so these tests check
the wiring this package adds: padding of lengths and head dimension, the mask over padded
keys, tiling over several blocks, the softmax scale, the batch vmap and shard_map over a mesh.
They cannot check Mosaic's lowering or speed, which need a TPU.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import AXIS_RULES
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.core.platform import targeting
from diffdis_jax.modes.checks import check_shared_fields
from diffdis_jax.nn import attention, splash_attention
from diffdis_jax.nn.dit import DiTBlock
from diffdis_jax.parallel import mesh as mesh_lib


def _qkv(b, t, s, heads, head_dim, seed=0):
  rng = np.random.default_rng(seed)
  draw = lambda n: jnp.asarray(rng.normal(size=(b, n, heads, head_dim)) * 1.5, jnp.float32)
  return draw(t), draw(s), draw(s), draw(t)


def _reference(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation='xla')


def _values_and_grads(fn, q, k, v, weight):
  loss = lambda *a: jnp.sum(fn(*a) * weight)
  return fn(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)


@pytest.mark.parametrize('t,s,head_dim,max_block', [
    (40, 40, 24, 512),     # one padded tile, head_dim padded to 128
    (40, 77, 16, 512),     # cross-attention to 77 text tokens: padded keys are masked out
    (256, 200, 32, 128),   # two query tiles, two key tiles, the second one partly padding
])
def test_splash_matches_jax_attention_values_and_gradients(t, s, head_dim, max_block):
  q, k, v, weight = _qkv(2, t, s, 2, head_dim)
  splash = lambda *a: splash_attention.splash_attention(*a, max_block=max_block, interpret=True)
  out, grads = _values_and_grads(jax.jit(splash), q, k, v, weight)
  ref_out, ref_grads = _values_and_grads(_reference, q, k, v, weight)
  assert out.shape == ref_out.shape
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
  for name, g, ref in zip('qkv', grads, ref_grads):
    np.testing.assert_allclose(g, ref, atol=1e-4, rtol=1e-4, err_msg=f'd{name}')


def test_tile_is_a_lane_multiple_capped_at_the_largest_block():
  assert [splash_attention.tile(n) for n in (1, 77, 128, 129, 256, 4096)] == [
      128, 128, 128, 256, 256, 512]
  assert splash_attention.tile(4096, max_block=1024) == 1024


def test_splash_under_a_mesh_runs_in_shard_map_and_matches_one_device():
  """Batch over (data, fsdp) and heads over tensor on the 8 virtual devices."""
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2))
  q, k, v, weight = _qkv(4, 40, 40, 4, 16)
  spec = jax.sharding.PartitionSpec(('data', 'fsdp'), None, 'tensor', None)
  fn = lambda *a: attention.dot_product_attention(*a, implementation='splash', partition=spec)
  with jax.set_mesh(mesh):
    sharded = jax.jit(lambda *a: _values_and_grads(fn, *a, weight))
    assert 'shard_map' in str(jax.make_jaxpr(sharded)(q, k, v))
    out, grads = sharded(q, k, v)
  ref_out, ref_grads = _values_and_grads(_reference, q, k, v, weight)
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
  for g, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(g, ref, atol=1e-4, rtol=1e-4)


def test_dit_block_with_splash_equals_einsum_under_the_training_rules():
  """The layer passes its logical layout, so the kernel sees whole heads and batch slices."""
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 40, 64))
  c = jax.random.normal(jax.random.PRNGKey(1), (4, 64))
  params = nn.unbox(DiTBlock(64, 4).init(jax.random.PRNGKey(2), x, c))
  leaves, treedef = jax.tree.flatten(params)  # adaLN-Zero: at init attention is unused
  noise = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = treedef.unflatten([p + 0.1 * jax.random.normal(n, p.shape)
                              for p, n in zip(leaves, noise)])
  weight = jax.random.normal(jax.random.PRNGKey(4), x.shape)

  def loss(impl):
    block = DiTBlock(64, 4, attention_impl=impl)
    return jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(block.apply(p, x, c) * weight),
                                      (0, 1)))

  with mesh_lib.activation_rules(mesh, AXIS_RULES):
    assert 'shard_map' in str(jax.make_jaxpr(loss('splash'))(params, x))
    value, (g_params, g_x) = loss('splash')(params, x)
  ref_value, (ref_params, ref_x) = loss('einsum')(params, x)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  refs = jax.tree.leaves((ref_x, ref_params))
  # one tolerance for all: the key bias's gradient is zero in exact arithmetic (softmax ignores
  # a shift of every logit), so its float32 value is rounding noise in both
  atol = 1e-5 * max(float(jnp.abs(r).max()) for r in refs)
  for g, ref in zip(jax.tree.leaves((g_x, g_params)), refs):
    np.testing.assert_allclose(g, ref, atol=atol, rtol=1e-4)


def test_masked_and_causal_attention_do_not_go_to_splash():
  q, k, v, _ = _qkv(1, 6, 6, 2, 8)
  causal = lambda *a: attention.dot_product_attention(*a, is_causal=True, implementation='splash')
  assert 'pallas_call' not in str(jax.make_jaxpr(causal)(q, k, v))
  assert 'pallas_call' in str(jax.make_jaxpr(
      lambda *a: attention.dot_product_attention(*a, implementation='splash'))(q, k, v))
  np.testing.assert_allclose(
      causal(q, k, v), jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=1e-6)


def test_config_asking_for_splash_off_tpu_is_refused_with_the_fix():
  from configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config()
  config.model.attention_impl = 'splash'
  with pytest.raises(ConfigError, match="TPU kernel and the target platform is cpu; pass"):
    check_shared_fields(config)
  with targeting('cuda'), pytest.raises(ConfigError, match="target platform is gpu; pass"):
    check_shared_fields(config)
  with targeting('tpu'):  # an export for TPU from this CPU host
    check_shared_fields(config)
