"""DiffDis's two samplers (paper Algorithms 2 and 3), both DDIM on SD's schedule.

Text to image: the generation pass of DiffDis is the plain SD UNet (text stream masked), so
this is SD's sampler, eps_hat = eps_u + scale * (eps_c - eps_u), conditional and empty-prompt
halves in one batch, on the config's DDIM spacing:

    sample = jax.jit(make_t2i_sampler(model, config))   # (params, noise, c, null_c) -> latents
    images = sample_lib.decode_latents(vae, vae_params, sample(params, noise, c, null_c))

Pixel-space models (the CPU demo) skip the VAE: the sampler's output is the image.

Image to text query: for each image, DDIM runs over the text query e from e_T ~ N(0, I), with
the image latent as condition and classifier-free guidance on the image condition
(conditional and null-image predictions in one batch). The estimate is L2-normalised and
compared by cosine similarity with the queries of class prompts or captions (eval/zeroshot.py):

    predict = jax.jit(make_query_predictor(model, config))     # (params, z, null_c, rng) -> e

With align_mode 'contrastive' (the CLIP-style baseline) the prediction is one head pass.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffdis_jax.diffusion import ddpm
from diffdis_jax.objectives.diffdis import l2_normalize, schedule

# denoise(e_t, t) -> the head's raw output (x0 or eps of the query), (batch, d_y)
TextDenoiser = Callable[[jax.Array, jax.Array], jax.Array]


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


def sample_text_query(denoise: TextDenoiser, noise, abar, timesteps, *, gamma: float = 1.0,
                      prediction: str = 'x0'):
  """DDIM over the text query from `noise` (e_T); returns the estimate of e_0 (unnormalised).

  The forward process is e_t = gamma sqrt(abar) e_0 + sqrt(1 - abar) eps, so the sampler's
  state has clean end gamma e_0: an 'x0' output is scaled by gamma before the DDIM update,
  and the result is divided by gamma at the end (paper notes §6.7: keep them consistent).
  """
  def x0_eps(e_t, t):
    return ddpm.x0_and_eps(denoise(e_t, t), e_t, abar[t][:, None], prediction, scale=gamma)
  return ddpm.ddim_sample(x0_eps, noise, abar, timesteps) / gamma


def make_query_predictor(model, config):
  """predict(params, z, null_context, rng) -> (batch, d_y) unit text-query estimates.

  z: (batch, h, w, C) image latents (the UNet's input space); null_context: (L, d_c), the
  empty prompt's c, which masks the text condition as in training. `zeroshot.seeds` noise
  draws per image are averaged as unit vectors.
  """
  d = config.diffdis
  zs = d.zeroshot
  abar = schedule(config)
  timesteps = ddpm.ddim_timesteps(d.num_train_timesteps, zs.steps, zs.spacing)

  def predict(params, z, null_context, rng):
    b = z.shape[0]
    null_c = jnp.broadcast_to(null_context[None], (b,) + null_context.shape)
    t_img = jnp.float32(d.align_image_timestep)  # the model broadcasts it over the batch

    def head(z_, c_, keep, e_t=None, t_e=None):
      return model.apply({'params': params}, z_, t_img, c_, e_t, t_e, image_keep=keep,
                         method='predict_text')

    if d.align_mode == 'contrastive':
      return l2_normalize(head(z, null_c, jnp.ones((b,), bool)))
    if d.align_mode != 'diffusion':
      raise ValueError(f"zero-shot needs align_mode 'diffusion' or 'contrastive', got "
                       f'{d.align_mode!r}')
    seeds = zs.seeds
    z_rep = jnp.concatenate([z] * seeds)
    c_rep = jnp.concatenate([null_c] * seeds)
    n = z_rep.shape[0]

    def denoise(e_t, t):
      t = t.astype(jnp.float32)
      if zs.guidance == 1.0:
        return head(z_rep, c_rep, jnp.ones((n,), bool), e_t, t)
      # conditional and null-image halves as one batch
      keep = jnp.concatenate([jnp.ones((n,), bool), jnp.zeros((n,), bool)])
      out = head(jnp.concatenate([z_rep, z_rep]), jnp.concatenate([c_rep, c_rep]), keep,
                 jnp.concatenate([e_t, e_t]), jnp.concatenate([t, t]))
      cond, uncond = jnp.split(out, 2)
      return ddpm.guided(cond, uncond, zs.guidance)

    noise = jax.random.normal(rng, (n, model.text_dim), jnp.float32)
    e0 = sample_text_query(denoise, noise, abar, timesteps, gamma=d.gamma,
                           prediction=d.text_prediction)
    e0 = l2_normalize(e0).reshape(seeds, b, -1)
    return l2_normalize(e0.mean(0))
  return predict
