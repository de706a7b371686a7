"""bench/device_suite.sh: the prepared GPU call. Its command lines must parse with the bench's
own flags, and a bad group name must stop it before anything runs or is written."""
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, 'bench', 'device_suite.sh')
sys.path.insert(0, os.path.join(ROOT, 'bench'))
import train_step  # noqa: E402  pylint: disable=wrong-import-position

GROUPS = ('dit', 'sddit', 'masks', 'remat', 'diffdis')


def _suite(*groups, tmp_path, **env):
  return subprocess.run(['bash', SUITE, *groups], capture_output=True, text=True, check=False,
                        env={**os.environ, 'OUT': str(tmp_path / 'out'), **env})


def test_every_command_line_parses_with_the_bench_flags(tmp_path):
  for smoke in ('0', '1'):
    result = _suite(*GROUPS, tmp_path=tmp_path, SUITE_DRY='1', SUITE_SMOKE=smoke)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 8  # dit, sddit, two masks, three remat policies, diffdis
    parser = train_step.argument_parser('suite')
    parsed = [parser.parse_args(shlex.split(line)[1:]) for line in lines]
    assert {a.method for a in parsed} == {'dit', 'sddit', 'diffdis'}
    assert sorted(a.mask_ratio for a in parsed if a.mask_ratio is not None) == [0.3, 0.5]
    remat = [a for a in parsed if a.method == 'dit' and a.batch > parsed[0].batch]
    assert sorted(a.remat for a in remat) == ['dots', 'full', 'none']
    if smoke == '0':  # the device measurements: bf16, DiT-XL/2, cuDNN for the DiTs
      assert all(a.dtype == 'bfloat16' for a in parsed)
      assert all(a.model == 'DiT-XL/2' and a.attention == 'cudnn'
                 for a in parsed if a.method != 'diffdis')
  assert not (tmp_path / 'out').exists()


def test_a_bad_group_is_one_line_and_writes_nothing(tmp_path):
  result = _suite('dit', 'dti', tmp_path=tmp_path)
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.strip().splitlines() == [
      "unknown group 'dti': use dit, sddit, masks, remat or diffdis"]
  assert not (tmp_path / 'out').exists()


def test_earlier_results_are_not_overwritten(tmp_path):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'results.jsonl').write_text('{"step_s": 1.0}\n')
  result = _suite('dit', tmp_path=tmp_path, SUITE_SMOKE='1')
  assert result.returncode == 2
  assert 'already holds results' in result.stderr
  assert (tmp_path / 'out' / 'results.jsonl').read_text() == '{"step_s": 1.0}\n'
