"""The run modes: what `launch/main.py --mode=...` does once `check_run` has passed.

    train            train to config.total_steps, resuming from the workdir's checkpoints
    grid             the latest checkpoint's preview grid to <workdir>/samples/final.png
    sample           the latest checkpoint's samples to a file (SD-DiT: ADM's .npz for FID)
    eval             scores to <workdir>/eval.json (SD-DiT: FID of the samples file; DiffDis:
                     zero-shot classification and retrieval of the latest checkpoint)
    export           the latest checkpoint in a peer's format (a DiT: diffusers'
                     DiTTransformer2DModel folder)
    extract_latents  a TFDS image set through the SD-VAE into a latent set (extract_latents.py)

Every mode but the last works from one Trainer, built here once: it holds the task, the
model, the mesh and the state's layout, and restores the latest checkpoint. What differs by
method is asked of the task.
"""
from __future__ import annotations

import logging
import os

from diffdis_jax.modes import extract_latents
from diffdis_jax.tasks import make_task
from diffdis_jax.train import preemption
from diffdis_jax.train.loop import Trainer


def build_trainer(config, workdir: str, devices=None) -> Trainer:
  """The Trainer of `config`'s method for `workdir`: nothing loaded or compiled yet."""
  return Trainer(config, workdir, make_task(config, workdir), devices)


def train(trainer: Trainer):
  """Trains; a SIGTERM saves the current step and returns (preemption.py)."""
  with preemption.sigterm_requests_stop():
    return trainer.train()


def grid(trainer: Trainer) -> str:
  """The task's preview grid of the latest checkpoint's EMA params as samples/final.png."""
  state = trainer.restore_latest()
  preview_fn = trainer.task.make_preview_fn(trainer.model)
  trainer.write_samples(preview_fn, state.ema_params, int(state.step), None, name='final.png')
  return os.path.join(trainer.workdir, 'samples', 'final.png')


def sample(trainer: Trainer) -> str:
  """The latest checkpoint's samples; a workdir without one samples the fresh state where the
  task loads complete pretrained weights into it (SD-DiT's init.dit_weights, e.g.
  configs/dit_xl_official.py): released weights are sampled without a training run."""
  try:
    state = trainer.restore_latest()
  except FileNotFoundError:
    if not trainer.task.samples_without_checkpoint():
      raise
    logging.info('no checkpoint in %s: sampling the pretrained weights', trainer.workdir)
    state = trainer.init_state()
  return trainer.task.write_samples(trainer.model, trainer.mesh, state)


def evaluate(trainer: Trainer) -> dict:
  return trainer.task.evaluate(trainer.model, trainer.mesh, trainer.restore_latest)


def export(trainer: Trainer) -> str:
  """The latest checkpoint's EMA params in the task's peer format; returns the path."""
  return trainer.task.export(trainer.model, trainer.restore_latest())


MODES = {'train': train, 'grid': grid, 'sample': sample, 'eval': evaluate, 'export': export}


def run(mode: str, config, workdir: str):
  """Runs `mode`; check_run(config, mode, workdir, ...) must have passed."""
  workdir = os.path.abspath(workdir)
  if mode == 'extract_latents':
    return extract_latents.run(config, workdir)
  return MODES[mode](build_trainer(config, workdir))
