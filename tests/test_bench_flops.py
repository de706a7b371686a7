"""bench/flops.py: SD-DiT's analytic cost against DiT's, the table behind the step-time target
in docs/results.md."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
import costs  # noqa: E402  pylint: disable=wrong-import-position
import flops  # noqa: E402  pylint: disable=wrong-import-position
from train_step import bench_config  # noqa: E402  pylint: disable=wrong-import-position

from diffdis_jax.tasks import make_task  # noqa: E402


def test_rows_match_the_cost_model_and_fall_with_the_mask_ratio():
  ratios = (0.0, 0.2, 0.5)
  rows = flops.table('DiT-S/2', ratios, ['separate', 'split:2'])
  assert rows[0]['method'] == 'dit' and rows[0]['ratio_vs_dit'] == 1.0
  # the default SD-DiT config (mask 0.2, MaskDiT decoder) is the 'separate', 0.2 row
  config = bench_config('DiT-S/2', 'sddit', batch=1)
  default = costs.sddit_flops(make_task(config).build_model(), config)['train_flops_per_image']
  separate = [r for r in rows[1:] if r['decoder'].startswith('separate')]
  assert [r['mask_ratio'] for r in separate] == list(ratios)
  assert separate[1]['train_flops_per_image'] == pytest.approx(default / 1e9, abs=0.01)
  for decoder in ('separate', 'split:2'):
    series = [r['ratio_vs_dit'] for r in rows[1:] if r['decoder'].startswith(decoder)]
    assert series == sorted(series, reverse=True) and len(set(series)) == 3
  # every row adds a teacher forward; at mask 0 the student alone costs at least DiT's pass
  assert all(r['teacher_forward_flops'] > 0 for r in rows[1:])
  assert all(r['ratio_vs_dit'] > 1.0 for r in rows[1:] if r['mask_ratio'] == 0.0)


def test_a_bad_decoder_spec_is_one_line_before_anything_is_built():
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'flops.py'),
                           '--model=DiT-S/2', '--decoders=separate,split'],
                          capture_output=True, text=True, check=False)
  assert result.returncode != 0 and result.stdout == ''
  assert result.stderr.strip().splitlines() == [
      "--decoders: each entry is 'separate' or 'split:N', got 'split'"]


@pytest.mark.parametrize('size', ['s', 'b', 'l', 'xl'])
def test_each_sized_config_costs_at_most_1_3x_its_dit(size):
  path = os.path.join(ROOT, 'configs', f'sddit_{size}.py')
  dit, own = flops.table('', [], [], config_file=path)
  assert dit['method'] == 'dit' and dit['model'] == own['model'] == f'DiT-{size.upper()}/2'
  assert own['config'] == path and own['mask_ratio'] == 0.2
  assert 1.0 < own['ratio_vs_dit'] <= 1.3, own
  # the DiT counterpart is the same size: the config's own layout adds no encoder blocks
  config = bench_config('', 'dit', batch=1, config_file=path)
  assert config.model.decoder_depth == 0 and config.sddit.dis_weight == 0.0
