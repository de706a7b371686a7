"""The evaluation entry points: `--mode=sample`, `--mode=eval` and FID during training.

    sample_mode(config, workdir)   latest checkpoint's EMA params -> <workdir>/samples.npz
    eval_mode(config, workdir)     samples.npz + reference -> <workdir>/eval.json; for
                                   method=diffdis the zero-shot suite (eval/diffdis_eval.py)
    TrainingFID.maybe_create(trainer) -> a hook logging fid_<n> every eval.fid_every steps

The protocol and the files are described in docs/evaluation.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import jax
import numpy as np

from diffdis_jax.eval import fid
from diffdis_jax.eval import sample_npz

EVAL_FILE = 'eval.json'


def samples_path(config, workdir: str) -> str:
  return config.eval.samples_npz or sample_npz.default_output(config, workdir)


def _load_vae(config):
  """(vae, vae_params) for latent models, (None, None) for pixel models."""
  if config.model.in_channels in (1, 3):
    return None, None
  vae, vae_params = sample_npz.load_vae(config.sample.vae)
  if abs(vae.scaling_factor - config.data.latent_scale) > 1e-6:
    raise ValueError(f'the VAE at {config.sample.vae} scales latents by {vae.scaling_factor}, '
                     f'the data by data.latent_scale={config.data.latent_scale}')
  return vae, vae_params


def restore_train_state(trainer, checkpointer):
  """The latest checkpoint's train state on the trainer's mesh, without the input pipeline's
  position: sampling needs none, and that part of a checkpoint is per process, so skipping it
  lets a checkpoint of N processes be sampled by any number of processes."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from diffdis_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  step = checkpointer.latest_step()
  target = ckpt_lib.abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
  restored = checkpointer.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return restored['state']


def sample_mode(config, workdir: str) -> str:
  """`config.sample.num_samples` samples of the latest checkpoint's EMA params, ADM format."""
  from diffdis_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from diffdis_jax.train.loop import Trainer  # pylint: disable=g-import-not-at-top
  trainer = Trainer(config, workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint under {checkpointer.directory}: train first')
  state = restore_train_state(trainer, checkpointer)
  checkpointer.close()
  vae, vae_params = _load_vae(config)
  output = sample_npz.default_output(config, workdir)
  return sample_npz.write_samples_npz(
      trainer.model, config, trainer.mesh, state.ema_params, output,
      num_samples=config.sample.num_samples, batch_size=config.sample.batch_size, vae=vae,
      vae_params=vae_params,
      extra_settings={'checkpoint_step': int(state.step), 'workdir': os.path.abspath(workdir),
                      'model': config.model.name, 'method': config.method})


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(chunk), b''):
      digest.update(block)
  return digest.hexdigest()


def read_eval_json(workdir: str) -> dict:
  path = os.path.join(workdir, EVAL_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def update_eval_json(workdir: str, section: str, value: dict) -> str:
  """Sets `section` of <workdir>/eval.json, keeping the other sections (atomic replace)."""
  path = os.path.join(workdir, EVAL_FILE)
  content = read_eval_json(workdir)
  content[section] = value
  os.makedirs(workdir, exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(content, f, indent=1, sort_keys=True)
  os.replace(path + '.tmp', path)
  return path


def sample_settings(config, npz_path: str) -> dict:
  """The settings the samples were made with: the sidecar `--mode=sample` wrote, else the
  config's (marked as such: a file from elsewhere may have been made otherwise)."""
  sidecar = sample_npz.settings_path(npz_path)
  if os.path.exists(sidecar):
    with open(sidecar) as f:
      return dict(json.load(f), source=sidecar)
  return dict(sample_npz.sampler_settings(config), source='config (no sidecar file)')


def eval_mode(config, workdir: str, extractor=None, trainer=None) -> dict:
  """Every image metric of the samples file; writes them with the settings to eval.json.

  For method=diffdis: zero-shot classification and retrieval of the latest checkpoint
  instead (eval/diffdis_eval.py), sections 'zeroshot' and 'retrieval' of the same file.
  `trainer`: an already built Trainer to reuse (DiffDis only; the FID path needs none).
  """
  if config.method == 'diffdis':
    from diffdis_jax.eval import diffdis_eval  # pylint: disable=g-import-not-at-top
    return diffdis_eval.eval_mode(config, workdir, trainer)
  e = config.eval
  npz_path = samples_path(config, workdir)
  if extractor is None:
    extractor = fid.InceptionExtractor.from_file(e.inception_weights, batch_size=e.batch_size)
  t0 = time.perf_counter()
  metrics = fid.evaluate_files(npz_path, e.reference_npz, extractor, batch_size=e.batch_size)
  record = {
      'metrics': metrics,
      'samples': {'file': os.path.abspath(npz_path), 'sha256': file_sha256(npz_path),
                  'num_samples': int(metrics['num_samples'])},
      'sampler': sample_settings(config, npz_path),
      'reference': {'file': os.path.abspath(e.reference_npz),
                    'num_reference': metrics.get('num_reference')},
      'inception_weights': {'file': os.path.abspath(e.inception_weights) if e.inception_weights
                            else None},
      'protocol': 'ADM evaluator (docs/evaluation.md)',
      'seconds': round(time.perf_counter() - t0, 1),
  }
  if jax.process_index() == 0:
    path = update_eval_json(workdir, 'images', record)
    logging.info('eval: %s -> %s', {k: round(v, 4) for k, v in metrics.items()}, path)
  return record


class TrainingFID:
  """FID of `eval.fid_samples` EMA samples against the reference, every `eval.fid_every` steps.

  Loads the Inception weights and reference statistics once; samples in memory (no file), with
  the same per-index seeds as `--mode=sample`. Only the pool features are computed.
  """

  def __init__(self, trainer, extractor, reference: fid.Reference):
    self.config = trainer.config
    self.model, self.mesh = trainer.model, trainer.mesh
    self.extractor, self.reference = extractor, reference
    self.vae, self.vae_params = _load_vae(self.config)
    self.sampler, self.sharding = sample_npz.make_batch_sampler(
        self.model, self.config, self.mesh, self.vae)

  @classmethod
  def maybe_create(cls, trainer, extractor=None):
    """The hook, or None when eval.fid_every is 0."""
    e = trainer.config.eval
    if not e.fid_every:
      return None
    if extractor is None:
      extractor = fid.InceptionExtractor.from_file(e.inception_weights, batch_size=e.batch_size,
                                                   keys=('pool',))
    return cls(trainer, extractor, fid.read_reference(e.reference_npz, extractor, e.batch_size))

  def __call__(self, step: int, params, writer, jsonl):
    e = self.config.eval
    if step % e.fid_every:
      return None
    t0 = time.perf_counter()
    batch = self.config.sample.batch_size
    _, images, _ = sample_npz.sample_rows(self.sampler, self.sharding, params, self.vae_params,
                                          e.fid_samples, batch)
    # every process ends with its own rows; the statistics need all of them
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      images = np.concatenate(multihost_utils.process_allgather(images, tiled=False))
    pool = self.extractor(images)['pool']
    value = fid.frechet_distance(fid.Statistics.from_activations(pool), self.reference.pool_stats)
    scalars = {f'fid_{e.fid_samples}': value}
    writer.write_scalars(step, scalars)
    jsonl.write(step, scalars)
    logging.info('step %d: fid_%d %.3f (%.1f s)', step, e.fid_samples, value,
                 time.perf_counter() - t0)
    return value
