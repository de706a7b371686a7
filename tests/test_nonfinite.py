"""A non-finite loss: nonfinite=stop names the step and saves nothing of it; nonfinite=skip
counts the skipped updates and saves a finite state.

lr=1e30 makes step 1's update finite but huge (Adam's first step is about lr per weight), so
the forward pass of step 2 overflows: NaN from step 2 on. One compiled step (one device, the
DiT baseline of the tiny config) serves both runs.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT, tiny_sddit_config
from test_multiprocess import _flags as config_flags
from diffdis_jax.train import checkpoint as ckpt_lib
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.train.metrics_log import read_metrics

OVERRIDES = {
    'sddit.dis_weight': 0.0, 'sddit.mask_ratio': 0.0, 'model.decoder_mode': 'split',
    'model.decoder_depth': 1, 'optim.warmup_steps': 0, 'optim.lr': 1e30, 'total_steps': 10,
    'log_every': 1, 'checkpoint_every': 1, 'sample_every': 1000, 'sample.steps': 1,
}


@pytest.fixture(scope='module')
def cli_run(tmp_path_factory):
  """launch/main.py with nonfinite=stop, started first so that it compiles beside this process."""
  workdir = tmp_path_factory.mktemp('cli')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1 '
                       '--xla_backend_optimization_level=0')
  args = [sys.executable, 'launch/main.py', '--config=configs/demo.py', f'--workdir={workdir}',
          *config_flags(tiny_sddit_config(nonfinite='stop', **OVERRIDES))]
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  yield proc, str(workdir)
  if proc.poll() is None:
    proc.kill()
    proc.wait()


@pytest.fixture(scope='module')
def compiled_step(cli_run):
  del cli_run  # started before this compile
  trainer = build_trainer(tiny_sddit_config(**OVERRIDES), '/nonexistent', jax.devices()[:1])
  trainer.compiler_options = FAST_COMPILE
  return trainer.compile_step(), trainer.compile_seconds


def _trainer(workdir, compiled_step, nonfinite):
  trainer = build_trainer(tiny_sddit_config(nonfinite=nonfinite, **OVERRIDES), str(workdir),
                         jax.devices()[:1])
  trainer.compile_step = lambda phase=0: compiled_step[0]
  trainer.compile_seconds = compiled_step[1]
  return trainer


def _finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(tree))
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_stop_names_the_step_and_saves_nothing_of_it(tmp_path, compiled_step):
  with pytest.raises(FloatingPointError, match='at step 2;'):
    _trainer(tmp_path, compiled_step, 'stop').train()
  assert ckpt_lib.Checkpointer(str(tmp_path)).all_steps() == [1]
  assert max(r['step'] for r in read_metrics(str(tmp_path))) == 1


def test_skip_counts_and_saves_a_finite_state(tmp_path, compiled_step):
  trainer = _trainer(tmp_path, compiled_step, 'skip')
  state = trainer.train(stop_at=3)
  assert int(state.step) == 3 and int(state.skipped_steps) == 2
  assert _finite(state)
  records = {r['step']: r for r in read_metrics(str(tmp_path)) if 'loss' in r}
  assert [records[s]['finite'] for s in (1, 2, 3)] == [1, 0, 0]
  assert records[3]['skipped_steps'] == 2
  # what was saved at step 3 is that finite state
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  restored = trainer.restore_or_init(checkpointer, trainer.data_iterator())
  checkpointer.close()
  assert int(restored.skipped_steps) == 2 and _finite(restored)
  assert ckpt_lib.params_fingerprint(restored.params) == ckpt_lib.params_fingerprint(
      state.params)


def test_launcher_exits_non_zero_with_one_line_naming_the_step(cli_run):
  proc, workdir = cli_run
  _, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 1, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith('error: non-finite loss or gradients at step 2;'), last
  assert ckpt_lib.Checkpointer(workdir).all_steps() == [1]
