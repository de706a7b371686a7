"""DiffDis: the SD UNet with a text stream, trained on image-text pairs (objectives/diffdis.py).

The text encoder is frozen (paper §3): the train step sees c ('context', the caption's last
hidden states) and e ('query', its unit text query) beside the image. Where they come from
depends on `data.name`:

  captioned_digits  the CPU demo: pixels are the UNet's input (no VAE); c and e come from a
                    tiny CLIP trained from scratch in a seeded pre-stage and cached under
                    <workdir>/text_encoder/ (data/digits_text_encoder.py), looked up per
                    caption on the host. A caption template is drawn per example and epoch.
  image_text_pairs  shards of (image, caption) in data.dir (data/captions.py), decoded and
                    tokenized on the host; SD's VAE and CLIP turn each sharded batch into
                    latents, c and e on the devices before the step (data/frozen_encoders.py).
                    The text encoder is the SD folder's, or init.text_encoder's when set
                    (SD 1.x's lacks the projection of the default text query).

With `init.sd_folder` set, the UNet's weights are those of a diffusers SD folder, unchanged
(nn/diffdis.with_unet_params), and the empty prompt's c comes from the same text encoder.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax import build
from diffdis_jax.data import captions
from diffdis_jax.data import captions_digits as cd
from diffdis_jax.data.frozen_encoders import PairEncoder
from diffdis_jax.data import pipeline
from diffdis_jax.eval import zeroshot
from diffdis_jax.eval.sample import to_grid
from diffdis_jax.eval.sample_diffdis import decode_latents, make_t2i_sampler
from diffdis_jax.eval.zeroshot_suite import ZeroShotFunctions
from diffdis_jax.nn.diffdis import init_inputs, with_unet_params
from diffdis_jax.objectives import diffdis as objective
from diffdis_jax.parallel import mesh as mesh_lib


class CLIPTextEncoder:
  """encode(texts) -> (c, e) of a converted transformers CLIP text encoder (SD's or
  init.text_encoder's), with SD's tokenizer."""

  def __init__(self, tokenizer, clip, clip_params, config):
    self.tokenizer, self.clip, self.clip_params, self.config = tokenizer, clip, clip_params, config

  def encode(self, texts):
    d = self.config.diffdis
    ids, mask = cd.tokenize(self.tokenizer, texts, d.context_length)
    out = self.clip.apply({'params': self.clip_params}, ids)
    e = objective.text_query(out, d.query, mask)
    return np.asarray(out['last_hidden_state'], np.float32), np.asarray(e, np.float32)


class DiffDisTask:

  def __init__(self, config, workdir: str | None = None):
    self.config, self.workdir = config, workdir
    self.model = None

  def build_model(self):
    self.model = build.build_diffdis(self.config)
    return self.model

  def init_params(self, model, rng):
    m, d = self.config.model, self.config.diffdis
    inputs = init_inputs(model, m.input_size, d.context_length, d.context_dim)
    return model.init(rng, *inputs, method='initialize')['params']

  # ------------------------------------------------------------------ the frozen text encoder

  @functools.cached_property
  def stable_diffusion(self):
    from diffdis_jax import weights  # pylint: disable=g-import-not-at-top
    return weights.load_stable_diffusion(self.config.init.sd_folder)

  @functools.cached_property
  def clip_text(self):
    """(CLIPTextModel, params): init.text_encoder's when set, else the SD folder's."""
    from diffdis_jax import weights  # pylint: disable=g-import-not-at-top
    if self.config.init.text_encoder:
      return weights.load_clip_text_encoder(self.config.init.text_encoder)
    return self.stable_diffusion.text_encoder, self.stable_diffusion.text_encoder_params

  @functools.cached_property
  def text(self):
    """encode(texts) -> (c (n, L, d_c), e (n, d_y) unit) as numpy."""
    c = self.config
    if c.init.sd_folder:
      return CLIPTextEncoder(self.stable_diffusion.tokenizer, *self.clip_text, c)
    from diffdis_jax.data.digits_text_encoder import DigitsTextEncoder  # pylint: disable=g-import-not-at-top
    cache = os.path.join(self.workdir, 'text_encoder') if self.workdir else None
    return DigitsTextEncoder.create(c.text_encoder, cache, seed=c.text_encoder.seed,
                                    size=c.data.image_size)

  @functools.cached_property
  def pair_encoder(self) -> PairEncoder:
    sd = self.stable_diffusion
    return PairEncoder(sd.vae, sd.vae_params, *self.clip_text, query=self.config.diffdis.query,
                       seed=self.config.seed)

  @property
  def pixel_size(self) -> int:
    """The side of the images the model sees: its input, or the VAE's input for latents."""
    m = self.config.model
    if self.config.data.name != 'image_text_pairs':
      return m.input_size
    return m.input_size * 2 ** (len(self.stable_diffusion.vae.block_out_channels) - 1)

  @functools.cached_property
  def caption_tables(self):
    """c and e of every caption, indexed [digit, template]."""
    table = cd.caption_table()
    c, e = self.text.encode(list(table.ravel()))
    return c.reshape(table.shape + c.shape[1:]), e.reshape(table.shape + e.shape[1:])

  # ------------------------------------------------------------------ state, batches

  def finish_init(self, state, shardings):
    """The empty prompt's c into aux; SD's UNet weights into the params when given."""
    null_context = self.text.encode([''])[0][0]
    aux = objective.set_null_context(state.aux, null_context)
    state = state.replace(aux=aux)
    if self.config.init.sd_folder:
      params = with_unet_params(jax.device_get(state.params),
                                self.stable_diffusion.unet_params)
      # host copies: params and EMA must not share device buffers (the step donates both)
      state = state.replace(params=params, ema_params=jax.tree.map(np.array, params))
      logging.info('UNet initialised from %s', self.config.init.sd_folder)
    return jax.device_put(state, shardings)

  def abstract_batch(self, batch_sharding):
    m, d, b = self.config.model, self.config.diffdis, self.config.batch_size
    spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype,
                                                                 sharding=batch_sharding)
    batch = {'image': spec((b, m.input_size, m.input_size, m.in_channels)),
             'context': spec((b, d.context_length, d.context_dim)),
             'query': spec((b, d.text_dim))}
    if self.config.data.name == 'captioned_digits':
      batch['label'] = spec((b,), jnp.int32)
    return batch

  def train_iterator(self, process_index: int, process_count: int):
    c = self.config
    if c.data.name == 'image_text_pairs':
      records = captions.CaptionRecords(
          captions.find_shards(c.data.dir), image_size=self.pixel_size,
          tokenizer=self.stable_diffusion.tokenizer, max_length=c.diffdis.context_length,
          seed=c.seed, process_index=process_index, process_count=process_count)
      return captions.CaptionBatches(records, c.batch_size // process_count,
                                     keys=('image', 'input_ids', 'attention_mask'))
    from diffdis_jax.data.digits import load_digits  # pylint: disable=g-import-not-at-top
    contexts, queries = self.caption_tables
    templates = contexts.shape[1]

    def add_caption(example, rng):
      t = int(rng.integers(templates))
      label = int(example['label'])
      return dict(example, context=contexts[label, t], query=queries[label, t])

    source = pipeline.ArraySource(load_digits('train', c.data.image_size))
    return iter(pipeline.host_dataset(source, global_batch=c.batch_size, seed=c.seed,
                                      process_index=process_index,
                                      process_count=process_count, transform=add_caption))

  def prepare_batch(self, batch, step: int):
    """Pairs: latents, c and e from the frozen encoders; the digits carry them already."""
    if self.config.data.name == 'image_text_pairs':
      return self.pair_encoder(batch, step)
    return batch

  def input_metrics(self, data_iterator) -> dict:
    """Pairs skipped so far on this host (undecodable image, empty caption, ...)."""
    if self.config.data.name == 'image_text_pairs':
      return {'skipped_records': data_iterator.records.skipped_records}
    return {}

  # ------------------------------------------------------------------ previews and evaluation

  def make_preview_fn(self, model):
    """(params, noise, c, null_c) -> images in [-1, 1]: DDIM with guidance on c, then, for
    latent models, SD's VAE decoder (its weights are an argument, not baked into the jit)."""
    sampler = make_t2i_sampler(model, self.config)
    if self.config.model.in_channels in (1, 3):
      return jax.jit(sampler)
    vae, vae_params = self.stable_diffusion.vae, self.stable_diffusion.vae_params
    decoded = jax.jit(lambda params, vae_params, *args: decode_latents(
        vae, vae_params, sampler(params, *args)))
    return lambda params, *args: decoded(params, vae_params, *args)

  def preview_prompts(self) -> list[str]:
    """One grid row per prompt: the digit prompts, or diffdis.sample.prompts for pairs."""
    if self.config.data.name == 'captioned_digits':
      return [cd.CLASS_TEMPLATES[0].format(name) for name in cd.CLASS_NAMES]
    return list(self.config.diffdis.sample.prompts)

  def preview(self, sample_fn, params):
    """Text-to-image grid: `diffdis.sample.per_prompt` samples per prompt, a row each."""
    m, d = self.config.model, self.config.diffdis
    prompts = self.preview_prompts()
    if not prompts:
      return None
    per_row = d.sample.per_prompt
    context = np.repeat(self.text.encode(prompts)[0], per_row, axis=0)
    null_context = self.text.encode([''])[0][0]
    noise = jax.random.normal(jax.random.PRNGKey(self.config.seed + 1),  # the same every time
                              (len(context), m.input_size, m.input_size, m.in_channels))
    images = sample_fn(params, noise, jnp.asarray(context), jnp.asarray(null_context))
    return to_grid(jax.device_get(images), per_row)

  def final_eval(self, sample_fn, params) -> dict:
    """Zero-shot top-1/top-5 on the held-out digits (class prompts as candidates) and
    image<->caption retrieval recalls over their captions."""
    del sample_fn
    c, d = self.config, self.config.diffdis
    if c.data.name != 'captioned_digits' or d.align_mode == 'none':
      return {}
    test = cd.load_captioned_digits('test', c.data.image_size, seed=c.seed)
    predict = jax.jit(zeroshot.make_query_predictor(self.model, c))
    null_context = jnp.asarray(self.text.encode([''])[0][0])
    rng = jax.random.PRNGKey(c.seed + 3)
    preds = []
    for i, start in enumerate(range(0, len(test['label']), d.zeroshot.batch)):
      chunk = jnp.asarray(test['image'][start:start + d.zeroshot.batch])
      preds.append(np.asarray(predict(params, chunk, null_context, jax.random.fold_in(rng, i))))
    preds = np.concatenate(preds)
    queries = zeroshot.class_queries(lambda texts: self.text.encode(texts)[1], cd.CLASS_NAMES,
                                     d.zeroshot.templates)
    scores = zeroshot.topk_accuracy(zeroshot.similarity(preds, queries), test['label'])
    captions = self.text.encode(list(test['caption']))[1]
    scores.update(zeroshot.retrieval_recalls(zeroshot.similarity(preds, captions),
                                             np.arange(len(captions))))
    logging.info('zero-shot on %d held-out digits: %s', len(preds), scores)
    return scores

  def eval_hooks(self, trainer) -> list:
    """None during training: zero-shot accuracy is measured at the end (final_eval) and by
    --mode=eval; text-to-image FID during training is not implemented."""
    del trainer
    return []

  # ------------------------------------------------------------------ --mode=eval

  def zeroshot_functions(self, mesh=None) -> ZeroShotFunctions:
    """predict(params, images) and encode(texts) for eval/zeroshot_suite.py.

    images: (n, s, s, 3) float in [-1, 1]. Pixel models take them at their own side (one
    channel: ITU-R 601 luma, PIL's 'L', which leaves the demo's grey digits unchanged); latent
    models take s = their side times the VAE's downsampling (8 for SD), through the SD VAE's
    encoder (posterior mean times its scaling factor: the latents the UNet learned from).
    Batches of `diffdis.zeroshot.batch`, the last one padded: one compile, and a row's noise
    does not depend on how full its batch is. Every batch uses the same key (the one
    final_eval starts from), so a dataset's scores do not depend on which datasets ran before
    it. With `mesh`, outputs come back replicated (readable on every process).
    """
    c, m, d = self.config, self.config.model, self.config.diffdis
    model = self.model or self.build_model()
    query_fn = zeroshot.make_query_predictor(model, c)
    vae, vae_params = None, None
    if m.in_channels not in (1, 3):
      vae, vae_params = self.stable_diffusion.vae, self.stable_diffusion.vae_params
    image_size = self.pixel_size

    def batch_fn(params, vae_params, images, null_context, rng):
      if vae is not None:
        z = vae.apply({'params': vae_params}, images, method='encode_latents')
      elif m.in_channels == 1:
        z = (images @ jnp.array([0.299, 0.587, 0.114], images.dtype))[..., None]
      else:
        z = images
      return query_fn(params, z, null_context, rng)

    jitted = (jax.jit(batch_fn) if mesh is None
              else jax.jit(batch_fn, out_shardings=mesh_lib.replicated(mesh)))
    null_context = jnp.asarray(self.text.encode([''])[0][0])
    rng = jax.random.PRNGKey(c.seed + 3)
    batch = d.zeroshot.batch

    def predict(params, images):
      images = np.asarray(images, np.float32)
      out = []
      for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        out.append(np.asarray(jitted(params, vae_params, padded, null_context, rng))[:len(chunk)])
      return np.concatenate(out)

    def encode(texts):
      out = []
      for start in range(0, len(texts), 256):  # bounded memory for 25k COCO captions
        out.append(self.text.encode(list(texts[start:start + 256]))[1])
      return np.concatenate(out)

    settings = {'align_mode': d.align_mode, 'steps': d.zeroshot.steps,
                'guidance': d.zeroshot.guidance, 'spacing': d.zeroshot.spacing,
                'seeds': d.zeroshot.seeds, 'batch': batch, 'rng_seed': c.seed + 3,
                'image_size': image_size, 'input': 'vae_latent_mean' if vae else 'pixels'}
    return ZeroShotFunctions(predict, encode, image_size, settings)
