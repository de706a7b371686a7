"""The import contract of .importlinter (docs/architecture.md): the repository keeps it, and it
is not vacuous: an upward import, even one written inside a function, breaks it."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

LINT = os.path.join(os.path.dirname(sys.executable), 'lint-imports')


def _lint(root):
  env = dict(os.environ, PYTHONPATH=str(root))
  return subprocess.run([LINT, '--config', os.path.join(str(root), '.importlinter')],
                        cwd=str(root), env=env, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_import_contracts():
  result = _lint(ROOT)
  assert result.returncode == 0, result.stdout[-3000:]
  assert '0 broken' in result.stdout


@pytest.mark.parametrize('module,line,contract', [
    # data must not reach a model, and a lower layer must not reach a higher one
    ('data/digits.py', 'from diffdis_jax.nn import layers', 'data/ reads and batches'),
    # imports inside functions count: a cycle hidden there is still a cycle
    ('train/state.py', 'def f():\n  from diffdis_jax.train import loop', 'No import cycle'),
    ('eval/zeroshot.py', 'def f():\n  from diffdis_jax.tasks import make_task', 'Layers'),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, line, contract):
  shutil.copytree(os.path.join(ROOT, 'diffdis_jax'), tmp_path / 'diffdis_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  shutil.copy(os.path.join(ROOT, '.importlinter'), tmp_path / '.importlinter')
  with open(tmp_path / 'diffdis_jax' / module, 'a') as f:
    f.write(f'\n\n{line}\n')
  result = _lint(tmp_path)
  assert result.returncode != 0, result.stdout[-3000:]
  broken = [l for l in result.stdout.splitlines() if l.endswith('BROKEN')]
  assert any(l.startswith(contract) for l in broken), result.stdout[-3000:]
