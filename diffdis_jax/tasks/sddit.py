"""SD-DiT (and the DiT / MaskDiT baselines): class-conditional EDM on images or latents."""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax import build
from diffdis_jax.data import pipeline
from diffdis_jax.eval import sample as sample_lib
from diffdis_jax.eval.evaluate import TrainingFID


def dummy_inputs(model, batch: int = 1):
  """Arguments for model.init: NHWC image, noise-level input, class ids."""
  x = jnp.zeros((batch, model.input_size, model.input_size, model.in_channels), jnp.float32)
  return x, jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.int32)


class SDDiTTask:

  def __init__(self, config, workdir: str | None = None):
    self.config, self.workdir = config, workdir

  def build_model(self):
    return build.build_sddit(self.config)

  def init_params(self, model, rng):
    return model.init(rng, *dummy_inputs(model))['params']

  def finish_init(self, state, shardings):
    """With init.dit_weights: every DiT parameter that fits, in the params, their EMA and the
    teacher (which start as copies of the params)."""
    path = self.config.init.dit_weights
    if not path:
      return state
    from diffdis_jax.weights import dit as dit_weights  # pylint: disable=g-import-not-at-top
    from diffdis_jax.weights.convert import load_safetensors  # pylint: disable=g-import-not-at-top
    m = self.config.model
    sizes = {k: m[k] for k in ('depth', 'width', 'num_heads') if m.get(k)}
    params, loaded, kept = dit_weights.with_official_dit(
        jax.device_get(state.params), load_safetensors(path), m.name, **sizes)
    logging.info('init.dit_weights=%s: %d parameters loaded, %d kept from initialisation '
                 '(%s)', path, len(loaded), len(kept), ', '.join(kept[:8]))
    aux = jax.device_get(state.aux)
    if 'teacher' in aux:
      aux = dict(aux, teacher={k: params[k] for k in aux['teacher']})
    # host copies: params, EMA and teacher must not share device buffers (the step donates)
    state = state.replace(params=params, ema_params=jax.tree.map(np.array, params),
                          aux=jax.tree.map(np.array, aux))
    return jax.device_put(state, shardings)

  def abstract_batch(self, batch_sharding):
    m, b = self.config.model, self.config.batch_size
    return {
        'image': jax.ShapeDtypeStruct((b, m.input_size, m.input_size, m.in_channels),
                                      jnp.float32, sharding=batch_sharding),
        'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding),
    }

  def train_iterator(self, process_index: int, process_count: int):
    return pipeline.make_train_iterator(self.config, process_index, process_count)

  def prepare_batch(self, batch, step: int):
    del step  # the batch is what the step consumes
    return batch

  def input_metrics(self, data_iterator) -> dict:
    del data_iterator
    return {}

  def make_preview_fn(self, model):
    return jax.jit(sample_lib.make_sample_fn(model, self.config))

  def preview(self, sample_fn, params):
    """The class-conditional grid: `sample.per_class` rows, one column per shown class."""
    if self.config.model.in_channels not in (1, 3):
      logging.info('sample grid skipped: latents need a VAE decoder to be shown')
      return None
    rng = jax.random.PRNGKey(self.config.seed + 1)  # the same noise at every step
    return sample_lib.sample_grid(sample_fn, params, self.config, rng)

  def final_eval(self, sample_fn, params) -> dict:
    """fd_digits and sample_class_acc of class-balanced samples (see eval/digits_metric.py)."""
    config, m = self.config, self.config.model
    n = config.eval.digits_samples
    if config.data.name != 'digits' or not n:
      return {}
    from diffdis_jax.eval.digits_metric import DigitsMetric  # pylint: disable=g-import-not-at-top
    labels = jnp.arange(n, dtype=jnp.int32) % m.num_classes
    noise = jax.random.normal(jax.random.PRNGKey(config.seed + 2),
                              (n, m.input_size, m.input_size, m.in_channels))
    samples = jax.device_get(sample_fn(params, noise, labels))
    metric = DigitsMetric.create(cache_dir=os.path.join(self.workdir, 'digits_classifier'),
                                 seed=0, size=config.data.image_size)
    scores = metric.evaluate(samples, jax.device_get(labels))
    logging.info('digits metric on %d samples: %s', n, scores)
    return scores

  def eval_hooks(self, trainer) -> list:
    """FID of EMA samples every eval.fid_every steps, when configured (eval/evaluate.py)."""
    hook = TrainingFID.maybe_create(trainer)
    return [hook] if hook else []
