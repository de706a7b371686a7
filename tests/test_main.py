"""launch/main.py answers bad input with one line and exit status 2, writing nothing."""
import concurrent.futures
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = '--config=configs/demo.py'

# (arguments, words the one line must contain)
BAD_INPUTS = [
    (['--config=configs/nope.py'], 'not found'),
    ([], '--config is required'),
    ([DEMO, '--config.nope=1'], "no field 'nope'"),
    ([DEMO, '--config.model.nope=1'], "no field 'nope'"),
    ([DEMO, '--config.total_steps=abc'], 'total_steps'),
    ([DEMO, '--config.total_steps=0'], 'total_steps must be a positive integer'),
    ([DEMO, '--config.total_steps=-5'], 'total_steps must be a positive integer'),
    ([DEMO, '--config.batch_size=0'], 'batch_size must be a positive integer'),
    ([DEMO, '--config.batch_size=12'], 'not divisible by the data-parallel size 8'),
    ([DEMO, '--config.mesh.data=16'], 'devices are available'),
    ([DEMO, '--config.method=nope'], 'method'),
    ([DEMO, '--config.model.name=DiT-Q/3'], 'unknown model name'),
    ([DEMO, '--config.sddit.teacher_sigma=nope'], 'sddit.teacher_sigma'),
    ([DEMO, '--config.sddit.mask_ratio=1.0'], 'mask_ratio'),
    (['--config=configs/sddit_xl.py'], 'dataset imagenet256_latents not found'),
    (['--config=configs/dit_xl.py', '--config.data.dir=/does/not/exist'], 'not found'),
    ([DEMO, '--mode=nope'], 'mode'),
]


def _run(args, workdir):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  argv = [sys.executable, 'launch/main.py', *args]
  if workdir:
    argv.append(f'--workdir={workdir}')
  return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_bad_inputs_get_one_line_and_nothing_is_written(tmp_path):
  workdirs = []
  for i in range(len(BAD_INPUTS)):
    w = tmp_path / f'w{i}'
    w.mkdir()
    (w / 'keep.txt').write_text('precious')
    workdirs.append(w)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(lambda a: _run(a[0][0], str(a[1])), zip(BAD_INPUTS, workdirs)))
  for (args, words), w, r in zip(BAD_INPUTS, workdirs, results):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode != 0, (args, r.stderr)
    assert len(lines) == 1 and lines[0].startswith(('error:', 'FATAL')), (args, r.stderr)
    assert words in lines[0], (args, lines[0])
    assert sorted(os.listdir(w)) == ['keep.txt'] and (w / 'keep.txt').read_text() == 'precious'


def test_missing_workdir_flag(tmp_path):
  r = _run([DEMO], None)
  assert r.returncode == 2 and r.stderr.strip() == 'error: --workdir is required, e.g. --workdir=/tmp/demo'
