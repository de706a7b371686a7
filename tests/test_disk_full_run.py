"""`launch/main.py` on a disk that fills during a checkpoint: one line, exit status 1, no
traceback, no unfinished checkpoint left; after space is freed the same command resumes and
ends with the parameters of a run that never stopped.

The workdir is a real 1600 KiB tmpfs (tests/small_disk.py): the step-4 checkpoint of the tiny
model (about 1 MiB) fits, the step-8 one does not, and orbax's threads meet the full disk.
"""
import os
import re
import signal

from diffdis_jax.train.metrics_log import read_metrics
from small_disk import resize, small_disk
from test_resume import RUN_TIMEOUT_S, _start, _tail

TOTAL = 12
STEPS = {'total_steps': TOTAL, 'checkpoint_every': 4}


def _run(workdir, log, cache):
  proc, handle = _start(workdir, log, cache, **STEPS)
  try:
    return proc.wait(timeout=RUN_TIMEOUT_S)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    handle.close()


def test_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes(tmp_path):
  cache = str(tmp_path / 'xla_cache')
  ref = str(tmp_path / 'reference')
  ref_proc, ref_log = _start(ref, str(tmp_path / 'reference.log'), cache, **STEPS)
  try:
    with small_disk(tmp_path / 'disk', '1600k') as disk:
      workdir = os.path.join(disk, 'run')
      log = str(tmp_path / 'full.log')
      assert _run(workdir, log, cache) == 1, _tail(log)
      with open(log) as f:
        output = f.read()
      lines = output.strip().splitlines()
      errors = [line for line in lines if line.startswith('error:')]
      assert errors == [lines[-1]], _tail(log)
      assert 'Traceback' not in output and 'Exception ignored' not in output, _tail(log, 60)
      assert not [line for line in lines if re.match(r'E\d{4} ', line)], _tail(log, 60)
      step8, step4 = (os.path.join(workdir, 'checkpoints', s) for s in ('8', '4'))
      assert f'could not write checkpoint step 8 to {step8}' in errors[0], errors[0]
      assert 'needs about' in errors[0] and 'free there now' in errors[0]
      assert f'it resumes from checkpoint step 4 ({step4})' in errors[0], errors[0]
      # orbax's unfinished folder is gone: the space it took is free for the rerun
      assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['4']

      resize(disk, '8m')  # space freed
      log = str(tmp_path / 'rerun.log')
      assert _run(workdir, log, cache) == 0, _tail(log)
      assert 'training from step 4 to 12' in open(log).read()
      got = read_metrics(workdir)
    assert ref_proc.wait(timeout=RUN_TIMEOUT_S) == 0, _tail(str(tmp_path / 'reference.log'))
  finally:
    if ref_proc.poll() is None:
      os.killpg(ref_proc.pid, signal.SIGKILL)
      ref_proc.wait()
    ref_log.close()
  want = read_metrics(ref)
  prints = lambda records: {r['step']: r['params_fingerprint'] for r in records
                            if 'params_fingerprint' in r}
  assert prints(got) == prints(want)  # steps 4, 8 and 12, the same bits
  losses = lambda records: [(r['step'], r['loss']) for r in records if 'loss' in r]
  assert losses(got) == losses(want)

