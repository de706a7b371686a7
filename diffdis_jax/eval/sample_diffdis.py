"""DiffDis text-to-image sampling (paper Algorithm 2): DDIM with guidance on c, then the VAE.

The generation pass of DiffDis is the plain SD UNet (text stream masked), so this is SD's
sampler: eps_hat = eps_u + scale * (eps_c - eps_u), conditional and empty-prompt halves in one
batch, on the config's SD schedule and DDIM spacing.

    sample = jax.jit(make_t2i_sampler(model, config))   # (params, noise, c, null_c) -> latents
    images = decode_latents(vae, vae_params, sample(params, noise, context, null_context))

Pixel-space models (the CPU demo) skip the VAE: the sampler's output is the image.
"""
from __future__ import annotations

import jax.numpy as jnp

from diffdis_jax.diffusion import ddpm
from diffdis_jax.objectives.diffdis import schedule


def make_t2i_sampler(model, config, *, steps=None, guidance=None):
  """sample(params, noise, context, null_context) -> clean latents, NHWC like `noise`.

  noise: (batch, h, w, C) standard normal (x_T); context: (batch, L, d_c) captions' c;
  null_context: (L, d_c), the empty prompt's c. `steps` / `guidance` override the config's
  `diffdis.sample` values.
  """
  d = config.diffdis
  steps = d.sample.steps if steps is None else steps
  scale = d.sample.guidance if guidance is None else guidance
  abar = schedule(config)
  timesteps = ddpm.ddim_timesteps(d.num_train_timesteps, steps, d.sample.spacing)

  def sample(params, noise, context, null_context):
    b = noise.shape[0]
    null_c = jnp.broadcast_to(null_context.astype(context.dtype)[None], context.shape)
    unet = lambda x, t, c: model.apply({'params': params}, x, t, c).astype(jnp.float32)

    def x0_eps(x, t):
      t = t.astype(jnp.float32)
      if scale == 1.0:
        out = unet(x, t, context)
      else:
        both = unet(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([context, null_c]))
        cond, uncond = jnp.split(both, 2)
        out = ddpm.guided(cond, uncond, scale)
      abar_t = abar[t.astype(jnp.int32)].reshape(b, 1, 1, 1)
      return ddpm.x0_and_eps(out, x, abar_t, d.image_prediction)
    return ddpm.ddim_sample(x0_eps, noise, abar, timesteps)
  return sample


def decode_latents(vae, vae_params, latents):
  """Images in [-1, 1] (clipped) from scaled SD latents through the VAE decoder."""
  images = vae.apply({'params': vae_params}, latents, method='decode_latents')
  return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
