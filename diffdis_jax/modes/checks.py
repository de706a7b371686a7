"""check_run: every check of a run's input, in one call, before anything is built or written.

    check_run(config, mode, workdir, num_devices)   # raises ConfigError: one line to print

`launch/main.py` and the study planner call it. It runs the checks every run shares (the
config's own fields, the mesh, the workdir), then the method's (`Task.check_config`), then
those of the mode (`Task.check_mode`: files and sizes that sampling or evaluation needs), and
last that the workdir holds no other run. Allowed values come from the modules that define
them, so a new attention kernel or remat policy is allowed where it is written.
"""
from __future__ import annotations

import os
from typing import Optional

from diffdis_jax import weights
from diffdis_jax.core import dtypes
from diffdis_jax.core.checks import ConfigError, check, one_of, positive_int
from diffdis_jax.core.platform import target_platform
from diffdis_jax.data import fashion_mnist
from diffdis_jax.nn import convolution
from diffdis_jax.nn.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from diffdis_jax.nn.layers import REMAT_POLICIES
from diffdis_jax.parallel import mesh as mesh_lib
from diffdis_jax.tasks import make_task
from diffdis_jax.train.step import NONFINITE_POLICIES
from diffdis_jax.train.workdir import check_identity

MODES = ('train', 'grid', 'sample', 'eval', 'export', 'extract_latents')
RUN_FIELDS = ('total_steps', 'batch_size', 'log_every', 'checkpoint_every', 'sample_every',
              'keep_checkpoints', 'preemption_check_every')


def check_run(config, mode: str, workdir: str, num_devices: Optional[int] = None):
  """Raise ConfigError on the first problem; `num_devices` (the run's) enables the mesh and
  sharded-batch checks."""
  one_of(mode, MODES, 'mode')
  if mode == 'extract_latents':  # no model and no train state: its own inputs only
    check_extraction(config)
    check_workdir(workdir)
    return
  task = make_task(config, workdir)
  check_shared_fields(config)
  task.check_config()
  if num_devices is not None:
    check_mesh(config, num_devices)
  check_workdir(workdir)
  task.check_mode(mode, os.path.abspath(workdir), num_devices)
  check_identity(config, task.objective, workdir)


def check_shared_fields(config):
  """The fields every method's config has (configs/common.py)."""
  for field in RUN_FIELDS:
    positive_int(config.get(field, 1), field)
  check(0.0 <= config.ema_decay < 1.0, f'ema_decay must be in [0, 1), got {config.ema_decay}')
  lr = config.optim.lr
  check(lr > 0 and lr != float('inf'),
        f'optim.lr must be a positive number, got {lr}; pass --config.optim.lr=1e-4')
  one_of(config.nonfinite, NONFINITE_POLICIES, 'nonfinite')
  phase = config.final_phase
  check(0.0 <= phase.fraction < 1.0,
        f'final_phase.fraction must be in [0, 1) (the share of total_steps at the end), got '
        f'{phase.fraction}; pass --config.final_phase.fraction=0.1, or 0 for none')
  check(phase.fraction == 0 or 0 < phase.lr < float('inf'),
        f'final_phase.lr must be a positive number, got {phase.lr}; pass '
        f'--config.final_phase.lr=5e-5')
  check_compute_dtype(config.compute_dtype)
  m = config.model
  if 'attention_impl' in m:
    one_of(m.attention_impl, ATTENTION_IMPLEMENTATIONS, 'model.attention_impl')
    # elsewhere splash runs through the Pallas interpreter: correct, and far too slow to train.
    # The target, not this host's backend: a step exported for TPU may be traced on a CPU
    target = target_platform()
    check(m.attention_impl != 'splash' or target == 'tpu',
          f"model.attention_impl='splash' is a TPU kernel and the target platform is "
          f"{target}; pass --config.model.attention_impl=None (or 'cudnn' on GPU)")
  if 'conv_impl' in m:
    one_of(m.conv_impl, convolution.IMPLEMENTATIONS, 'model.conv_impl')
  if 'remat' in m:
    one_of(m.remat, REMAT_POLICIES, 'model.remat')


def check_compute_dtype(name):
  """A dtype name core/dtypes.py knows. Each runs on the backends we have: XLA:CPU trains a
  tiny SD-DiT in float16 and in bfloat16 (docs/results.md, issue 34), so a name is wrong only
  by its spelling."""
  hint = dtypes.ALIASES.get(str(name).lower())
  check(name in dtypes.NAMES, f'compute_dtype={name!r} is not one of {list(dtypes.NAMES)}; '
        f'pass --config.compute_dtype={hint or "<one of them>"}')


def check_mesh(config, num_devices: int):
  dp = mesh_lib.resolved_data_parallel_size(config.mesh, num_devices)  # MeshError: ConfigError
  check(config.batch_size % dp == 0,
        f'batch_size {config.batch_size} is not divisible by the data-parallel size {dp} '
        '(mesh.data * mesh.fsdp); change --config.batch_size or the mesh')


def check_workdir(workdir: str):
  """The workdir is a directory this process can write, or can be created."""
  path = os.path.abspath(workdir)
  check(not os.path.exists(path) or os.path.isdir(path),
        f'--workdir={workdir} is a file, not a directory; pass another --workdir')
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  check(os.path.isdir(parent),
        f'--workdir={workdir} cannot be created: {parent} is a file; pass another --workdir')
  check(os.access(parent, os.W_OK | os.X_OK),
        f'--workdir={workdir} is not writable ({parent}); pass a --workdir you can write')


def check_extraction(config):
  """--mode=extract_latents: the VAE, the image source and the sizes."""
  ex, vae = config.data.extract, config.data.vae_path
  check(bool(vae), 'data.vae_path is empty; pass --config.data.vae_path=<diffusers '
                   'AutoencoderKL folder (or SD folder holding vae/) or .safetensors file>')
  check(os.path.exists(vae), f'data.vae_path={vae!r} does not exist; pass '
                             '--config.data.vae_path=<folder or .safetensors file>')
  for field in ('image_size', 'batch_size', 'shard_size'):
    positive_int(ex[field], f'data.extract.{field}')
  try:
    factor = 2 ** (len(weights.vae_config(vae)['block_out_channels']) - 1)
  except FileNotFoundError as err:
    raise ConfigError(f'data.vae_path: {err}') from None
  check(ex.image_size % factor == 0, f'data.extract.image_size={ex.image_size} is not a '
                                     f'multiple of {factor} (the VAE downsamples by {factor})')
  if ex.source == 'fashion_mnist':
    check(ex.image_size >= fashion_mnist.SIDE,
          f'data.extract.image_size={ex.image_size}: Fashion-MNIST is padded to it, never '
          f'cropped; pass --config.data.extract.image_size={fashion_mnist.MODEL_SIDE}')
    fashion_mnist.check_dir(ex.source_dir or fashion_mnist.DEBIAN_DIR)
    return
  # source_dir is where a manual_dir gets prepared: it need exist only without one
  for field in ('manual_dir',) if ex.manual_dir else ('source_dir',):
    path = ex[field]
    check(not path or os.path.isdir(path), f'data.extract.{field}={path!r} is not a '
                                           f'directory; pass --config.data.extract.{field}=DIR')
