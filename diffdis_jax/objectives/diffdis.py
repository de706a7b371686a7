"""DiffDis objective: SD's image denoising loss plus image-text alignment by text diffusion.

One step (paper Algorithm 1) runs two passes of the shared network (nn/diffdis.py):

  generation  text stream masked: eps-loss of the UNet on z_t = q(z_0, t_z) with the token-wise
              condition c (dropped to the empty prompt with probability `context_dropout`);
  alignment   c masked (always the empty prompt), the clean latent at UNet time index
              `align_image_timestep` as the image condition (dropped to the model's null with
              probability `image_dropout`), the noisy text query
              e_t = gamma sqrt(abar_te) e_0 + sqrt(1 - abar_te) eps_e at an independent t_e;
              the head predicts e_0 (or eps_e) and a symmetric InfoNCE compares the prediction
              with the true queries of the batch.

  loss = gen_weight * L_gen + align_weight * L_align (+ regression_weight * MSE, default 0)

Batch keys (the text encoder and the VAE are frozen, so their outputs are precomputed):
  'image'    (B, h, w, C) float  the UNet input: SD-VAE latents already multiplied by the
                                 scaling factor, or pixels in [-1, 1] for a pixel-space model
  'context'  (B, L, d_c) float   c: the text encoder's last hidden states for the caption
  'query'    (B, d_y) float      e: the text query (`text_query`), L2-normalised
  'label'    (B,) int            optional; only read with positives='same_label'
`aux` holds {'null_context': (L, d_c)}, the empty prompt's c; `init_aux` takes it (or fills
zeros, which the trainer must replace through `set_null_context` before training).

Interface as objectives/sddit.py: init_aux, loss_fn, update_aux, uses_teacher.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from diffdis_jax.diffusion import ddpm

QUERY_KINDS = ('projected_eot', 'eot', 'mean')
POSITIVES = ('diagonal', 'same_query', 'same_label')
IMAGE_PREDICTIONS = ('epsilon', 'v_prediction')   # what the UNet predicts of the image
TEXT_PREDICTIONS = ('x0', 'epsilon')              # what the head predicts of the text query


def uses_teacher(config) -> bool:
  del config
  return False


def init_aux(params, model, config, null_context: Optional[jax.Array] = None) -> dict[str, Any]:
  del params, model
  d = config.diffdis
  if null_context is None:
    null_context = jnp.zeros((d.context_length, d.context_dim), jnp.float32)
  return {'null_context': jnp.asarray(null_context, jnp.float32)}


def set_null_context(aux, null_context):
  """aux with the empty prompt's text condition (L, d_c) (or (1, L, d_c))."""
  null_context = jnp.asarray(null_context, jnp.float32)
  return dict(aux, null_context=null_context.reshape(null_context.shape[-2:]))


def update_aux(aux, params, outputs, step, *, model, config):
  del params, outputs, step, model, config
  return aux


# ----------------------------------------------------------------------------- pieces


def text_query(outputs: dict, kind: str = 'projected_eot', attention_mask=None):
  """The text query e from CLIPTextModel outputs (nn/clip_text.py), L2-normalised, float32.

  'projected_eot': text_projection of the final-normed end-of-text state (CLIP's text
  embedding; needs projection_dim); 'eot': the same state without the projection; 'mean':
  the mean of the last hidden states over `attention_mask` (all tokens if None).
  """
  if kind == 'projected_eot':
    if 'text_embeds' not in outputs:
      raise ValueError("query 'projected_eot' needs a text encoder with projection_dim set")
    e = outputs['text_embeds']
  elif kind == 'eot':
    e = outputs['pooler_output']
  elif kind == 'mean':
    h = outputs['last_hidden_state'].astype(jnp.float32)
    w = (jnp.ones(h.shape[:2]) if attention_mask is None
         else jnp.asarray(attention_mask, jnp.float32))
    e = jnp.sum(h * w[..., None], 1) / jnp.maximum(jnp.sum(w, 1, keepdims=True), 1.0)
  else:
    raise ValueError(f'query must be one of {QUERY_KINDS}, got {kind!r}')
  return l2_normalize(e)


def l2_normalize(x, eps: float = 1e-6):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def schedule(config):
  """abar_t of the config's SD schedule, (T,) float32."""
  d = config.diffdis
  return ddpm.alphas_cumprod(d.num_train_timesteps, d.beta_start, d.beta_end, d.beta_schedule)


def drop_mask(rng, batch: int, rate: float):
  """(batch,) bool, True where the condition is dropped (each with probability `rate`)."""
  return jax.random.uniform(rng, (batch,)) < rate


def drop_context(context, null_context, dropped):
  """c with the rows where `dropped` replaced by the empty-prompt condition."""
  null = jnp.broadcast_to(null_context.astype(context.dtype)[None], context.shape)
  return jnp.where(dropped[:, None, None], null, context)


def positive_mask(kind: str, query=None, labels=None):
  """(B, B) float32: 1 where caption j is a positive for image i."""
  if kind == 'diagonal':
    return jnp.eye(query.shape[0], dtype=jnp.float32)
  if kind == 'same_query':
    return (query @ query.T > 1.0 - 1e-5).astype(jnp.float32)
  if kind == 'same_label':
    if labels is None:
      raise ValueError("positives='same_label' needs batch['label']")
    return (labels[:, None] == labels[None, :]).astype(jnp.float32)
  raise ValueError(f'positives must be one of {POSITIVES}, got {kind!r}')


def info_nce(pred, target, logit_scale, positives=None):
  """Symmetric InfoNCE between predicted and true text queries. Returns (loss, i2t accuracy).

  logits[i, j] = logit_scale * cos(pred_i, target_j): row i is image i's prediction against
  every caption (image -> text), column j caption j against every image (text -> image).
  loss = (CE over rows + CE over columns) / 2, the targets being the rows / columns of
  `positives` normalised to sum to one (the identity: the paper's Eq. 8).

  Negatives are the whole *global* batch: under jit the batch arrays are global arrays (sharded
  over the data axes), so `pred @ target.T` is the full (B, B) matrix and XLA inserts the
  all-gather of `target` across devices itself; no explicit collective is needed.
  """
  logits = logit_scale * (l2_normalize(pred) @ l2_normalize(target).T)
  if positives is None:
    positives = jnp.eye(logits.shape[0], dtype=jnp.float32)
  rows = positives / jnp.sum(positives, axis=1, keepdims=True)
  cols = positives / jnp.sum(positives, axis=0, keepdims=True)
  i2t = -jnp.sum(rows * jax.nn.log_softmax(logits, axis=1), axis=1).mean()
  t2i = -jnp.sum(cols * jax.nn.log_softmax(logits, axis=0), axis=0).mean()
  hits = jnp.take_along_axis(positives, jnp.argmax(logits, axis=1)[:, None], axis=1)
  return (i2t + t2i) / 2, hits.mean()


# ----------------------------------------------------------------------------- loss


def loss_fn(params, batch, rng, aux, step, *, model, config):
  """Returns (loss, (metrics, outputs)); `outputs` is empty (no state besides params)."""
  del step
  d = config.diffdis
  if getattr(model, 'align', d.align_mode) != d.align_mode:
    raise ValueError(f'model.align={model.align!r} but config.diffdis.align_mode='
                     f'{d.align_mode!r}')
  abar = schedule(config)
  z0 = batch['image'].astype(jnp.float32)
  b = z0.shape[0]
  r_gen, r_align = jax.random.split(rng)
  loss = jnp.float32(0.0)
  metrics = {}

  if d.gen_weight > 0:
    gen_loss, gen_metrics = generation_loss(params, z0, batch['context'], aux['null_context'],
                                            abar, r_gen, model=model, config=config)
    loss = loss + d.gen_weight * gen_loss
    metrics.update(gen_loss=gen_loss, **gen_metrics)

  if d.align_mode != 'none' and (d.align_weight > 0 or d.regression_weight > 0):
    null_c = jnp.broadcast_to(aux['null_context'][None], (b,) + aux['null_context'].shape)
    align_loss, reg_loss, align_metrics = alignment_loss(
        params, z0, batch['query'], null_c, abar, r_align, batch.get('label'),
        model=model, config=config)
    loss = loss + d.align_weight * align_loss + d.regression_weight * reg_loss
    metrics.update(align_loss=align_loss, **align_metrics)
    if d.regression_weight > 0:
      metrics['regression_loss'] = reg_loss
  metrics['loss'] = loss
  return loss, (metrics, {})


def generation_loss(params, z0, context, null_context, abar, rng, *, model, config):
  """SD's denoising loss of the plain UNet (text stream masked); c dropped for guidance."""
  d = config.diffdis
  r_t, r_noise, r_drop = jax.random.split(rng, 3)
  t = ddpm.sample_timesteps(r_t, z0.shape[0], d.num_train_timesteps)
  noise = jax.random.normal(r_noise, z0.shape, jnp.float32)
  z_t = ddpm.q_sample(z0, t, noise, abar)
  dropped = drop_mask(r_drop, z0.shape[0], d.context_dropout)
  c = drop_context(context, null_context, dropped)
  pred = model.apply({'params': params}, z_t, t.astype(jnp.float32), c).astype(jnp.float32)
  if d.image_prediction == 'epsilon':
    target = noise
  elif d.image_prediction == 'v_prediction':
    target = ddpm.v_target(z0, t, noise, abar)
  else:
    raise ValueError(f'image_prediction must be one of {IMAGE_PREDICTIONS}, got '
                     f'{d.image_prediction!r}')
  return jnp.mean((pred - target) ** 2), {'context_dropped': dropped.mean()}


def alignment_loss(params, z0, query, null_context, abar, rng, labels=None, *, model, config):
  """InfoNCE of the head's text-query estimate against the batch's queries.

  Returns (InfoNCE, regression MSE, metrics). The image condition is the clean latent at UNet
  time index `align_image_timestep`; c is the empty prompt for every sample (masked).
  """
  d = config.diffdis
  b = z0.shape[0]
  r_t, r_noise, r_drop = jax.random.split(rng, 3)
  e0 = l2_normalize(query) if d.normalize_query else query.astype(jnp.float32)
  keep = ~drop_mask(r_drop, b, d.image_dropout)
  t_img = jnp.full((b,), d.align_image_timestep, jnp.float32)
  apply = lambda *a: model.apply({'params': params}, *a, image_keep=keep,
                                 method='predict_text')
  metrics = {'image_dropped': 1.0 - keep.mean()}
  if d.align_mode == 'contrastive':
    e_hat = apply(z0, t_img, null_context)
    reg = jnp.mean((e_hat - e0) ** 2)
  else:
    t_e = ddpm.sample_timesteps(r_t, b, d.num_train_timesteps)
    eps = jax.random.normal(r_noise, e0.shape, jnp.float32)
    e_t = ddpm.q_sample(e0, t_e, eps, abar, scale=d.gamma)
    out = apply(z0, t_img, null_context, e_t, t_e.astype(jnp.float32))
    if d.text_prediction == 'x0':
      e_hat, reg = out, jnp.mean((out - e0) ** 2)
    elif d.text_prediction == 'epsilon':
      x0_state, _ = ddpm.x0_and_eps(out, e_t, abar[t_e][:, None], 'epsilon')
      e_hat, reg = x0_state / d.gamma, jnp.mean((out - eps) ** 2)
    else:
      raise ValueError(f'text_prediction must be one of {TEXT_PREDICTIONS}, got '
                       f'{d.text_prediction!r}')
  positives = positive_mask(d.positives, e0, labels)
  logit_scale = jnp.minimum(jnp.exp(params['logit_scale']), d.logit_scale_max)
  nce, acc = info_nce(e_hat, e0, logit_scale, positives)
  metrics.update(logit_scale=logit_scale, align_acc=acc)
  return nce, reg, metrics
