"""A workdir whose checkpoint another config wrote (another model size, another method, the
DiT baseline of SD-DiT) gets one line naming the fields that differ, exit status 2, and
nothing in it changes. Without run_identity.json (removed, or from an older version), the
checkpoint's own parameter shapes are compared: another model's checkpoint is refused by
name, never taken for a broken one and set aside.
"""
import os

from conftest import tiny_sddit_config
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.train.checkpoint import Checkpointer
from diffdis_jax.train.workdir import write_identity
from forked_main import run_forked
from test_multiprocess import _flags

CONFIG = {'total_steps': 6, 'sample_every': 1000}


def _snapshot(folder):
  out = {}
  for d, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(d, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def test_checkpoint_of_another_config_is_refused_by_field(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_sddit_config(**CONFIG)
  trainer = build_trainer(config, workdir)
  os.makedirs(workdir)
  write_identity(config, trainer.objective, workdir)
  checkpointer = Checkpointer(workdir)
  checkpointer.save(2, trainer.init_state(), trainer.data_iterator())
  checkpointer.close()
  before = _snapshot(workdir)

  def args(**overrides):
    return ['--config=configs/demo.py', f'--workdir={workdir}',
            *_flags(tiny_sddit_config(**CONFIG, **overrides))]

  cases = [  # (arguments, words the line must hold)
      (args(**{'model.width': 64}), ['model.width: 32 in the workdir, 64 here']),
      (args(**{'model.depth': 3}), ['model.depth: 2 in the workdir, 3 here']),
      (args(**{'sddit.dis_weight': 0.0}), ['teacher: True in the workdir, False here']),
      (['--config=configs/demo_diffdis.py', f'--workdir={workdir}'],
       ["method: 'sddit' in the workdir, 'diffdis' here"]),
      (args(**{'model.width': 64}) + ['--mode=grid'], ['model.width']),
  ]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  results = run_forked([a for a, _ in cases], tmp_path, env)
  for (argv, words), result in zip(cases, results):
    lines = result['stderr'].strip().splitlines()
    assert result['returncode'] == 2 and len(lines) == 1, (argv, result['stderr'][-2000:])
    assert lines[0].startswith(f'error: workdir {workdir} holds a run with different')
    for w in words:
      assert w in lines[0], (w, lines[0])
  assert _snapshot(workdir) == before

  # without its identity file, the checkpoint's parameter shapes speak
  os.remove(os.path.join(workdir, 'run_identity.json'))
  before = _snapshot(workdir)
  [result] = run_forked([args(**{'model.width': 64})], tmp_path, env)
  lines = [l for l in result['stderr'].strip().splitlines() if l.startswith('error:')]
  assert result['returncode'] == 2 and lines, result['stderr'][-3000:]
  assert 'Traceback' not in result['stderr']
  line = lines[-1]
  assert f'checkpoint step 2 in {workdir}/checkpoints was written for another model' in line
  assert 'there, (64,) here' in line or ', 64) here' in line, line
  assert _snapshot(workdir) == before  # not set aside, no identity written
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_corrupt'))
