"""DiffDis's frozen text encoders: `encode(texts) -> (c, e)`, the token-wise condition and the
unit text query, as numpy.

  CLIPTextEncoder    a converted transformers CLIP text tower (SD's, or init.text_encoder's)
                     with SD's tokenizer
  CaptionTextEncoder the CPU demos': a tiny CLIP trained from scratch on a captioned class
                     set (the digits, data/digits_captions.py; Fashion-MNIST,
                     data/fashion_mnist_captions.py)

DiffDis keeps its text encoder frozen (paper §3; docs/paper_notes.md), so a demo trains one
first, in a short seeded pre-stage: `CLIPTextModel` (nn/clip_text.py) over the captions'
word-level tokenizer plus a small MLP image tower on the raw pixels, contrastively (symmetric
InfoNCE, objectives/diffdis.info_nce) on the training images and their training captions.
`text_encoder.positives` says which pairs are positives:
  'caption'  a caption is a positive only for the images it was drawn for, and for images
             drawn with the same caption text: another phrasing of the class is a negative,
             as another caption of the same content is in CLIP's web pairs.
  'class'    every caption of an image's class is a positive: phrasings are interchangeable.
Either way an image cannot tell which of its class's captions it was drawn with, so the
image-text loss alone maps every phrasing of a class to one point (measured on Fashion-MNIST:
two captions of one class at cosine 0.997 on average with caption positives, 0.999 with class
positives; docs/paper_notes.md). `text_encoder.caption_weight` adds
a second term that keeps phrasings apart: each of the training captions has a learned point,
and a symmetric InfoNCE between the batch's text embeddings and its captions' points (the
same caption positive) makes every caption's embedding nearest its own point: distinct
captions are distinct points, as they are for a CLIP trained on unique captions.
The text tower's parameters are cached under
<cache_dir>/text_encoder_v{VERSION}_<fingerprint>.npz; afterwards only the text tower is used:

    enc = CaptionTextEncoder.create(config.text_encoder, cache_dir, digits_captions,
                                    load_images, data_key='digits8', seed=0)
    c, e = enc.encode(['a handwritten digit seven', ''])   # (n, L, d_c) and unit (n, d_y)

`captions` is a caption module: NAME, MAX_LENGTH, caption_table() (classes, k),
vocabulary() and build_tokenizer(); `load_images()` gives the pre-stage's (images, labels).

c is the last hidden state (DiffDis's token-wise condition), e the L2-normalised projected
end-of-text embedding (the text query, objectives/diffdis.text_query 'projected_eot').
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffdis_jax.core import files
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.data import captions as caption_files
from diffdis_jax.nn import layers
from diffdis_jax.nn.clip_text import CLIPTextModel
from diffdis_jax.objectives.diffdis import info_nce, positive_mask, text_query

VERSION = 2   # 2: the caption set and its images are part of the fingerprint
PRETRAIN_POSITIVES = ('caption', 'class')


class ImageTower(nn.Module):
  """Flattened pixels -> MLP -> the shared embedding space (used only by the pre-stage)."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, images):
    x = images.reshape(images.shape[0], -1)
    return layers.Mlp(self.hidden, self.out, activation='gelu', name='mlp')(x)


class TinyCLIP(nn.Module):
  text: CLIPTextModel
  image: ImageTower

  def __call__(self, images, input_ids):
    return self.image(images), self.text(input_ids)['text_embeds']

  def encode_text(self, input_ids):
    return self.text(input_ids)


def text_model(t, vocab_size: int, max_length: int) -> CLIPTextModel:
  """The text tower of `config.text_encoder` (`t`); eos id 1 matches the word tokenizer."""
  return CLIPTextModel(
      vocab_size=vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
      num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
      max_position_embeddings=max_length, hidden_act='quick_gelu', eos_token_id=1,
      projection_dim=t.projection_dim)


def _fingerprint(t, seed: int, captions, data_key: str) -> str:
  fields = json.dumps({'t': t.to_dict() if hasattr(t, 'to_dict') else dict(t), 'seed': seed,
                       'captions': captions.NAME, 'data': data_key,
                       'table': captions.caption_table().tolist(),
                       'vocab': captions.vocabulary()}, sort_keys=True)
  return hashlib.sha256(fields.encode()).hexdigest()[:12]


def cache_name(t, seed: int, captions, data_key: str) -> str:
  """The file a text encoder of `config.text_encoder` (`t`) is cached under."""
  return f'text_encoder_v{VERSION}_{_fingerprint(t, seed, captions, data_key)}.npz'


def positive_labels(kind: str, labels: np.ndarray, caption_index: np.ndarray,
                    per_class: int) -> np.ndarray:
  """Ids under which two pre-stage pairs are positives (equal ids): the caption drawn
  ('caption') or the class ('class'); see the module doc."""
  if kind == 'caption':
    return labels * per_class + caption_index
  if kind == 'class':
    return labels
  raise ValueError(f'text_encoder.positives must be one of {PRETRAIN_POSITIVES}, got {kind!r}')


def pretrain(t, seed: int, tokenizer, captions, images: np.ndarray,
             labels: np.ndarray) -> dict:
  """Contrastive pre-stage on (images, labels) with the captions' training table; returns
  the text tower's parameters (host numpy)."""
  table = captions.caption_table()
  ids_table, _ = caption_files.tokenize(tokenizer, table.ravel(), captions.MAX_LENGTH)
  ids_table = ids_table.reshape(table.shape + (-1,))          # (classes, captions, L)
  model = TinyCLIP(text_model(t, len(tokenizer), captions.MAX_LENGTH),
                   ImageTower(t.image_hidden, t.projection_dim))
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), images[:2],
                               ids_table[0, :2])['params'])
  params['logit_scale'] = jnp.log(jnp.float32(10.0))
  if t.caption_weight > 0:  # one learned point per training caption (see the module doc)
    params['caption_points'] = jax.random.normal(jax.random.PRNGKey(seed + 1),
                                                 (table.size, t.projection_dim))
  tx = optax.adamw(t.pretrain_lr, weight_decay=1e-4)
  opt_state = tx.init(params)
  towers = lambda p: {k: v for k, v in p.items() if k in ('text', 'image')}

  @jax.jit
  def step(params, opt_state, images, ids, positive_ids, caption_ids):
    def loss_fn(p):
      img, txt = model.apply({'params': towers(p)}, images, ids)
      scale = jnp.minimum(jnp.exp(p['logit_scale']), 100.0)
      loss, acc = info_nce(img, txt, scale, positive_mask('same_label', labels=positive_ids))
      if t.caption_weight > 0:
        same_caption = positive_mask('same_label', labels=caption_ids)
        loss += t.caption_weight * info_nce(txt, p['caption_points'][caption_ids], scale,
                                            same_caption)[0]
      return loss, acc
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  rng = np.random.default_rng(seed)
  n = len(labels)
  for i in range(t.pretrain_steps):
    idx = rng.integers(0, n, t.pretrain_batch)
    batch_labels = labels[idx]
    drawn = rng.integers(0, table.shape[1], len(idx))
    positive_ids = positive_labels(t.positives, batch_labels, drawn, table.shape[1])
    caption_ids = positive_labels('caption', batch_labels, drawn, table.shape[1])
    params, opt_state, loss, acc = step(params, opt_state, images[idx],
                                        ids_table[batch_labels, drawn], positive_ids,
                                        caption_ids)
    if (i + 1) % 100 == 0:
      logging.info('text encoder pre-stage step %d: loss %.3f, i2t acc %.3f', i + 1,
                   float(loss), float(acc))
  return jax.device_get(params['text'])


class CLIPTextEncoder:
  """encode(texts) -> (c, e) of a converted transformers CLIP text encoder, with SD's
  tokenizer; e is the text query `query` names (objectives/diffdis.text_query)."""

  def __init__(self, tokenizer, clip, clip_params, *, context_length: int, query: str):
    self.tokenizer, self.clip, self.clip_params = tokenizer, clip, clip_params
    self.context_length, self.query = context_length, query

  def encode(self, texts):
    ids, mask = caption_files.tokenize(self.tokenizer, texts, self.context_length)
    out = self.clip.apply({'params': self.clip_params}, ids)
    e = text_query(out, self.query, mask)
    return np.asarray(out['last_hidden_state'], np.float32), np.asarray(e, np.float32)


@dataclasses.dataclass
class CaptionTextEncoder:
  """A demo's frozen text encoder: tokenizer, CLIPTextModel and its trained parameters."""
  tokenizer: object
  model: CLIPTextModel
  params: dict
  max_length: int

  @classmethod
  def create(cls, t, cache_dir: Optional[str], captions,
             load_images: Callable[[], tuple[np.ndarray, np.ndarray]], *, data_key: str,
             seed: int = 0, read_only: bool = False):
    """Loads the text tower from `cache_dir` or runs the pre-stage on `load_images()` (and
    caches it there); `data_key` names those images in the cache's fingerprint. `read_only`
    (another run's cache, e.g. a pretrained generator's): load only, never train or write."""
    tokenizer = captions.build_tokenizer()
    model = text_model(t, len(tokenizer), captions.MAX_LENGTH)
    name = cache_name(t, seed, captions, data_key)
    path = os.path.join(cache_dir, name) if cache_dir else None
    if read_only and not (path and os.path.exists(path)):
      raise ConfigError(f'the text encoder in {cache_dir} does not fit this config (no {name})')
    if path and os.path.exists(path):
      with np.load(path) as npz:
        params = flax.traverse_util.unflatten_dict({k: npz[k] for k in npz.files}, sep='/')
    else:
      params = pretrain(t, seed, tokenizer, captions, *load_images())
      if path:
        os.makedirs(cache_dir, exist_ok=True)
        flat = flax.traverse_util.flatten_dict(params, sep='/')
        files.save_npz(path, **{k: np.asarray(v) for k, v in flat.items()})
    return cls(tokenizer, model, params, captions.MAX_LENGTH)

  def encode(self, texts: Sequence[str]):
    """(c, e): last hidden states (n, L, d_c) and unit text queries (n, d_y), numpy."""
    ids, _ = caption_files.tokenize(self.tokenizer, texts, self.max_length)
    out = _apply_text(self.model, self.params, jnp.asarray(ids))
    return np.asarray(out[0]), np.asarray(out[1])


@functools.partial(jax.jit, static_argnums=0)
def _apply_text(model, params, ids):
  out = model.apply({'params': params}, ids)
  return out['last_hidden_state'].astype(jnp.float32), text_query(out, 'projected_eot')
