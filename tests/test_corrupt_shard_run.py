"""A latent shard cut short while `launch/main.py` reads it: the run stops with one line
naming the shard and the record (exit status 1, no traceback), and the checkpoints stay
intact: once the shard is restored, the newest one restores with the fingerprint logged when
it was saved. The model is test_resume's tiny one, on the latent set of test_corrupt_shard.
"""
import os
import re
import shutil
import signal
import time

from conftest import tiny_sddit_config
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.train.checkpoint import Checkpointer, complete_steps, logged_fingerprints
from test_corrupt_shard import RECORDS, _latent_set
from test_resume import OVERRIDES, RUN_TIMEOUT_S, _start, _tail


def test_shard_truncated_mid_run_is_one_line_and_the_checkpoint_intact(tmp_path):
  folder = str(tmp_path / 'latents')
  shards = _latent_set(folder)
  kept = str(tmp_path / 'shard1.copy')
  shutil.copyfile(shards[1], kept)
  steps = {'total_steps': 100, 'checkpoint_every': 10, 'data.name': 'latents',
           'data.dir': folder, 'model.in_channels': 4, 'data.latent_scale': 1.0}
  run, log = str(tmp_path / 'run'), str(tmp_path / 'run.log')
  proc, handle = _start(run, log, str(tmp_path / 'cache'), **steps)
  try:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not complete_steps(run):  # the run is reading: cut shard 1 short under it
      assert proc.poll() is None and time.monotonic() < deadline, _tail(log)
      time.sleep(0.01)
    os.truncate(shards[1], os.path.getsize(shards[1]) // 4)
    assert proc.wait(timeout=RUN_TIMEOUT_S) == 1, _tail(log)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    handle.close()
  with open(log) as f:
    output = f.read()
  lines = output.strip().splitlines()
  assert [line for line in lines if line.startswith('error:')] == [lines[-1]], _tail(log)
  assert 'Traceback' not in output, _tail(log, 60)
  found = re.search(rf'latent shard {re.escape(shards[1])} record (\d+) ', lines[-1])
  assert found and int(found.group(1)) < RECORDS, lines[-1]
  saved = complete_steps(run)
  assert saved and saved[-1] < 100, saved
  assert f'it resumes from checkpoint step {saved[-1]}' in lines[-1], lines[-1]

  # with the shard restored, the newest checkpoint restores, its parameters hashing to the
  # fingerprint the run logged when it saved them (else restore_latest would set it aside)
  shutil.copyfile(kept, shards[1])
  trainer = build_trainer(tiny_sddit_config(**{**OVERRIDES, **steps}), run)
  checkpointer = Checkpointer(run)
  state = checkpointer.restore_latest(trainer.abstract_target(), trainer.data_iterator())
  checkpointer.close()
  assert int(state.step) == saved[-1]
  assert saved[-1] in logged_fingerprints(run)
  assert not os.path.exists(os.path.join(run, 'checkpoints_corrupt'))
