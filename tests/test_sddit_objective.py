"""SD-DiT objective: teacher without gradient, EMA formulas, masks, baselines as configs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import compile_fast, tiny_sddit_config
from diffdis_jax.tasks import make_task
from diffdis_jax.objectives import sddit
from diffdis_jax.train import step as step_lib


def _setup(config):
  task = make_task(config)
  model = task.build_model()
  tx = step_lib.make_optimizer(config)
  init = step_lib.make_init_fn(model, tx, sddit, config, task.init_params)
  key = jax.random.PRNGKey(0)
  state = compile_fast(lambda r: nn.unbox(init(r)), key)(key)
  # leave the zero-initialised regime so every path carries gradient
  params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
                        state.params)
  state = state.replace(params=params, ema_params=params,
                        aux=sddit.init_aux(params, model, config))
  batch = {'image': jax.random.uniform(jax.random.PRNGKey(2), (8, 8, 8, 1), minval=-1, maxval=1),
           'label': jnp.arange(8) % 10}
  return model, tx, state, batch


def _grads(model, config, state, batch, wrt):
  def loss(params, aux):
    return sddit.loss_fn(params, batch, jax.random.PRNGKey(3), aux, state.step, model=model,
                         config=config)[0]
  return compile_fast(jax.grad(loss, argnums=wrt), state.params, state.aux)(state.params,
                                                                          state.aux)


def test_teacher_gets_no_gradient_and_the_student_does():
  config = tiny_sddit_config()
  model, _, state, batch = _setup(config)
  teacher_grads = _grads(model, config, state, batch, 1)['teacher']
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(teacher_grads))
  student_grads = _grads(model, config, state, batch, 0)
  for name in ('projection_head', 'blocks_0', 'decoder_blocks_0', 'x_embedder'):
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(student_grads[name])) > 0, name


def test_discriminative_loss_reaches_encoder_and_head_but_not_decoder():
  config = tiny_sddit_config(**{'sddit.dis_weight': 1.0})
  model, _, state, batch = _setup(config)

  def dis_only(params):
    _, (metrics, _) = sddit.loss_fn(params, batch, jax.random.PRNGKey(3), state.aux, state.step,
                                    model=model, config=config)
    return metrics['dis_loss']
  grads = compile_fast(jax.grad(dis_only), state.params)(state.params)
  peak = lambda name: max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[name]))
  assert peak('projection_head') > 0 and peak('blocks_1') > 0
  assert peak('decoder_blocks_0') == 0 and peak('final_layer') == 0


def test_teacher_and_centre_ema_follow_their_formulas():
  config = tiny_sddit_config(**{'total_steps': 100})
  model, _, state, batch = _setup(config)
  params = jax.tree.map(lambda p: p + 1.0, state.params)
  outputs = {'teacher_patch_mean': jnp.ones((32,))}
  step = 30
  new = sddit.update_aux(state.aux, params, outputs, step, model=model, config=config)
  m = 1 - (1 - 0.996) * (np.cos(np.pi * step / 100) + 1) / 2
  for key in sddit.teacher_keys(model):
    jax.tree.map(lambda t, t0, p: np.testing.assert_allclose(t, m * t0 + (1 - m) * p, atol=1e-6),
                 new['teacher'][key], state.aux['teacher'][key], params[key])
  np.testing.assert_allclose(new['center_patch'], 0.1 * np.ones(32), rtol=1e-6)
  assert float(sddit.teacher_momentum(0, config)) == pytest.approx(0.996)
  assert float(sddit.teacher_momentum(100, config)) == pytest.approx(1.0)


# the train-step tests share one config, so the step compiles once (the session's compilation
# cache serves the second): a constant EMA decay and no warm-up, for the EMA's formula
STEP_CONFIG = {'ema_decay': 0.9, 'optim.warmup_steps': 0, 'ema_warmup': False}


def _train_step(model, tx, objective, config, state, batch):
  """One train step, compiled for (state, batch) at FAST_COMPILE."""
  return compile_fast(step_lib.make_train_step(model, tx, objective, config), state, batch)


def test_train_step_updates_sampling_ema_by_its_formula():
  config = tiny_sddit_config(**STEP_CONFIG)
  model, tx, state, batch = _setup(config)
  new, metrics = _train_step(model, tx, sddit, config, state, batch)(state, batch)
  assert int(new.step) == 1 and int(metrics['finite']) == 1
  jax.tree.map(lambda e, e0, p: np.testing.assert_allclose(e, 0.9 * e0 + 0.1 * p, atol=1e-6),
               new.ema_params, state.ema_params, new.params)
  assert not np.allclose(new.params['blocks_0']['attn']['query']['dense']['kernel'],
                         state.params['blocks_0']['attn']['query']['dense']['kernel'])


def test_ema_warmup_schedule():
  config = tiny_sddit_config(**{'ema_decay': 0.999})
  decays = [float(step_lib.ema_decay(s, config)) for s in (0, 10, 1000, 100_000)]
  np.testing.assert_allclose(decays, [0.1, 11 / 20, 1001 / 1010, 0.999], rtol=1e-6)


def test_non_finite_step_is_skipped_and_counted():
  config = tiny_sddit_config(**STEP_CONFIG)
  model, tx, state, batch = _setup(config)
  bad = dict(batch, image=batch['image'].at[0, 0, 0, 0].set(jnp.nan))
  new, metrics = _train_step(model, tx, sddit, config, state, bad)(state, bad)
  assert int(metrics['finite']) == 0 and int(new.skipped_steps) == 1 and int(new.step) == 1
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)


def test_keep_indices_are_sorted_distinct_and_per_sample():
  keep = np.asarray(sddit.random_keep_indices(jax.random.PRNGKey(0), 16, 64, 0.2))
  assert keep.shape == (16, 51)
  assert all(len(set(row)) == 51 and np.all(np.diff(row) > 0) for row in keep)
  assert len({tuple(row) for row in keep}) > 1
  assert sddit.random_keep_indices(jax.random.PRNGKey(0), 4, 64, 0.0) is None
  visible = np.asarray(sddit.keep_mask(jnp.asarray(keep), 16, 64))
  assert visible.sum() == 16 * 51 and np.all(visible[np.arange(16)[:, None], keep] == 1)


def test_self_distillation_cross_entropy_hand_case():
  student = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  teacher = jnp.log(jnp.array([[0.2, 0.3, 0.5]]))
  center = jnp.zeros(3)
  ce = sddit.self_distillation_ce(student, teacher, center, 1.0, 1.0)
  expected = -(0.2 * np.log(0.5) + 0.3 * np.log(0.25) + 0.5 * np.log(0.25))
  assert float(ce) == pytest.approx(expected, rel=1e-5)


def test_baselines_are_configurations():
  dit = tiny_sddit_config(**{'sddit.dis_weight': 0.0, 'sddit.mask_ratio': 0.0,
                             'model.decoder_mode': 'split'})
  model, _, state, batch = _setup(dit)
  assert 'projection_head' not in state.params and state.aux == {}
  _, (metrics, _) = sddit.loss_fn(state.params, batch, jax.random.PRNGKey(0), state.aux, 0,
                                  model=model, config=dit)
  assert float(metrics['mask_ratio_actual']) == 0.0 and 'dis_loss' not in metrics

  maskdit = tiny_sddit_config(**{'sddit.dis_weight': 0.0, 'sddit.mask_ratio': 0.5,
                                 'model.infill': 'mask_token', 'sddit.gen_loss_tokens': 'visible',
                                 'sddit.masked_recon_weight': 0.1})
  model, _, state, batch = _setup(maskdit)
  assert 'mask_token' in state.params
  loss, (metrics, _) = sddit.loss_fn(state.params, batch, jax.random.PRNGKey(0), state.aux, 0,
                                     model=model, config=maskdit)
  assert float(loss) == pytest.approx(
      float(metrics['gen_loss'] + 0.1 * metrics['masked_recon_loss']), rel=1e-5)


class _NanGradient:
  """sddit plus a term worth 0 whose gradient is nan: the loss stays finite, one leaf's
  gradient does not."""

  def __getattr__(self, name):
    return getattr(sddit, name)

  @staticmethod
  def loss_fn(params, *args, **kwargs):
    loss, aux = sddit.loss_fn(params, *args, **kwargs)
    leaf = jax.tree.leaves(params)[0]
    return loss + 0.0 * jnp.sqrt(0.0 * jnp.sum(leaf)), aux


def test_step_with_a_finite_loss_and_a_nan_gradient_is_skipped():
  config = tiny_sddit_config(**STEP_CONFIG)
  model, tx, state, batch = _setup(config)
  new, metrics = _train_step(model, tx, _NanGradient(), config, state, batch)(state, batch)
  assert np.isfinite(float(metrics['loss']))
  assert int(metrics['finite']) == 0 and int(new.skipped_steps) == 1 and int(new.step) == 1
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, new.opt_state, state.opt_state)
