"""Per-device memory of a sharded train step, from abstract shapes (nothing is allocated).

  python bench/memory.py --config=configs/sddit_xl.py --mesh=data:1,fsdp:8,tensor:1
  python bench/memory.py --config=configs/sddit_xl.py --mesh=data:2,fsdp:4,tensor:1 \
      --config.batch_size=256
  python bench/memory.py --tiny          # smoke run (bench/tiny.py): the tiny SD-DiT on fsdp:2

Builds the train state with jax.eval_shape, lays it out with the config's axis rules on the
requested mesh, compiles the real train step for that mesh ahead of time (on CPU: virtual
devices, one per mesh position) and prints one JSON line:

  total_param_bytes, param_bytes_per_device     the trained parameters (float32)
  opt_bytes_per_device (+ total_opt_bytes)      the optax state (AdamW: two moments)
  ema/aux_bytes_per_device                      sampling EMA; SD-DiT teacher and centres
  state_bytes_per_device                        all of the TrainState
  compiled: argument/output/alias/temp bytes    XLA's memory analysis of one device's program
  peak_bytes_per_device_estimate                arguments + outputs - aliased + temporaries
  collectives                                   bytes each kind of collective moves per step
                                                and device (result sizes, summed over the
                                                program; see docs/scaling.md)
  flops_per_device                              XLA's cost analysis, when the backend has one

The CPU compile stands in for TPU/GPU: buffer sizes and collectives follow from the sharding,
but XLA's fusion and rematerialisation decisions (hence temp bytes) differ per backend.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import costs  # noqa: E402  (bench/costs.py)
import tiny  # noqa: E402  (bench/tiny.py)

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/*.py file.')
_MESH = flags.DEFINE_string('mesh', 'data:1,fsdp:8,tensor:1', 'data:N,fsdp:N,tensor:N')
_PLATFORM = flags.DEFINE_enum('platform', 'cpu', ['cpu', 'native'],
                              'cpu: virtual CPU devices; native: the devices of this host')
_COMPILE = flags.DEFINE_bool('compile', True, 'false: the state figures only (no compile); '
                             'the full XL step takes over 15 min and 16+ GB to compile on CPU')
_FAST = flags.DEFINE_bool('fast_compile', True, 'CPU: compile with LLVM at -O0. Buffer '
                          'sizes and collectives are fixed before LLVM runs, so the figures '
                          'are the same; the compile takes about half the time.')
_TINY = flags.DEFINE_bool('tiny', False, tiny.HELP)

def main(argv):
  del argv
  tiny.absl_tiny(flags.FLAGS, _TINY.value, config='configs/demo.py',
                 mesh='data:1,fsdp:2,tensor:1')
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.parallel import mesh as mesh_lib
  sizes = mesh_lib.parse_mesh_flag(_MESH.value)
  if _PLATFORM.value == 'cpu':
    if -1 in sizes.values():
      raise SystemExit('--mesh: give every axis a size with --platform=cpu')
    # virtual devices must be requested before jax starts its backend
    os.environ['JAX_PLATFORMS'] = 'cpu'
    flag = f'--xla_force_host_platform_device_count={math.prod(sizes.values())}'
    os.environ['XLA_FLAGS'] = re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                                     os.environ.get('XLA_FLAGS', '')) + ' ' + flag
  import jax
  from diffdis_jax.parallel import footprint
  from diffdis_jax.modes.run import build_trainer

  config = _CONFIG.value
  if config is None:
    raise SystemExit('--config is required, e.g. --config=configs/sddit_xl.py')
  with config.unlocked():
    config.mesh.update(sizes)
    if _TINY.value and config.method == 'sddit':
      tiny.shrink_dit(config)
  # no modes.check_run: the data need not exist to size the step (shapes come from the model)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = build_trainer(config, workdir)
    if _FAST.value and jax.devices()[0].platform == 'cpu':
      trainer.compiler_options = {'xla_backend_optimization_level': 0}
    mesh_lib.check_divisible(trainer.abstract_state, trainer.state_shardings)
    t0 = time.perf_counter()
    compiled = trainer.compile_step() if _COMPILE.value else None
    compile_s = time.perf_counter() - t0

  state, shardings = trainer.abstract_state, trainer.state_shardings
  part = lambda name: getattr(state, name)
  per_device = lambda name: footprint.abstract_bytes_per_device(part(name), getattr(shardings,
                                                                                    name))
  result = {
      'config': os.path.relpath(flags.FLAGS['config'].config_filename),
      'model': config.model.name, 'method': config.method,
      'mesh': dict(trainer.mesh.shape), 'platform': jax.devices()[0].platform,
      'devices': jax.device_count(), 'global_batch': config.batch_size,
      'compute_dtype': config.compute_dtype, 'remat': config.model.remat,
      'param_count': sum(math.prod(x.shape) for x in jax.tree.leaves(part('params'))),
      'total_param_bytes': footprint.total_bytes(part('params')),
      'param_bytes_per_device': per_device('params'),
      'total_opt_bytes': footprint.total_bytes(part('opt_state')),
      'opt_bytes_per_device': per_device('opt_state'),
      'ema_bytes_per_device': per_device('ema_params'),
      'aux_bytes_per_device': per_device('aux'),
      'total_state_bytes': footprint.total_bytes(state),
      'state_bytes_per_device': footprint.abstract_bytes_per_device(state, shardings),
  }
  if compiled is None:
    print(json.dumps(result))
    return
  result['compile_seconds'] = round(compile_s, 1)
  stats = costs.compiled_stats(compiled)
  if 'compiled_memory' in stats:
    result['compiled_memory_per_device'] = stats['compiled_memory']
    result['peak_bytes_per_device_estimate'] = stats['peak_bytes_estimate']
  result['collectives'] = footprint.collective_bytes(compiled.as_text())
  if 'xla_flops' in stats:
    result['flops_per_device'] = stats['xla_flops']
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
