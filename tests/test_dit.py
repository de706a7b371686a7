"""DiT / SD-DiT model: sizes, adaLN-Zero identity at init, token masks, encoder/decoder split."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdis_jax.nn import token_ops
from diffdis_jax.nn.dit import DIT_SIZES, DiTBlock, SDDiT, parse_dit_name


def _inputs(b=2, size=16, ch=4, classes=10):
  x = jax.random.normal(jax.random.PRNGKey(1), (b, size, size, ch))
  return x, jnp.linspace(-1, 1, b), jnp.arange(b) % (classes + 1)


@pytest.mark.parametrize('size', sorted(DIT_SIZES))
@pytest.mark.parametrize('patch', [2, 4, 8])
def test_every_size_and_patch_has_the_right_shapes(size, patch):
  depth, _, _, p = parse_dit_name(f'DiT-{size}/{patch}')
  assert p == patch
  model = SDDiT(input_size=16, in_channels=4, patch=patch, width=32, depth=depth, num_heads=2,
                num_classes=10, decoder_mode='split', decoder_depth=2, learn_sigma=True)
  x, t, y = _inputs()
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, y)
  out = jax.eval_shape(model.apply, nn.unbox(variables), x, t, y)
  assert out.shape == (2, 16, 16, 8)
  blocks = [k for k in variables['params'] if k.startswith('blocks_')]
  assert len(blocks) == depth


def test_dit_xl2_parameter_count_matches_the_paper():
  """DiT-XL/2 (learned sigma, 1000 classes): the official code reports 675,129,632 parameters,
  counting its fixed position table (256 x 1152), which is a constant here."""
  model = SDDiT(input_size=32, in_channels=4, patch=2, width=1152, depth=28, num_heads=16,
                num_classes=1000, decoder_mode='split', decoder_depth=0, learn_sigma=True)
  x, t, y = _inputs(1, 32, 4, 1000)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, y)
  count = sum(np.prod(v.shape) for v in jax.tree.leaves(nn.unbox(variables)))
  assert count + 256 * 1152 == 675_129_632, count


def test_adaln_zero_block_is_identity_at_init():
  block = DiTBlock(width=32, num_heads=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 32))
  c = jax.random.normal(jax.random.PRNGKey(1), (2, 32))
  params = block.init(jax.random.PRNGKey(2), x, c)
  np.testing.assert_array_equal(block.apply(params, x, c), x)
  # and not by accident: perturbed modulation weights change the output
  perturbed = jax.tree.map(lambda p: p + 0.1, nn.unbox(params))
  assert not np.allclose(block.apply(perturbed, x, c), x)


def test_dit_output_is_zero_at_init():
  model = SDDiT(input_size=8, in_channels=1, patch=2, width=32, depth=2, num_heads=2,
                num_classes=10, decoder_mode='split', decoder_depth=1)
  x, t, y = _inputs(2, 8, 1)
  params = model.init(jax.random.PRNGKey(0), x, t, y)
  np.testing.assert_array_equal(model.apply(params, x, t, y), 0.0)


def test_mask_gather_scatter_round_trip():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 5))
  keep = jnp.array([[0, 2, 9], [1, 3, 4], [5, 6, 7]])
  kept = token_ops.gather_tokens(x, keep)
  assert kept.shape == (3, 3, 5)
  np.testing.assert_array_equal(kept[1, 2], x[1, 4])
  np.testing.assert_array_equal(token_ops.scatter_tokens(x, kept, keep), x)
  zeros = token_ops.scatter_tokens(jnp.zeros_like(x), kept, keep)
  np.testing.assert_array_equal(zeros[0, 9], x[0, 9])
  assert float(jnp.abs(zeros[0, 1]).sum()) == 0.0


def test_patchify_round_trip_and_conv_order():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, 3))
  tokens = token_ops.patchify(x, 4)
  assert tokens.shape == (2, 6, 48)
  np.testing.assert_array_equal(token_ops.unpatchify(tokens, 4, 8, 12), x)
  # token 1 is the patch at row 0, columns 4..7, flattened (row, column, channel)
  np.testing.assert_array_equal(tokens[0, 1], x[0, 0:4, 4:8, :].reshape(-1))


@pytest.mark.parametrize('mode', ['separate', 'split'])
def test_keeping_every_token_equals_no_mask(mode):
  model = SDDiT(input_size=8, in_channels=1, patch=2, width=32, depth=3, num_heads=2,
                num_classes=10, decoder_mode=mode, decoder_depth=1, decoder_width=16,
                decoder_heads=2)
  x, t, y = _inputs(2, 8, 1)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), x, t, y))
  params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.PRNGKey(3), p.shape),
                        params)  # leave the zero-initialised regime
  full = model.apply(params, x, t, y)
  all_idx = jnp.tile(jnp.arange(16), (2, 1))
  np.testing.assert_allclose(model.apply(params, x, t, y, all_idx), full, atol=1e-5)


def test_encoder_sees_only_visible_tokens_and_decoder_fills_with_noisy_tokens():
  model = SDDiT(input_size=8, in_channels=1, patch=2, width=32, depth=2, num_heads=2,
                num_classes=10, decoder_mode='separate', decoder_depth=1, decoder_width=16,
                decoder_heads=2, head=dict(hidden=16, bottleneck=8, out_dim=12, num_layers=2))
  x, t, y = _inputs(2, 8, 1)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), x, t, y))
  assert 'projection_head' in params['params'] and 'mask_token' not in params['params']
  keep = jnp.array([[0, 5, 7, 9], [1, 2, 3, 15]])
  out, tokens = model.apply(params, x, t, y, keep, method='forward_with_tokens')
  assert out.shape == x.shape and tokens.shape == (2, 4, 32)
  assert model.apply(params, tokens, method='project').shape == (2, 4, 12)
  # a change in a masked patch reaches the output only through the decoder's infill, so the
  # encoder tokens of the visible patches are untouched by it
  x2 = x.at[:, 0:2, 2:4, :].add(1.0)  # patch 1 is masked in sample 0
  _, tokens2 = model.apply(params, x2, t, y, keep, method='forward_with_tokens')
  np.testing.assert_allclose(tokens2[0], tokens[0], atol=1e-6)
  assert not np.allclose(tokens2[1], tokens[1])  # patch 1 is visible in sample 1


def test_mask_token_infill_has_a_learned_token():
  model = SDDiT(input_size=8, in_channels=1, patch=2, width=32, depth=2, num_heads=2,
                num_classes=10, decoder_mode='split', decoder_depth=1, infill='mask_token')
  x, t, y = _inputs(2, 8, 1)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), x, t, y))
  assert params['params']['mask_token'].shape == (1, 1, 32)


def test_remat_policies_keep_values_and_gradients_and_recompute_what_they_say():
  """'full' recomputes every product of a block in the backward, 'dots' only attention's
  batched ones (the products with weights are kept), 'none' none."""
  x, t, y = _inputs(2, 8, 4)

  def loss(remat):
    model = SDDiT(input_size=8, in_channels=4, patch=2, width=32, depth=2, num_heads=2,
                  num_classes=10, decoder_mode='split', decoder_depth=1, remat=remat)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), x, t, y))
    params = jax.tree.map(lambda p: p + 0.05, params)  # adaLN-Zero: else the blocks are idle
    return (lambda p: jnp.sum(model.apply(p, x, t, y) ** 2)), params

  results, products = {}, {}
  for remat in ('none', 'dots', 'full'):
    fn, params = loss(remat)
    results[remat] = jax.jit(jax.value_and_grad(fn))(params)
    products[remat] = str(jax.make_jaxpr(jax.grad(fn))(params)).count('dot_general[')
  assert products['none'] < products['dots'] < products['full'], products
  for remat in ('dots', 'full'):
    np.testing.assert_allclose(results[remat][0], results['none'][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(results[remat][1]), jax.tree.leaves(results['none'][1])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match=r"remat must be one of \['none', 'full', 'dots'\]"):
    loss('some')
