"""SD-DiT (and the DiT / MaskDiT baselines, which are settings of it): class-conditional EDM
on images or latents, with FID files for evaluation."""
from __future__ import annotations

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from diffdis_jax import weights
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.core.files import file_sha256
from diffdis_jax.core.spaces import is_pixel_space
from diffdis_jax.data import pipeline
from diffdis_jax.eval import fid, sample_npz
from diffdis_jax.eval import sddit_sampler
from diffdis_jax.eval import image_set_metrics
from diffdis_jax.eval.eval_json import update_eval_json
from diffdis_jax.eval.fid_during_training import FIDDuringTraining
from diffdis_jax.eval.sample import decode_latents
from diffdis_jax.nn.dit import SDDiT
from diffdis_jax.objectives import sddit as objective
from diffdis_jax.tasks import base
from diffdis_jax.tasks.sddit import checks
from diffdis_jax.tasks.sddit.flops import sddit_flops


METRIC_BATCH = 500  # samples per call of the sampler when scoring with the classifier


def dummy_inputs(model, batch: int = 1):
  """Arguments for model.init: NHWC image, noise-level input, class ids."""
  x = jnp.zeros((batch, model.input_size, model.input_size, model.in_channels), jnp.float32)
  return x, jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.int32)


def build_sddit(config) -> SDDiT:
  """The SDDiT of `config.model`; the projection head exists only when the teacher is used."""
  m = config.model
  depth, width, heads, patch = checks.dit_sizes(m)
  head = dict(m.head) if objective.uses_teacher(config) else None
  return SDDiT(
      input_size=m.input_size, in_channels=m.in_channels, patch=patch, width=width,
      depth=depth, num_heads=heads, num_classes=m.num_classes, learn_sigma=m.learn_sigma,
      decoder_mode=m.decoder_mode, decoder_depth=m.decoder_depth,
      decoder_width=m.decoder_width, decoder_heads=m.decoder_heads, infill=m.infill,
      head=head, time_freq_shift=float(m.get('time_freq_shift', 0.0)),
      attention_impl=m.attention_impl, remat=m.remat,
      dtype=base.compute_dtype(config))


def _host_array(array) -> np.ndarray:
  """A (possibly multi-host sharded) array whole on this host."""
  if getattr(array, 'is_fully_addressable', True):
    return np.asarray(jax.device_get(array))
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


class SDDiTTask(base.Task):

  name = 'sddit'
  objective = objective
  modes = base.TRAIN_AND_GRID + ('sample', 'eval', 'export')

  def check_config(self):
    checks.check_config(self.config)

  def check_mode(self, mode, workdir, num_devices):
    super().check_mode(mode, workdir, num_devices)
    if mode == 'export':   # the model itself says whether diffusers' DiT can hold it
      problem = weights.export.dit_export_problem(build_sddit(self.config))
      if problem:
        raise ConfigError(f'--mode=export: model {self.config.model.name} is not exportable as '
                          f'a DiTTransformer2DModel: {problem}')
    checks.check_mode(self.config, mode, workdir, num_devices)

  def final_phase_config(self):
    """MaskDiT's last phase: the same objective without a mask, so that the decoder trains on
    what it sees when sampling (the learned mask token or the noisy infill never appear)."""
    config = self.config.copy_and_resolve_references()
    config.sddit.mask_ratio = 0.0
    if config.sddit.final_phase_dis_weight is not None:
      config.sddit.dis_weight = config.sddit.final_phase_dis_weight
    return config

  # ------------------------------------------------------------------ model and state

  def build_model(self):
    return build_sddit(self.config)

  def init_params(self, model, rng):
    return model.init(rng, *dummy_inputs(model))['params']

  def finish_init(self, state, shardings):
    """With init.dit_weights: every DiT parameter that fits, in the params, their EMA and the
    teacher (which start as copies of the params)."""
    path = self.config.init.dit_weights
    if not path:
      return jax.device_put(state, shardings)
    m = self.config.model
    sizes = {k: m[k] for k in ('depth', 'width', 'num_heads') if m.get(k)}
    params, loaded, kept = weights.dit.with_official_dit(
        jax.device_get(state.params), weights.load_safetensors(path), m.name, **sizes)
    logging.info('init.dit_weights=%s: %d parameters loaded, %d kept from initialisation '
                 '(%s)', path, len(loaded), len(kept), ', '.join(kept[:8]))
    aux = jax.device_get(state.aux)
    if 'teacher' in aux:
      aux = dict(aux, teacher={k: params[k] for k in aux['teacher']})
    # host copies: params, EMA and teacher must not share device buffers (the step donates)
    state = state.replace(params=params, ema_params=jax.tree.map(np.array, params),
                          aux=jax.tree.map(np.array, aux))
    return jax.device_put(state, shardings)

  # ------------------------------------------------------------------ data

  def abstract_batch(self, batch_sharding):
    m, b = self.config.model, self.config.batch_size
    return {
        'image': jax.ShapeDtypeStruct((b, m.input_size, m.input_size, m.in_channels),
                                      jnp.float32, sharding=batch_sharding),
        'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding),
    }

  def train_iterator(self, process_index: int, process_count: int):
    scale = self.latent_scale() if self.config.data.name == 'latents' else None
    return pipeline.make_train_iterator(self.config, process_index, process_count, scale)

  # ------------------------------------------------------------------ the VAE of latent models

  def vae_path(self) -> str:
    """The VAE that made the latents and decodes the samples ('' for pixel models)."""
    return self.config.sample.vae or self.config.data.vae_path

  def latent_scale(self) -> float:
    return base.latent_scale(self.config, self.vae_path())

  @functools.cached_property
  def decoder(self):
    """jitted scaled latents -> images in [-1, 1] (compiled once per shape), or None for
    pixel models."""
    vae, vae_params = self.sampling_vae
    if vae is None:
      return None
    decode = jax.jit(lambda p, z: decode_latents(vae, p, z))
    return functools.partial(decode, vae_params)

  # ------------------------------------------------------------------ previews, evaluation

  def make_preview_fn(self, model):
    return jax.jit(sddit_sampler.make_sample_fn(model, self.config))

  def preview(self, preview_fn, params):
    """The class-conditional grid: `sample.per_class` rows, one column per shown class;
    a latent model's samples are decoded by its VAE."""
    if not is_pixel_space(self.config.model.in_channels) and not self.vae_path():
      logging.info('sample grid skipped: latents need a VAE decoder to be shown (sample.vae)')
      return None
    rng = jax.random.PRNGKey(self.config.seed + 1)  # the same noise at every step
    return sddit_sampler.sample_grid(preview_fn, params, self.config, rng, self.decoder)

  def final_eval(self, preview_fn, params) -> dict:
    """The image set's classifier scores (fd_digits or fd_fmnist, and sample_class_acc) of
    eval.metric_samples class-balanced samples (eval/classifier_metric.py)."""
    config, m = self.config, self.config.model
    n = config.eval.metric_samples
    metric = image_set_metrics.metric_for(config, self.workdir) if n else None
    if metric is None:
      return {}
    labels = jnp.arange(n, dtype=jnp.int32) % m.num_classes
    noise = jax.random.normal(jax.random.PRNGKey(config.seed + 2),
                              (n, m.input_size, m.input_size, m.in_channels))
    decode = self.decoder
    samples = []
    for i in range(0, n, METRIC_BATCH):  # bounded memory for thousands of samples
      batch = preview_fn(params, noise[i:i + METRIC_BATCH], labels[i:i + METRIC_BATCH])
      samples.append(jax.device_get(batch if decode is None else decode(batch)))
    scores = metric.evaluate(np.concatenate(samples), jax.device_get(labels))
    logging.info('classifier metric on %d samples: %s', n, scores)
    return scores

  def train_flops_per_image(self, model) -> float:
    return sddit_flops(model, self.config)['train_flops_per_image']

  def eval_hooks(self, model, mesh) -> list:
    """FID of EMA samples every eval.fid_every steps, when configured."""
    ev = self.config.eval
    if not ev.fid_every:
      return []
    extractor = fid.InceptionExtractor.from_file(ev.inception_weights, batch_size=ev.batch_size,
                                                 keys=('pool',))
    reference = fid.read_reference(ev.reference_npz, extractor, ev.batch_size)
    vae, vae_params = self.sampling_vae
    sampler, sharding = sample_npz.make_batch_sampler(model, self.config, mesh, vae)
    return [FIDDuringTraining(sampler, sharding, vae_params, extractor, reference,
                              every=ev.fid_every, num_samples=ev.fid_samples,
                              batch_size=self.config.sample.batch_size)]

  # ------------------------------------------------------------------ run modes

  @functools.cached_property
  def sampling_vae(self):
    """(vae, vae_params) that decode the model's latents, or (None, None) for pixels."""
    config = self.config
    if is_pixel_space(config.model.in_channels):
      return None, None
    vae, vae_params = weights.load_vae(self.vae_path())
    if abs(vae.scaling_factor - self.latent_scale()) > 1e-6:
      raise ValueError(f'the VAE at {self.vae_path()} scales latents by {vae.scaling_factor}, '
                       f'the data by data.latent_scale={config.data.latent_scale}')
    return vae, vae_params

  def samples_without_checkpoint(self) -> bool:
    return bool(self.config.init.dit_weights)  # checks.check_released_dit: a complete load

  def write_samples(self, model, mesh, state) -> str:
    """`sample.num_samples` class-conditional samples of the EMA params, ADM's .npz format."""
    config = self.config
    vae, vae_params = self.sampling_vae
    return sample_npz.write_samples_npz(
        model, config, mesh, state.ema_params, sample_npz.default_output(config, self.workdir),
        num_samples=config.sample.num_samples, batch_size=config.sample.batch_size, vae=vae,
        vae_params=vae_params,
        extra_settings={'checkpoint_step': int(state.step),
                        'init_dit_weights': config.init.dit_weights or None,
                        'workdir': os.path.abspath(self.workdir), 'model': config.model.name,
                        'method': config.method})

  def export(self, model, state) -> str:
    """The EMA params (the sampling weights, as DiT released its 'ema') as a diffusers
    DiTTransformer2DModel folder (weights/export.py)."""
    output = checks.export_output(self.config, self.workdir)
    params = jax.tree.map(_host_array, state.ema_params)
    if jax.process_index() == 0:
      weights.save_diffusers_dit(output, model, params)
      logging.info('exported step %d as a DiTTransformer2DModel to %s (objective=%s)',
                   int(state.step), output, self.config.objective)
    return output

  def evaluate(self, model, mesh, latest_state) -> dict:
    """Scores of the samples file, with the settings it was made with, to eval.json: FID,
    sFID, IS, precision and recall against eval.reference_npz ('images'), and the image
    set's classifier scores where it has one ('classifier': fd_digits or fd_fmnist, and
    sample_class_acc). Reads no checkpoint: the file holds the samples."""
    del model, mesh, latest_state
    ev = self.config.eval
    npz_path = ev.samples_npz or sample_npz.default_output(self.config, self.workdir)
    record = {}
    if ev.reference_npz:
      record['images'] = self._adm_scores(npz_path)
    if image_set_metrics.image_set(self.config):
      record['classifier'] = self._classifier_scores(npz_path)
    return record

  def _provenance(self, npz_path: str, t0: float) -> dict:
    return {'samples': {'file': os.path.abspath(npz_path), 'sha256': file_sha256(npz_path)},
            'sampler': sample_npz.recorded_settings(self.config, npz_path),
            'seconds': round(time.perf_counter() - t0, 1)}

  def _write(self, section: str, record: dict):
    if jax.process_index() == 0:
      path = update_eval_json(self.workdir, section, record)
      logging.info('eval: %s -> %s', {k: round(v, 4) for k, v in record['metrics'].items()},
                   path)

  def _adm_scores(self, npz_path: str) -> dict:
    ev = self.config.eval
    extractor = fid.InceptionExtractor.from_file(ev.inception_weights, batch_size=ev.batch_size)
    t0 = time.perf_counter()
    metrics = fid.evaluate_files(npz_path, ev.reference_npz, extractor, batch_size=ev.batch_size)
    record = {
        'metrics': metrics,
        'reference': {'file': os.path.abspath(ev.reference_npz),
                      'num_reference': metrics.get('num_reference')},
        'inception_weights': {'file': os.path.abspath(ev.inception_weights)
                              if ev.inception_weights else None},
        'protocol': 'ADM evaluator (docs/evaluation.md)',
        **self._provenance(npz_path, t0),
    }
    record['samples']['num_samples'] = int(metrics['num_samples'])
    self._write('images', record)
    return record

  def _classifier_scores(self, npz_path: str) -> dict:
    t0 = time.perf_counter()
    metric = image_set_metrics.metric_for(self.config, self.workdir)
    with np.load(npz_path) as npz:  # an ADM reference batch has no labels: no class accuracy
      images, labels = npz['arr_0'], npz['arr_1'] if 'arr_1' in npz.files else None
    metrics = metric.evaluate(image_set_metrics.from_uint8(images), labels)
    record = {'metrics': metrics, 'classifier_test_acc': metric.test_accuracy,
              'protocol': f'{image_set_metrics.image_set(self.config)} classifier '
                          '(eval/classifier_metric.py)', **self._provenance(npz_path, t0)}
    record['samples']['num_samples'] = int(len(images))
    self._write('classifier', record)
    return record
