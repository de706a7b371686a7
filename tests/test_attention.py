"""The package's attention (nn/attention.py) against jax.nn.dot_product_attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdis_jax.nn import attention


def _qkv(t, s, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  draw = lambda n: jnp.asarray(rng.normal(size=(2, n, 3, 8)) * 2.0, dtype)
  return draw(t), draw(s), draw(s), jnp.asarray(rng.normal(size=(2, t, 3, 8)), jnp.float32)


def _loss(fn, weight):
  return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * weight)


@pytest.mark.parametrize('t,s', [(16, 16), (12, 7)])  # self- and cross-attention
def test_einsum_attention_matches_jax_values_and_gradients(t, s):
  q, k, v, weight = _qkv(t, s)
  ours = _loss(attention.einsum_attention, weight)
  ref = _loss(lambda *a: jax.nn.dot_product_attention(*a, implementation='xla'), weight)
  np.testing.assert_allclose(attention.einsum_attention(q, k, v),
                             jax.nn.dot_product_attention(q, k, v, implementation='xla'),
                             atol=2e-6, rtol=1e-5)
  for g_ours, g_ref in zip(jax.grad(ours, (0, 1, 2))(q, k, v), jax.grad(ref, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(g_ours, g_ref, atol=2e-5, rtol=1e-4)


def test_einsum_attention_gradients_match_finite_differences():
  q, k, v, weight = _qkv(5, 4)
  f = _loss(attention.einsum_attention, weight)
  eps = 1e-2
  direction = [jnp.asarray(np.random.default_rng(1).normal(size=x.shape), x.dtype)
               for x in (q, k, v)]
  grads = jax.grad(f, (0, 1, 2))(q, k, v)
  analytic = sum(jnp.sum(g * d) for g, d in zip(grads, direction))
  plus = f(*[x + eps * d for x, d in zip((q, k, v), direction)])
  minus = f(*[x - eps * d for x, d in zip((q, k, v), direction)])
  np.testing.assert_allclose((plus - minus) / (2 * eps), analytic, rtol=2e-2, atol=1e-3)


def test_einsum_attention_bfloat16_keeps_a_float32_softmax():
  q, k, v, _ = _qkv(16, 16, jnp.bfloat16)
  out = attention.einsum_attention(q, k, v)
  assert out.dtype == jnp.bfloat16
  ref = jax.nn.dot_product_attention(q, k, v, implementation='xla')
  np.testing.assert_allclose(out.astype(jnp.float32), ref.astype(jnp.float32), atol=5e-2)
  grads = jax.grad(lambda *a: jnp.sum(attention.einsum_attention(*a).astype(jnp.float32)),
                   (0, 1, 2))(q, k, v)
  assert all(g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g))) for g in grads)


def _uses_custom_vjp(fn, *args):
  return 'custom_vjp_call' in str(jax.make_jaxpr(fn)(*args))


def test_dispatch_default_on_cpu_is_einsum_and_masks_fall_back():
  q, k, v, _ = _qkv(6, 6)
  assert jax.default_backend() == 'cpu'
  assert _uses_custom_vjp(lambda *a: attention.dot_product_attention(*a), q, k, v)
  assert not _uses_custom_vjp(
      lambda *a: attention.dot_product_attention(*a, implementation='xla'), q, k, v)
  causal = attention.dot_product_attention(q, k, v, is_causal=True)
  assert not _uses_custom_vjp(lambda *a: attention.dot_product_attention(*a, is_causal=True),
                              q, k, v)
  np.testing.assert_allclose(
      causal, jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation='xla'),
      atol=1e-6)
  with pytest.raises(ValueError, match='attention implementation must be one of'):
    attention.dot_product_attention(q, k, v, implementation='flash')
