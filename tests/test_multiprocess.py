"""Two processes on localhost (jax.distributed, 4 virtual CPU devices each) train as one.

Both run `launch/main.py` on one 8-device mesh (collectives across the processes go through
gloo, jax's CPU default); each process loads only its half of every global batch. The run must
match a single process on 8 devices with the same global batch: the same losses and, from the
checkpoints, the same state. Bitwise equality is not expected after the first update: the
cross-process all-reduce sums in another order than the in-process one.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from conftest import FAST_COMPILE, ROOT, tiny_sddit_config
from diffdis_jax.train import checkpoint as ckpt_lib
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.train.metrics_log import read_metrics

STEPS = 3
TIMEOUT_S = 540  # compiles of two processes and of this one share 2 cores
# the DiT baseline of the tiny config: the cheapest step to compile; what is tested here is the
# multi-host plumbing (init, per-host input, global arrays, checkpoints, logs), and the teacher's
# sharding is covered by test_sharding.py
OVERRIDES = {
    'sddit.dis_weight': 0.0, 'sddit.mask_ratio': 0.0, 'model.decoder_mode': 'split',
    'model.decoder_depth': 1, 'optim.warmup_steps': 0, 'total_steps': STEPS, 'log_every': 1,
    'checkpoint_every': 1, 'sample_every': 1000, 'eval.metric_samples': 0, 'sample.steps': 1,
}


def _flags(config) -> list[str]:
  """--config.FIELD=VALUE for every field of the tiny config that differs from configs/demo.py."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  base, out = demo.get_config(), []

  def walk(node, ref, prefix):
    for key, value in node.items():
      if hasattr(value, 'items'):
        walk(value, ref[key], f'{prefix}{key}.')
      elif value != ref[key]:
        out.append(f'--config.{prefix}{key}={value}')
  walk(config, base, '')
  return out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(args, log_path, env):
  # a session of its own, so that a hung child and anything it spawned can be killed together
  log = open(log_path, 'w')
  return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                          start_new_session=True), log


def _stop(procs):
  for proc, _ in procs:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  for proc, log in procs:
    proc.wait()
    log.close()


def _tail(path, lines=30):
  with open(path) as f:
    return ''.join(f.readlines()[-lines:])


def test_two_processes_match_one(tmp_path):
  config = tiny_sddit_config(**OVERRIDES)
  multi, single = str(tmp_path / 'multi'), str(tmp_path / 'single')
  # LLVM at -O0 halves CPU compile times; the single-process run below compiles the same way
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4 '
                       '--xla_backend_optimization_level=0')
  address = f'127.0.0.1:{_free_port()}'
  args = [sys.executable, os.path.join(ROOT, 'launch', 'main.py'),
          '--config=' + os.path.join(ROOT, 'configs', 'demo.py'), *_flags(config),
          f'--workdir={multi}', f'--coordinator_address={address}', '--num_processes=2']
  logs = [str(tmp_path / f'process_{i}.log') for i in range(2)]
  procs = [_start(args + [f'--process_id={i}'], logs[i], env) for i in range(2)]
  try:
    # the single-process run (this process: 8 devices) compiles while the children do
    trainer = build_trainer(config, single)
    trainer.compiler_options = FAST_COMPILE
    expected = trainer.train()
    # a process that fails leaves the other waiting in a collective: stop at the first failure
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p, _ in procs) and time.monotonic() < deadline:
      for (proc, _), log in zip(procs, logs):
        assert proc.poll() in (None, 0), (
            f'process exited with {proc.returncode}; its log ends:\n{_tail(log)}')
      time.sleep(0.5)
    for (proc, _), log in zip(procs, logs):
      assert proc.poll() is not None, f'process timed out; its log ends:\n{_tail(log)}'
      assert proc.returncode == 0, f'process exited with {proc.returncode}:\n{_tail(log)}'
  finally:
    _stop(procs)

  # (each process gives make_array_from_process_local_data its 4 rows of the 8: a process
  # that loaded the whole batch would fail there, so a matching run also checks the input split)
  records = read_metrics(multi)
  fingerprints = [r['step'] for r in records if 'params_fingerprint' in r]
  assert fingerprints == list(range(1, STEPS + 1))  # written once per checkpoint, by process 0
  losses = lambda w: {r['step']: r['loss'] for r in read_metrics(w) if 'loss' in r}
  got, want = losses(multi), losses(single)
  assert sorted(got) == list(range(1, STEPS + 1))
  for step in want:
    assert abs(got[step] - want[step]) <= 1e-5 * max(1.0, abs(want[step])), (step, got, want)

  # the state the two processes saved, read back by this one process (whose own iterator
  # file, process_0-of-1, is not there: the position comes from the 2-process files), is the
  # single-process state, and the input continues where the single run's did
  trainer = build_trainer(config, multi)
  target = ckpt_lib.abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
  checkpointer = ckpt_lib.Checkpointer(multi)
  iterator_files = [f for f in os.listdir(os.path.join(multi, 'checkpoints', str(STEPS - 1),
                                                       'data')) if f.startswith('process_')]
  assert sorted(iterator_files) == ['process_0-of-2.json', 'process_1-of-2.json']
  resumed_input = trainer.data_iterator()
  checkpointer.restore(STEPS - 1, target, resumed_input)
  fresh_input = trainer.data_iterator()
  for _ in range(STEPS - 1):
    next(fresh_input)
  jax.tree.map(np.testing.assert_array_equal, next(resumed_input), next(fresh_input))
  restored = checkpointer.restore(STEPS, target, trainer.data_iterator())
  checkpointer.close()
  pairs = zip(jax.tree_util.tree_flatten_with_path(jax.device_get(restored))[0],
              jax.tree.leaves(jax.device_get(expected)))
  for (path, a), b in pairs:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  assert os.path.exists(os.path.join(multi, 'samples', f'step_{STEPS:08d}.png'))
