"""Exact resume: `launch/main.py` killed at many points and restarted ends where an
uninterrupted run ends (same params_fingerprint, same losses), every step logged once.

One uninterrupted reference run, and one chain of runs in one workdir, each stopped at a
different point: five SIGKILLs (during start-up and compile, between checkpoints, while an
async save is in flight, right after a save completed, during the restore) and one SIGTERM (preemption:
the run must save its current step and exit 0), then a run to the end. The model is the tiny
DiT baseline of the demo config on one CPU device; a persistent compilation cache shared by the
runs keeps the restarts to import + restore time.
"""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, tiny_sddit_config
from test_multiprocess import _flags as config_flags
from diffdis_jax.train.metrics_log import read_metrics

TOTAL = 24
# the DiT baseline of the tiny test config: the cheapest step to compile
OVERRIDES = {
    'sddit.dis_weight': 0.0, 'sddit.mask_ratio': 0.0, 'model.decoder_mode': 'split',
    'optim.warmup_steps': 0, 'total_steps': TOTAL, 'log_every': 1, 'checkpoint_every': 2,
    'keep_checkpoints': 3, 'sample_every': 1000, 'sample.steps': 1,
}
RUN_TIMEOUT_S = 400  # one run, on 2 shared cores


def _env(cache_dir):
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS='--xla_force_host_platform_device_count=1 '
                        '--xla_backend_optimization_level=0',
              JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _start(workdir, log_path, cache_dir, **overrides):
  """launch/main.py on the tiny config (OVERRIDES, then `overrides`), output to `log_path`."""
  config = tiny_sddit_config(**{**OVERRIDES, **overrides})
  args = [sys.executable, os.path.join(ROOT, 'launch', 'main.py'), '--config=configs/demo.py',
          f'--workdir={workdir}', *config_flags(config)]
  log = open(log_path, 'w')
  proc = subprocess.Popen(args, cwd=ROOT, env=_env(cache_dir), stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
  return proc, log


def _tail(path, lines=25):
  with open(path) as f:
    return ''.join(f.readlines()[-lines:])


def _records(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except ValueError:
        pass  # the line being written
  return out


def _last_loss_step(workdir):
  return max([r['step'] for r in _records(workdir) if 'loss' in r], default=0)


def _saving(workdir, min_step):
  """An async save of a step >= min_step is in flight (orbax's temporary directory)."""
  folder = os.path.join(workdir, 'checkpoints')
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return any('tmp' in n and int(n.split('.')[0]) >= min_step for n in names)


def _log_says(log_path, words):
  with open(log_path) as f:
    return words in f.read()


def _run_until(workdir, log_path, cache_dir, when, sig):
  """Start a run, send `sig` as soon as `when()` holds; returns (exit status, seconds from the
  signal to the exit)."""
  proc, log = _start(workdir, log_path, cache_dir)
  try:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not when():
      assert proc.poll() is None, f'run ended before its kill point:\n{_tail(log_path)}'
      assert time.monotonic() < deadline, f'kill point not reached:\n{_tail(log_path)}'
      time.sleep(0.01)
    sent = time.monotonic()
    if sig == signal.SIGKILL:
      os.killpg(proc.pid, sig)  # the process and anything it started
    else:
      proc.send_signal(sig)
    status = proc.wait(timeout=RUN_TIMEOUT_S)
    return status, time.monotonic() - sent
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    log.close()


def _checkpoint_steps(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(n) for n in names if n.isdigit())  # finalized saves


def test_kill_and_resume_cycles_match_an_uninterrupted_run(tmp_path):
  cache = str(tmp_path / 'xla_cache')
  ref, chain = str(tmp_path / 'reference'), str(tmp_path / 'chain')
  ref_proc, ref_log = _start(ref, str(tmp_path / 'reference.log'), cache)
  try:
    logs = iter(str(tmp_path / f'chain_{i}.log') for i in range(10))
    identity = os.path.join(chain, 'run_identity.json')

    # 1: SIGKILL during start-up / restore / compile (nothing trained yet)
    status, _ = _run_until(chain, next(logs), cache, lambda: os.path.exists(identity),
                           signal.SIGKILL)
    assert status == -signal.SIGKILL and _last_loss_step(chain) == 0
    # 2: SIGKILL between checkpoints (every 2 steps): step 5 is logged, 4 is the newest save
    status, _ = _run_until(chain, next(logs), cache, lambda: _last_loss_step(chain) >= 5,
                           signal.SIGKILL)
    assert status == -signal.SIGKILL
    # 3: SIGKILL while an async save is in flight
    status, _ = _run_until(
        chain, next(logs), cache,
        lambda: _saving(chain, 8) or _last_loss_step(chain) >= 12, signal.SIGKILL)
    assert status == -signal.SIGKILL
    # 4: SIGTERM (preemption) at an odd step: the run saves that step and exits 0
    log = next(logs)
    status, seconds = _run_until(chain, log, cache, lambda: _last_loss_step(chain) >= 13,
                                 signal.SIGTERM)
    assert status == 0, _tail(log)
    assert seconds < 60, seconds
    stopped = _last_loss_step(chain)
    assert _checkpoint_steps(chain)[-1] == stopped, (_checkpoint_steps(chain), stopped)
    assert stopped < TOTAL and _log_says(log, f'stopped at step {stopped}')
    # 5: SIGKILL right after a save completed
    log = next(logs)
    saved = stopped + 2 + stopped % 2
    status, _ = _run_until(chain, log, cache, lambda: saved in _checkpoint_steps(chain),
                           signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert _log_says(log, f'training from step {stopped} to {TOTAL}')  # continued there
    # 6: SIGKILL during the restore
    log = next(logs)
    status, _ = _run_until(chain, log, cache, lambda: _log_says(log, 'restoring step'),
                           signal.SIGKILL)
    assert status == -signal.SIGKILL
    # and a run to the end
    log = next(logs)
    proc, handle = _start(chain, log, cache)
    assert proc.wait(timeout=RUN_TIMEOUT_S) == 0, _tail(log)
    handle.close()
    assert ref_proc.wait(timeout=RUN_TIMEOUT_S) == 0, _tail(str(tmp_path / 'reference.log'))
  finally:
    if ref_proc.poll() is None:
      os.killpg(ref_proc.pid, signal.SIGKILL)
      ref_proc.wait()
    ref_log.close()

  got, want = read_metrics(chain), read_metrics(ref)
  losses = lambda records: [(r['step'], r['loss']) for r in records if 'loss' in r]
  assert [s for s, _ in losses(got)] == list(range(1, TOTAL + 1))  # none missing, none twice
  assert losses(got) == losses(want)  # bit-identical losses
  prints = lambda records: [(r['step'], r['params_fingerprint']) for r in records
                            if 'params_fingerprint' in r]
  got_prints, want_prints = dict(prints(got)), dict(prints(want))
  assert len(got_prints) == len(prints(got))  # each checkpoint's fingerprint once
  assert got_prints[TOTAL] == want_prints[TOTAL]
  for step, value in got_prints.items():  # and every state saved on the way
    assert want_prints.get(step, value) == value, step
