"""bench/costs.py: the analytic FLOP counts behind the benchmarks' MFU figures."""
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_sddit_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'bench'))
import costs  # noqa: E402  pylint: disable=wrong-import-position

from diffdis_jax.tasks import make_task  # noqa: E402
from diffdis_jax.objectives import sddit  # noqa: E402


def test_dit_xl_2_matches_the_published_count():
  # DiT-XL/2 at 256 px: 118.6 G multiply-adds per forward pass (DiT, Table 4)
  from configs import common  # pylint: disable=g-import-not-at-top
  from diffdis_jax.core.overrides import apply_overrides  # pylint: disable=g-import-not-at-top
  config = apply_overrides(common.get_base_config(), common.DIT_BASELINE)
  config.model.name = 'DiT-XL/2'
  flops = costs.sddit_flops(make_task(config).build_model(), config)
  assert flops['student_forward_flops'] / 2 == pytest.approx(118.6e9, rel=2e-3)
  assert flops['teacher_forward_flops'] == 0
  assert flops['train_flops_per_image'] == 3 * flops['student_forward_flops']


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])


# the decoder layouts of configs/sddit_{s,b,l,xl}.py: MaskDiT's separate stack (L, XL) and
# the stack's last blocks (S, B), each with a head twice as wide as the model
LAYOUTS = {'separate': {'model.decoder_mode': 'separate', 'model.decoder_width': 128,
                        'model.decoder_heads': 2},
           'split': {'model.decoder_mode': 'split', 'model.depth': 3,
                     'model.decoder_depth': 1}}


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_sddit_counts_agree_with_xla_on_a_wide_model(layout):
  """Wide enough that matrix products dwarf elementwise work, so XLA's count of the forward
  passes (which includes that work) should sit just above the analytic one."""
  config = tiny_sddit_config(**{'model.input_size': 16, 'model.width': 256,
                                'model.num_heads': 4,
                                'model.head': dict(hidden=512, bottleneck=64, out_dim=512,
                                                   num_layers=3),
                                'sddit.mask_ratio': 0.5, **LAYOUTS[layout]})
  model = make_task(config).build_model()
  x = jnp.zeros((1, 16, 16, config.model.in_channels))
  t, y = jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x, t, y)
  keep = sddit.random_keep_indices(jax.random.PRNGKey(1), 1, model.num_tokens, 0.5)

  def student(p):
    out, tokens = model.apply(p, x, t, y, keep, method='forward_with_tokens')
    return out, model.apply(p, tokens, method='project')

  def teacher(p):
    tokens = model.apply(p, x, t, y, method='encode')
    return model.apply(p, jnp.take_along_axis(tokens, keep[..., None], axis=1),
                       method='project')

  analytic = costs.sddit_flops(model, config)
  for fn, key in ((student, 'student_forward_flops'), (teacher, 'teacher_forward_flops')):
    measured = _xla_flops(fn, params)
    assert analytic[key] <= measured <= 1.06 * analytic[key], (key, measured, analytic[key])


def test_peak_flops_by_device_kind():
  assert costs.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert costs.peak_flops('NVIDIA H100 PCIe') == 756e12  # the longest matching prefix
  assert costs.peak_flops('cpu') is None
