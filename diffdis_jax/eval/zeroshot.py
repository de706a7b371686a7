"""DiffDis zero-shot classification and image-text retrieval (paper Algorithm 3).

For each image, DDIM runs over the text query e, starting from e_T ~ N(0, I), with the image
latent as condition and classifier-free guidance on the image condition (conditional and
null-image predictions in one batch); the final estimate is L2-normalised and compared by
cosine similarity with the queries of class prompts (template-ensembled) or captions. The same
score matrix gives classification (argmax over classes) and retrieval R@K in both directions.

    predict = jax.jit(make_query_predictor(model, config))     # (params, z, null_c, rng) -> e
    queries = class_queries(encode, class_names, templates)    # encode: list[str] -> (n, d_y)
    scores  = similarity(predict(params, z, null_c, rng), queries)
    topk_accuracy(scores, labels); retrieval_recalls(scores, caption_image)

With align_mode 'contrastive' (the CLIP-style baseline) the prediction is one head pass.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.diffusion import ddpm
from diffdis_jax.objectives.diffdis import l2_normalize, schedule

# denoise(e_t, t) -> the head's raw output (x0 or eps of the query), (batch, d_y)
TextDenoiser = Callable[[jax.Array, jax.Array], jax.Array]


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


# ----------------------------------------------------------------------------- scoring


def class_queries(encode: Callable[[list[str]], np.ndarray], class_names: Sequence[str],
                  templates: Sequence[str]) -> np.ndarray:
  """(classes, d_y) unit vectors: per class, the mean of the unit queries of its prompts
  (one per template, `template.format(name)`), renormalised (CLIP's prompt ensembling)."""
  out = []
  for name in class_names:
    e = np.asarray(encode([t.format(name) for t in templates]), np.float64)
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    m = e.mean(0)
    out.append(m / np.linalg.norm(m))
  return np.stack(out).astype(np.float32)


def similarity(pred, queries) -> np.ndarray:
  """Cosine similarity (images, texts) on the host."""
  p = np.asarray(pred, np.float64)
  q = np.asarray(queries, np.float64)
  p = p / np.linalg.norm(p, axis=-1, keepdims=True)
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  return p @ q.T


def topk_accuracy(scores, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """{'zeroshot_top{k}': fraction of rows whose label is among the k highest scores}."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  # rank of the true class: how many classes score strictly higher
  true = scores[np.arange(len(labels)), labels]
  rank = (scores > true[:, None]).sum(1)
  return {f'zeroshot_top{k}': float((rank < k).mean()) for k in ks if k <= scores.shape[1]}


def retrieval_recalls(scores, caption_image, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Image->text and text->image recall@K from scores (images, captions).

  caption_image[j] is the index of the image caption j describes (several captions may share
  an image, as in COCO and Flickr30k). Image i counts as a hit at K when any of its captions
  ranks in the top K of row i; caption j when its image ranks in the top K of column j.
  Ties count against the hit (strictly-higher ranks).
  """
  scores = np.asarray(scores)
  caption_image = np.asarray(caption_image)
  n_img = scores.shape[0]
  txt = np.arange(len(caption_image))
  # i2t: rank of the image's best-scoring own caption within its row
  best = np.full((n_img,), -np.inf)
  np.maximum.at(best, caption_image, scores[caption_image, txt])
  i2t_rank = (scores > best[:, None]).sum(1)
  true = scores[caption_image, txt]
  t2i_rank = (scores > true[None, :]).sum(0)
  out = {}
  for k in ks:
    out[f'i2t_R@{k}'] = float((i2t_rank < k).mean())
    out[f't2i_R@{k}'] = float((t2i_rank < k).mean())
  return out


def evaluate_zeroshot(predict, params, latents, labels, queries, null_context, rng,
                      batch_size: int = 64) -> dict[str, float]:
  """Zero-shot top-1/top-5 of `predict` (from make_query_predictor, jitted) over latents."""
  preds = []
  for i, start in enumerate(range(0, len(latents), batch_size)):
    chunk = jnp.asarray(latents[start:start + batch_size])
    preds.append(np.asarray(predict(params, chunk, null_context, jax.random.fold_in(rng, i))))
  return topk_accuracy(similarity(np.concatenate(preds), queries), labels)
