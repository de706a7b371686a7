"""The KL autoencoder's objective (Stable Diffusion's VAE recipe without its perceptual and
adversarial terms): reconstruct a posterior draw, and keep the posterior near N(0, I).

    loss = rec(x, decode(z)) + kl_weight * KL(q(z|x) || N(0, I)) / pixels,  z ~ q(z|x)

`rec` is the per-pixel mean of |x - x̂| ('l1') or (x - x̂)^2 ('l2'). The KL is summed over the
latent's elements and divided by the image's element count, so that `kl_weight` means what it
means in the latent-diffusion code (both terms summed over an image there): 1e-6 keeps the
latents nearly deterministic and lets the scale factor of the exported VAE normalise them.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from diffdis_jax.nn.vae import gaussian_sample

RECONSTRUCTIONS = ('l1', 'l2')


def uses_teacher(config) -> bool:
  del config
  return False


def init_aux(params, model, config) -> dict[str, Any]:
  del params, model, config
  return {}


def update_aux(aux, params, outputs, step, *, model, config):
  del params, outputs, step, model, config
  return aux


def kl_to_standard_normal(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) summed over each example's elements: (batch,)."""
  per_element = 0.5 * (mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
  return per_element.reshape(per_element.shape[0], -1).sum(-1)


def psnr(x, y, data_range: float = 2.0):
  """Peak signal-to-noise ratio of each example, in dB, for images in [-1, 1]: (batch,)."""
  mse = jnp.mean((x - y).reshape(x.shape[0], -1) ** 2, axis=-1)
  return 10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse, 1e-12))


def loss_fn(params, batch, rng, aux, step, *, model, config):
  """Returns (loss, (metrics, outputs)), as every objective does."""
  del aux, step
  a = config.autoencoder
  x = batch['image'].astype(jnp.float32)
  mean, logvar = model.apply({'params': params}, x, method='encode')
  z = gaussian_sample(rng, mean, logvar)
  recon = model.apply({'params': params}, z, method='decode').astype(jnp.float32)
  error = jnp.abs(recon - x) if a.reconstruction == 'l1' else (recon - x) ** 2
  rec_loss = error.mean()
  kl = kl_to_standard_normal(mean, logvar).mean() / (x.size // x.shape[0])
  loss = rec_loss + a.kl_weight * kl
  metrics = {'loss': loss, 'rec_loss': rec_loss, 'kl_per_pixel': kl,
             'psnr': jax.lax.stop_gradient(psnr(x, recon)).mean(),
             'latent_std': jax.lax.stop_gradient(mean).std()}
  return loss, (metrics, {})
