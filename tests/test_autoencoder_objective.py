"""The autoencoder's objective: its KL against torch.distributions', its PSNR by hand, and the
loss as the weighted sum the config describes."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from diffdis_jax.nn.vae import AutoencoderKL
from diffdis_jax.objectives import autoencoder as objective


def test_kl_matches_torch_distributions():
  rng = np.random.default_rng(0)
  mean = rng.standard_normal((3, 4, 4, 2)).astype(np.float32)
  logvar = rng.uniform(-3, 1, (3, 4, 4, 2)).astype(np.float32)
  ours = objective.kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(logvar))
  q = torch.distributions.Normal(torch.from_numpy(mean), torch.from_numpy(np.exp(0.5 * logvar)))
  p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
  theirs = torch.distributions.kl_divergence(q, p).reshape(3, -1).sum(-1).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
  assert float(objective.kl_to_standard_normal(jnp.zeros((1, 2)), jnp.zeros((1, 2)))[0]) == 0


def test_psnr():
  x = jnp.zeros((2, 4, 4, 1))
  y = x.at[0].set(0.2).at[1].set(2.0)  # mse 0.04 and 4 on a range of 2
  np.testing.assert_allclose(objective.psnr(x, y), [10 * np.log10(4 / 0.04), 0.0], atol=1e-4)


@pytest.mark.parametrize('reconstruction', objective.RECONSTRUCTIONS)
def test_loss_is_reconstruction_plus_weighted_kl(reconstruction):
  model = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 8),
                        layers_per_block=1, latent_channels=2, norm_num_groups=4)
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
  params = model.init(jax.random.key(0), x)['params']
  losses = {}
  for kl_weight in (0.0, 0.5):
    config = ml_collections.ConfigDict(
        {'autoencoder': {'reconstruction': reconstruction, 'kl_weight': kl_weight}})
    loss, (metrics, _) = objective.loss_fn(params, {'image': x}, jax.random.key(2), {}, 0,
                                           model=model, config=config)
    losses[kl_weight] = (float(loss), metrics)
  (l0, m0), (l1, m1) = losses[0.0], losses[0.5]
  assert l0 == pytest.approx(float(m0['rec_loss']))
  assert l1 == pytest.approx(float(m1['rec_loss']) + 0.5 * float(m1['kl_per_pixel']), rel=1e-6)
  assert float(m1['kl_per_pixel']) > 0
