"""DiffDis: the SD UNet with a text stream, trained on image-text pairs (objectives/diffdis.py).

The text encoder is frozen (paper §3): the train step sees the caption's context c (its last
hidden states) and its unit text query e beside the image. The data source (sources.py, by
`data.name`) says where pairs come from and how they become a step's batch; the text encoder
(text_encoders.py) is SD's CLIP when `init.sd_folder` is set (or `init.text_encoder`'s, since
SD 1.x's lacks the projection of the default text query), else the captioned class set's
(the CPU demos'), trained from scratch in a seeded pre-stage and cached under
<workdir>/text_encoder/. Latent models read and show images through `data.vae_path`'s VAE
when set (the Fashion-MNIST recipe's own), else the SD folder's.

With `init.sd_folder` set, the UNet's weights are those of a diffusers SD folder, unchanged
(nn/diffdis.with_unet_params), and the empty prompt's c comes from the same text encoder.
With `init.pretrained_generator` set, they are those of a generation-only run trained here
(pretrained.py), and a captioned set's frozen text encoder is that run's.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax import weights
from diffdis_jax.core.spaces import is_pixel_space
from diffdis_jax.eval import diffdis_sampler, zeroshot_suite
from diffdis_jax.eval.sample import decode_latents, to_grid
from diffdis_jax.nn.diffdis import init_inputs, with_unet_params
from diffdis_jax.objectives import diffdis as objective
from diffdis_jax.parallel import mesh as mesh_lib
from diffdis_jax.tasks import base
from diffdis_jax.tasks.diffdis import checks, pretrained
from diffdis_jax.tasks.diffdis.model import build_diffdis
from diffdis_jax.tasks.diffdis.sources import SOURCES, TEST_SECTION
from diffdis_jax.tasks.diffdis.text_encoders import CLIPTextEncoder

# the zero-shot predictor's noise: apart from the preview grid's (seed + 1)
ZEROSHOT_NOISE_OFFSET = 3
TEXT_BATCH = 256   # texts per text-encoder call: bounded memory for 25k COCO captions
LUMA = (0.299, 0.587, 0.114)   # ITU-R 601, PIL's 'L': RGB -> grey for one-channel models


class DiffDisTask(base.Task):

  name = 'diffdis'
  objective = objective
  modes = base.TRAIN_AND_GRID + ('eval',)

  def __init__(self, config, workdir=None):
    super().__init__(config, workdir)
    self.model = None
    self.source = SOURCES[config.data.name](self) if config.data.name in SOURCES else None

  def check_config(self):
    checks.check_config(self.config)

  def check_mode(self, mode, workdir, num_devices):
    super().check_mode(mode, workdir, num_devices)
    checks.check_mode(self.config, mode, workdir)

  # ------------------------------------------------------------------ model and state

  def build_model(self):
    self.model = build_diffdis(self.config)
    return self.model

  def init_params(self, model, rng):
    m, d = self.config.model, self.config.diffdis
    inputs = init_inputs(model, m.input_size, d.context_length, d.context_dim)
    return model.init(rng, *inputs, method='initialize')['params']

  def finish_init(self, state, shardings):
    """The empty prompt's c into aux; the pretrained generator's UNet (pretrained.py), else
    SD's, into the params and their EMA when given."""
    state = state.replace(aux=objective.set_null_context(state.aux, self.null_context))
    generator = self.config.init.pretrained_generator
    if generator:
      params, ema = pretrained.with_generator(self.config, jax.device_get(state.params))
      state = state.replace(params=params, ema_params=ema)
      logging.info('UNet initialised from the generator in %s', generator)
    elif self.config.init.sd_folder:
      params = with_unet_params(jax.device_get(state.params),
                                self.stable_diffusion.unet_params)
      # host copies: params and EMA must not share device buffers (the step donates both)
      state = state.replace(params=params, ema_params=jax.tree.map(np.array, params))
      logging.info('UNet initialised from %s', self.config.init.sd_folder)
    return jax.device_put(state, shardings)

  # ------------------------------------------------------------------ frozen encoders

  @functools.cached_property
  def stable_diffusion(self):
    return weights.load_stable_diffusion(self.config.init.sd_folder)

  @functools.cached_property
  def clip_text(self):
    """(CLIPTextModel, params): init.text_encoder's when set, else the SD folder's."""
    if self.config.init.text_encoder:
      return weights.load_clip_text_encoder(self.config.init.text_encoder)
    return self.stable_diffusion.text_encoder, self.stable_diffusion.text_encoder_params

  @functools.cached_property
  def text(self):
    """encode(texts) -> (c (n, L, d_c), e (n, d_y) unit) as numpy."""
    config = self.config
    if config.init.sd_folder:
      return CLIPTextEncoder(self.stable_diffusion.tokenizer, *self.clip_text,
                             context_length=config.diffdis.context_length,
                             query=config.diffdis.query)
    generator = config.init.pretrained_generator
    if generator:  # the generator's UNet learned its condition from that encoder
      return self.source.text_encoder(os.path.join(generator, 'text_encoder'), read_only=True)
    cache = os.path.join(self.workdir, 'text_encoder') if self.workdir else None
    return self.source.text_encoder(cache)

  @functools.cached_property
  def vae(self):
    """(vae, params) of a latent model: data.vae_path's when set (e.g. the Fashion-MNIST
    recipe's own VAE), else the SD folder's."""
    if self.config.data.vae_path:
      return weights.load_vae(self.config.data.vae_path)
    return self.stable_diffusion.vae, self.stable_diffusion.vae_params

  @functools.cached_property
  def null_context(self) -> np.ndarray:
    """(L, d_c): c of the empty prompt, the condition that guidance and dropout fall back to."""
    return self.text.encode([''])[0][0]

  @functools.cached_property
  def prompt_contexts(self) -> np.ndarray:
    """(prompts, L, d_c): c of each of the data source's preview prompts, in order."""
    return self.text.encode(self.source.preview_prompts())[0]

  @property
  def pixel_size(self) -> int:
    """The side of the images the model sees: its input, or the VAE's input for latents."""
    m = self.config.model
    if is_pixel_space(m.in_channels):
      return m.input_size
    return m.input_size * 2 ** (len(self.vae[0].block_out_channels) - 1)

  # ------------------------------------------------------------------ data

  def abstract_batch(self, batch_sharding):
    m, d, b = self.config.model, self.config.diffdis, self.config.batch_size
    spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype,
                                                                 sharding=batch_sharding)
    batch = {'image': spec((b, m.input_size, m.input_size, m.in_channels)),
             'context': spec((b, d.context_length, d.context_dim)),
             'query': spec((b, d.text_dim))}
    if self.source.labelled:
      batch['label'] = spec((b,), jnp.int32)
    return batch

  def train_iterator(self, process_index: int, process_count: int):
    return self.source.train_iterator(process_index, process_count)

  def prepare_batch(self, batch, step: int):
    return self.source.prepare_batch(batch, step)

  def input_metrics(self, data_iterator) -> dict:
    return self.source.input_metrics(data_iterator)

  # ------------------------------------------------------------------ previews, evaluation

  def make_preview_fn(self, model):
    """(params, noise, c, null_c) -> images in [-1, 1]: DDIM with guidance on c, then, for
    latent models, the VAE's decoder (its weights are an argument, not baked into the jit)."""
    sampler = diffdis_sampler.make_t2i_sampler(model, self.config)
    if is_pixel_space(self.config.model.in_channels):
      return jax.jit(sampler)
    vae, vae_params = self.vae
    decoded = jax.jit(lambda params, vae_params, *args: decode_latents(
        vae, vae_params, sampler(params, *args)))
    return lambda params, *args: decoded(params, vae_params, *args)

  def preview(self, preview_fn, params):
    """Text-to-image grid: `diffdis.sample.per_prompt` samples per prompt, a row each."""
    m, d = self.config.model, self.config.diffdis
    prompts = self.source.preview_prompts()
    if not prompts:
      return None
    per_row = d.sample.per_prompt
    context = np.repeat(self.prompt_contexts, per_row, axis=0)
    noise = jax.random.normal(jax.random.PRNGKey(self.config.seed + 1),  # the same every time
                              (len(context), m.input_size, m.input_size, m.in_channels))
    images = preview_fn(params, noise, jnp.asarray(context), jnp.asarray(self.null_context))
    return to_grid(jax.device_get(images), per_row)

  def final_eval(self, preview_fn, params) -> dict:
    """What the data source scores at the end (the demo's held-out digits: zero-shot,
    retrieval and, with eval.metric_samples, text-to-image samples)."""
    return self.source.final_eval(preview_fn, params)

  # ------------------------------------------------------------------ --mode=eval

  def evaluate(self, model, mesh, latest_state) -> dict:
    """The zero-shot suite and image-text retrieval of the latest checkpoint's EMA params, to
    eval.json's 'zeroshot' and 'retrieval' sections (docs/evaluation.md); with neither named,
    a captioned class set's own test split, to its 'test_split' section."""
    state = latest_state()
    ev = self.config.eval
    if not (ev.zeroshot_datasets or ev.retrieval_shards):  # a captioned set's own test split
      scores = self.source.evaluate(self.make_preview_fn(model), state.ema_params,
                                    step=int(state.step))
      return {TEST_SECTION: scores}
    fns = self.zeroshot_functions(mesh)
    settings = dict(fns.settings, checkpoint_step=int(state.step), method=self.name,
                    workdir=os.path.abspath(self.workdir))
    sections = zeroshot_suite.evaluate_and_record(
        fns.predict, fns.encode, state.ema_params, eval_config=self.config.eval,
        batch_size=self.config.diffdis.zeroshot.batch, image_size=fns.image_size,
        workdir=self.workdir, settings=settings)
    logging.info('eval: %s -> %s', sorted(sections), os.path.join(self.workdir, 'eval.json'))
    return sections

  def zeroshot_functions(self, mesh=None) -> zeroshot_suite.ZeroShotFunctions:
    """predict(params, images) and encode(texts): the one path by which DiffDis classifies
    and retrieves, in the final evaluation and in --mode=eval.

    images: (n, s, s, 3) float in [-1, 1], or (n, s, s, 1) for one-channel models (RGB is
    made grey by ITU-R 601 luma, PIL's 'L', when the pixel model or its VAE takes one
    channel). Pixel models take them at their own side; latent models take s = their side
    times the VAE's downsampling (8 for SD), through the VAE's encoder (`self.vae`; posterior
    mean times its scaling factor: the latents the UNet learned from). Batches of
    `diffdis.zeroshot.batch`, the last one padded: one compile, and a row's
    noise does not depend on how full its batch is. Every batch uses the same key, so a
    dataset's scores do not depend on which datasets ran before it. With `mesh`, outputs come
    back replicated (readable on every process).
    """
    config, m, d = self.config, self.config.model, self.config.diffdis
    model = self.model or self.build_model()
    query_fn = diffdis_sampler.make_query_predictor(model, config)
    vae, vae_params = None, None
    if not is_pixel_space(m.in_channels):
      vae, vae_params = self.vae

    grey = (vae.in_channels if vae is not None else m.in_channels) == 1

    def batch_fn(params, vae_params, images, null_context, rng):
      if grey and images.shape[-1] == 3:
        images = (images @ jnp.array(LUMA, images.dtype))[..., None]
      if vae is not None:
        images = vae.apply({'params': vae_params}, images, method='encode_latents')
      return query_fn(params, images, null_context, rng)

    jitted = (jax.jit(batch_fn) if mesh is None
              else jax.jit(batch_fn, out_shardings=mesh_lib.replicated(mesh)))
    null_context = jnp.asarray(self.null_context)
    rng = jax.random.PRNGKey(config.seed + ZEROSHOT_NOISE_OFFSET)
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
      return np.concatenate([self.text.encode(list(texts[start:start + TEXT_BATCH]))[1]
                             for start in range(0, len(texts), TEXT_BATCH)])

    settings = {'align_mode': d.align_mode, 'steps': d.zeroshot.steps,
                'guidance': d.zeroshot.guidance, 'spacing': d.zeroshot.spacing,
                'seeds': d.zeroshot.seeds, 'batch': batch,
                'rng_seed': config.seed + ZEROSHOT_NOISE_OFFSET,
                'image_size': self.pixel_size, 'input': 'vae_latent_mean' if vae else 'pixels'}
    return zeroshot_suite.ZeroShotFunctions(predict, encode, self.pixel_size, settings)
