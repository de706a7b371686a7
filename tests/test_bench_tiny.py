"""Every bench script runs end to end in its tiny mode (bench/tiny.py) and prints JSON lines,
so that a bench broken by a change elsewhere fails here, not on the next person to run it.

The argparse scripts run in this process, as `python bench/X.py` would run them (runpy,
sys.argv): the imports are shared, and each costs its tiny compiles only. The absl scripts
define flags in absl's global registry (export.py and memory.py both define --mesh) and set
XLA_FLAGS before jax starts, as profile_step.py needs XLA:CPU's per-op events: those run as
`python` processes.
"""
import glob
import json
import os
import runpy
import subprocess
import sys

import pytest

from conftest import ROOT
from test_fashion_mnist import write_idx

BENCH = os.path.join(ROOT, 'bench')
sys.path.insert(0, BENCH)

# script -> (arguments beside --tiny, a field one of its JSON lines must have)
IN_PROCESS = {
    'conv.py': (['--vs-torch'], 'auto_vs_torch'),
    'flops.py': ([], 'ratio_vs_dit'),
    'forward.py': (['--vs-torch'], 'max_abs_diff'),
    'input_pipeline.py': ([], 'extract_images_per_s'),
    'profile_compile.py': ([], 'seconds'),
    'train_step.py': (['--method=dit', '--vs-torch'], 'ratio_vs_torch'),
    'fmnist_floors.py': (['--data_dir={fmnist}'], 'fd_fmnist'),
}
FORKED = {
    'export.py': ([], 'stablehlo_chars'),
    'memory.py': ([], 'peak_bytes_per_device_estimate'),
    'profile_step.py': ([], 'op_seconds_per_step'),
}


def _json_lines(text: str) -> list:
  lines = [line for line in text.splitlines() if line.strip()]
  assert lines, 'no output'
  return [json.loads(line) for line in lines]


@pytest.fixture(scope='module')
def fmnist(tmp_path_factory):
  """A Fashion-MNIST folder of 200 + 100 real images: the classifier fmnist_floors.py needs
  trains on it in seconds."""
  from diffdis_jax.data import fashion_mnist as fm  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp('fmnist_tiny')
  for split, n in (('train', 200), ('test', 100)):
    data = fm.load_split(fm.DEBIAN_DIR, split)
    image_file, label_file = fm.SPLITS[split]
    write_idx(folder / image_file, data['image'][:n], fm.IMAGES_MAGIC)
    write_idx(folder / label_file, data['label'][:n], fm.LABELS_MAGIC)
  return str(folder)


def test_every_script_has_a_tiny_run_here():
  scripts = {os.path.basename(p) for p in glob.glob(os.path.join(BENCH, '*.py'))
             if "__name__ == '__main__'" in open(p).read()}
  assert scripts == set(IN_PROCESS) | set(FORKED)


@pytest.mark.parametrize('script', sorted(IN_PROCESS))
def test_tiny_run_in_process(script, monkeypatch, capsys, request):
  args, field = IN_PROCESS[script]
  if '{fmnist}' in ' '.join(args):
    args = [a.format(fmnist=request.getfixturevalue('fmnist')) for a in args]
  monkeypatch.setattr(sys, 'argv', [os.path.join(BENCH, script), '--tiny', *args])
  monkeypatch.chdir(ROOT)  # config paths are relative to the checkout, as in the docs
  runpy.run_path(os.path.join(BENCH, script), run_name='__main__')
  records = _json_lines(capsys.readouterr().out)
  assert any(field in r for r in records), records


@pytest.mark.parametrize('script', sorted(FORKED))
def test_tiny_run_forked(script):
  args, field = FORKED[script]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_cpu_enable_xprof_traceme=true'}
  result = subprocess.run([sys.executable, os.path.join(BENCH, script), '--tiny', *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  records = _json_lines(result.stdout)
  assert any(field in r for r in records), records


@pytest.mark.parametrize('script', ['device_suite.sh', 'device_wheels.sh'])
def test_shell_scripts_parse(script):
  # they run on a lent GPU machine; test_device_suite.py runs device_suite.sh's dry run
  result = subprocess.run(['bash', '-n', os.path.join(BENCH, script)], capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stderr
