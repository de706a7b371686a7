"""Runs a launcher once per argument list, each in its own process forked from this one.

  python tests/forked_main.py CASES.json RESULTS.json [SCRIPT]

SCRIPT is launch/main.py (the default) or launch/study.py, relative to the repository root.
CASES.json is a list of argument lists; RESULTS.json gets one {"returncode", "stderr"} per
case, in order. This process imports what the launchers need before they answer bad input
(jax, absl, the config checks, the study planner) and then forks a child per case that runs
SCRIPT as `__main__` with its arguments: each case is still a fresh process with its own
flags, devices and exit status, without paying Python's and jax's start-up again (about 3 s
of 3.3 per case on a 2-core CPU). jax's backend is never started here, so no child inherits
its threads.
"""
import json
import os
import runpy
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = 'launch/main.py'
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,unused-import
import jax  # noqa: E402,F401
from absl import app, flags, logging  # noqa: E402,F401
from ml_collections import config_flags  # noqa: E402,F401

from diffdis_jax.core import checks  # noqa: E402,F401
from diffdis_jax.modes import checks as mode_checks  # noqa: E402,F401
from diffdis_jax.parallel import distributed  # noqa: E402,F401
from diffdis_jax.study import plan  # noqa: E402,F401


def _child(script, args, stderr_path):
  """In the forked child: `script` with `args`; never returns."""
  code = 1
  try:
    with open(stderr_path, 'w') as err, open(os.devnull, 'w') as out:
      os.dup2(err.fileno(), 2)
      os.dup2(out.fileno(), 1)
    sys.argv = [script, *args]
    os.chdir(ROOT)
    try:
      runpy.run_path(script, run_name='__main__')
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def run_cases(cases, script=MAIN):
  script = os.path.join(ROOT, script)
  results = []
  with tempfile.TemporaryDirectory() as scratch:
    for i, args in enumerate(cases):
      stderr_path = os.path.join(scratch, f'{i}.stderr')
      pid = os.fork()
      if pid == 0:
        _child(script, args, stderr_path)
      _, status = os.waitpid(pid, 0)
      with open(stderr_path) as f:
        results.append({'returncode': os.waitstatus_to_exitcode(status), 'stderr': f.read()})
  return results


def run_forked(argvs, scratch, env, script=MAIN):
  """From a test: `script` once per argument list in `argvs`, each in a child of one fresh
  `python tests/forked_main.py` started with `env`; [{"returncode", "stderr"}] in order.
  `scratch`: a folder (pathlib) for the case and result files."""
  cases, results = scratch / 'cases.json', scratch / 'results.json'
  cases.write_text(json.dumps(argvs))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(cases), str(results),
                         script], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(results.read_text())


if __name__ == '__main__':
  with open(sys.argv[1]) as f:
    all_cases = json.load(f)
  with open(sys.argv[2], 'w') as f:
    json.dump(run_cases(all_cases, *sys.argv[3:]), f)
