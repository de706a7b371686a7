"""Lowers the sharded steps for TPU and GPU on this host, which has neither: jax.export.

  python bench/export.py                                    # every step, tpu and cuda, 3 meshes
  python bench/export.py --steps=sddit_splash --platforms=tpu --mesh=data:2,fsdp:2,tensor:2
  python bench/export.py --depth=2                          # every stack cut to 2 blocks
  python bench/export.py --tiny                             # smoke run (bench/tiny.py)

Steps (each from its config file, at full size unless --depth cuts it):
  sddit_train    SD-DiT-XL/2's train step (configs/sddit_xl.py)
  sddit_splash   the same with model.attention_impl='splash': TPU only, Pallas's Mosaic kernel
  dit_sample     DiT-XL/2's sampling step (configs/dit_xl.py) as --mode=sample runs it: EDM
                 Heun with guidance over a batch of sample indices, then SD's VAE decoder
  diffdis_train  DiffDis's train step on SD 1.5's UNet (configs/diffdis_sd15.py)

Every step is the package's own (Trainer.jitted_step; eval/sample_npz.make_batch_sampler),
jitted with the shardings of the mesh, traced from abstract shapes (nothing the size of the
model is allocated, no weights are read) on virtual CPU devices, one per mesh position, and
exported with `core.platform.export_for`, so it carries the target's kernel choices
(docs/scaling.md). One JSON line per export: step, platform, mesh, global batch,
lower_seconds (building the abstract state and the step, tracing, lowering) and what the
module holds (`module_facts`: its size in characters of StableHLO text, convolutions, Mosaic
kernels, which attention).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from absl import app, flags  # noqa: E402

STEPS = ('sddit_train', 'sddit_splash', 'dit_sample', 'diffdis_train')
CONFIG_FILES = {'sddit_train': 'configs/sddit_xl.py', 'sddit_splash': 'configs/sddit_xl.py',
                'dit_sample': 'configs/dit_xl.py', 'diffdis_train': 'configs/diffdis_sd15.py'}
MESHES = ('data:8', 'fsdp:8', 'data:2,fsdp:2,tensor:2')
# our einsum attention (nn/attention.py) names its einsums in lower case, jax's function in
# upper case; the StableHLO's locations carry these names
EINSUM_ATTENTION = 'btnh,bsnh->bnts'
XLA_ATTENTION = 'BTNH,BSNH->BNTS'

_STEPS = flags.DEFINE_list('steps', list(STEPS), f'any of {",".join(STEPS)}')
_PLATFORMS = flags.DEFINE_list('platforms', ['tpu', 'cuda'], 'jax.export platforms: tpu, '
                               'cuda, rocm, cpu (sddit_splash is exported for tpu only)')
_MESH = flags.DEFINE_multi_string('mesh', list(MESHES), 'data:N,fsdp:N,tensor:N (repeatable)')
_DEPTH = flags.DEFINE_integer('depth', 0, '0: full size; N: DiT stacks of N blocks (the '
                              'separate decoder too), a 2-level UNet of one layer per block')
_BATCH = flags.DEFINE_integer('batch', 0, 'global batch (train and sampling); 0: the config\'s')
_TINY = flags.DEFINE_bool('tiny', False, 'smoke run (bench/tiny.py): SD-DiT\'s train step cut '
                          'to one block, for the CPU, on a 2-device mesh')


def step_config(step: str, mesh: dict, depth: int = 0, batch: int = 0):
  """The config `step` is exported with: its file's, on `mesh`, optionally cut."""
  from diffdis_jax.core.overrides import apply_overrides  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', CONFIG_FILES[step])
  spec = importlib.util.spec_from_file_location(f'export_{step}_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  overrides = {f'mesh.{axis}': size for axis, size in mesh.items()}
  if step == 'sddit_splash':
    overrides['model.attention_impl'] = 'splash'
  if batch:
    overrides['batch_size'] = batch
    if step == 'dit_sample':
      overrides['sample.batch_size'] = batch
  if depth and step == 'diffdis_train':
    overrides.update({'model.block_out_channels': (320, 640), 'model.layers_per_block': 1,
                      'model.down_block_types': ('CrossAttnDownBlock2D', 'DownBlock2D'),
                      'model.up_block_types': ('UpBlock2D', 'CrossAttnUpBlock2D')})
  elif depth:
    overrides['model.depth'] = depth
    if config.model.decoder_mode == 'separate':
      overrides['model.decoder_depth'] = min(depth, config.model.decoder_depth)
  return apply_overrides(config, overrides, f'bench/export.py {step}')


def build(step: str, config, workdir: str):
  """(jitted function, abstract arguments with their shardings, trainer) of `step`."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from diffdis_jax.eval.sample_npz import make_batch_sampler
  from diffdis_jax.modes.run import build_trainer
  from diffdis_jax.nn.vae import AutoencoderKL
  from diffdis_jax.parallel import mesh as mesh_lib
  size = math.prod(config.mesh[axis] for axis in mesh_lib.MESH_AXES)
  trainer = build_trainer(config, workdir, devices=jax.devices()[:size])
  if step != 'dit_sample':
    return trainer.jitted_step(), (trainer.abstract_target(), trainer.abstract_batch()), trainer
  # SD's VAE (nn/vae.py's defaults), its parameters replicated, as the sample mode's
  vae = AutoencoderKL()
  latent = jnp.zeros((1, 4, 4, vae.latent_channels))
  vae_params = jax.eval_shape(lambda: vae.init(jax.random.PRNGKey(0), latent,
                                               method='decode'))['params']
  replicated = mesh_lib.replicated(trainer.mesh)
  vae_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=replicated), vae_params)
  sampler, sharding = make_batch_sampler(trainer.model, config, trainer.mesh, vae)
  indices = jax.ShapeDtypeStruct((config.sample.batch_size,), jnp.int32, sharding=sharding)
  return sampler, (trainer.abstract_target().ema_params, vae_params, indices), trainer


def export(step: str, config, platform: str):
  """(jax.export.Exported of `step` for `platform`, its abstract arguments, its mesh)."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.core.platform import export_for
  from diffdis_jax.parallel import mesh as mesh_lib
  with tempfile.TemporaryDirectory() as workdir:
    jitted, args, trainer = build(step, config, workdir)
  # traced as the trainer traces the step: the mesh in context (splash's shard_map reads
  # it) and the activation constraints on
  with mesh_lib.activation_rules(trainer.mesh, config.axis_rules):
    exported = export_for(jitted, platform, *args)
  return exported, args, trainer.mesh


def module_facts(exported) -> dict:
  """What the exported StableHLO holds that the kernel choices decide."""
  text = exported.mlir_module()
  return {'platforms': list(exported.platforms), 'devices': exported.nr_devices,
          'stablehlo_chars': len(text),
          'convolutions': len(re.findall(r'stablehlo\.convolution\b', text)),
          'dot_generals': len(re.findall(r'stablehlo\.dot_general\b', text)),
          'mosaic_calls': text.count('@tpu_custom_call'),
          'einsum_attention': EINSUM_ATTENTION in text,
          'xla_attention': XLA_ATTENTION in text}


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import tiny  # bench/tiny.py
  from diffdis_jax.parallel import mesh as mesh_lib
  tiny.absl_tiny(flags.FLAGS, _TINY.value, steps='sddit_train', platforms='cpu',
                 mesh='data:2', depth='1', batch='2')
  meshes = [mesh_lib.parse_mesh_flag(m) for m in _MESH.value]
  if any(-1 in m.values() for m in meshes):
    raise SystemExit('--mesh: give every axis a size')
  unknown = sorted(set(_STEPS.value) - set(STEPS))
  if unknown:
    raise SystemExit(f'--steps: unknown {unknown}; choose from {",".join(STEPS)}')
  # virtual CPU devices, enough for the largest mesh, before jax starts its backend
  import jax
  jax.config.update('jax_platforms', 'cpu')
  count = max(math.prod(m.values()) for m in meshes)
  os.environ['XLA_FLAGS'] = re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                                   os.environ.get('XLA_FLAGS', '')) + \
      f' --xla_force_host_platform_device_count={count}'
  from diffdis_jax.core.platform import targeting
  from diffdis_jax.modes import checks
  for step in _STEPS.value:
    for platform in _PLATFORMS.value:
      if step == 'sddit_splash' and platform != 'tpu':
        continue
      for mesh in meshes:
        config = step_config(step, mesh, _DEPTH.value, _BATCH.value)
        with targeting(platform):  # the input checks a run of this config would pass there
          checks.check_shared_fields(config)
        t0 = time.perf_counter()
        exported, _, _ = export(step, config, platform)
        seconds = time.perf_counter() - t0
        print(json.dumps({'step': step, 'platform': platform,
                          'mesh': ','.join(f'{k}:{v}' for k, v in mesh.items()),
                          'depth': _DEPTH.value or 'full',
                          'batch': (config.sample.batch_size if step == 'dit_sample'
                                    else config.batch_size),
                          'lower_seconds': round(seconds, 1), **module_facts(exported),
                          'jax': jax.__version__}), flush=True)


if __name__ == '__main__':
  app.run(main)
