"""SIGKILL and SIGTERM at several points of an async checkpoint save never leave a checkpoint
that restore takes for complete: the next start restores the newest complete save (its
parameters hashing to the fingerprint logged for it) and removes what the killed save left.

tests/save_child.py saves step 1 of a 128 MiB state and waits for it, then saves step 2; the
test signals it at one point of that second save, seen from the outside:
  - `2.orbax-checkpoint-tmp*` has just appeared (the save has begun);
  - its array data is being written (tensorstore's files under ocdbt.process_0/d/);
  - the `state` item inside it is finalized, the step not yet;
  - `2/` has just appeared (orbax's final rename happened).
A point can pass between two looks; the test then records the next one it saw. What must hold
at every point: the restore returns exactly step 2's state if `2/` existed when the process
died, else exactly step 1's; nothing is set aside as corrupt; no temporary folder remains.
"""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from conftest import ROOT
from diffdis_jax.train import checkpoint as ckpt_lib
from save_child import ARRAYS, SIZE, State, state_at

TIMEOUT_S = 300


def _step2_stage(workdir):
  """How far the step-2 save has come, read from its folders: 0 not begun, 1 begun, 2 data
  being written, 3 its state item finalized, 4 the step finalized."""
  folder = os.path.join(workdir, 'checkpoints')
  names = os.listdir(folder) if os.path.isdir(folder) else []
  if '2' in names:
    return 4
  tmp = [n for n in names if n.startswith('2.orbax-checkpoint-tmp')]
  if not tmp:
    return 0
  inside = os.path.join(folder, tmp[0])
  try:
    items = os.listdir(inside)
    if 'state' in items:
      return 3
    state_tmp = [n for n in items if n.startswith('state.orbax-checkpoint-tmp')]
    data = os.path.join(inside, state_tmp[0], 'ocdbt.process_0', 'd') if state_tmp else None
    if data and os.path.isdir(data) and os.listdir(data):
      return 2
  except FileNotFoundError:  # a folder renamed between two looks: look again from the top
    return _step2_stage(workdir)
  return 1


def _kill_at(workdir, log, stage, sig):
  """Runs save_child.py and sends `sig` once the step-2 save reached `stage`; returns the
  stage seen just before the signal."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  with open(log, 'w') as out:
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'save_child.py'),
                             workdir], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + TIMEOUT_S
      while (seen := _step2_stage(workdir)) < stage:
        assert proc.poll() is None and time.monotonic() < deadline, open(log).read()[-3000:]
        time.sleep(0.002)
      proc.send_signal(sig)
      proc.wait(timeout=TIMEOUT_S)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return seen


def test_kill_at_several_points_of_an_async_save(tmp_path):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = State(params={f'w{i}': jax.ShapeDtypeStruct((SIZE,), np.float32, sharding=sharding)
                         for i in range(ARRAYS)})
  seen = []
  points = [(1, signal.SIGKILL), (2, signal.SIGKILL), (3, signal.SIGKILL), (4, signal.SIGKILL),
            (2, signal.SIGTERM)]
  for k, (stage, sig) in enumerate(points):
    workdir = str(tmp_path / f'run{k}')
    at = _kill_at(workdir, str(tmp_path / f'run{k}.log'), stage, sig)
    complete = ckpt_lib.complete_steps(workdir)
    seen.append((stage, sig.name, at, complete))
    assert complete in ([1], [1, 2]), seen
    checkpointer = ckpt_lib.Checkpointer(workdir)
    restored = checkpointer.restore_latest(target)
    checkpointer.close()
    want = state_at(complete[-1])
    for name, value in want.params.items():
      np.testing.assert_array_equal(np.asarray(restored.params[name]), value, err_msg=str(seen))
    # the killed save's temporary folder is gone (orbax's clean-up at the start)
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [str(s) for s in complete]
    assert not os.path.exists(os.path.join(workdir, 'checkpoints_corrupt')), seen
  # the points were reached in order: the early ones before step 2 was complete
  print('stage asked, signal, stage seen, complete steps:', seen)
  assert [c for stage, _, _, c in seen if stage <= 2] == [[1], [1], [1]], seen
  assert seen[3][3] == [1, 2], seen
