"""The jitted training step and the state initialiser.

`make_train_step` returns a plain function of (state, batch); the caller decides how to jit
it (shardings, donation, ahead-of-time compilation: see train/loop.py).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffdis_jax.train.state import TrainState

# config.nonfinite: after a step with a non-finite loss or gradients (skipped either way),
# go on training or stop the run
NONFINITE_POLICIES = ('skip', 'stop')


def final_phase_start(config) -> int | None:
  """Steps trained before the final phase (`config.final_phase`), or None without one: the
  last `fraction` of total_steps, at least one step."""
  fraction = config.final_phase.fraction
  if fraction <= 0:
    return None
  return config.total_steps - max(1, round(fraction * config.total_steps))


def learning_rate(config) -> optax.Schedule:
  """Linear warm-up to optim.lr, then constant; in the final phase, final_phase.lr."""
  o = config.optim
  main = (optax.linear_schedule(0.0, o.lr, o.warmup_steps) if o.warmup_steps > 0
          else optax.constant_schedule(o.lr))
  start = final_phase_start(config)
  if start is None:
    return main
  return optax.join_schedules([main, optax.constant_schedule(config.final_phase.lr)], [start])


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW on `learning_rate(config)`. Its schedule counts applied updates, so after a
  skipped (non-finite) step the final phase's rate starts one step late."""
  o = config.optim
  schedule = learning_rate(config)
  chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
  return optax.chain(*chain)


def make_init_fn(model, tx, objective, config, init_params):
  """init(rng) -> TrainState whose arrays are still boxed with logical axis names.

  `init_params(model, rng)` -> boxed params: the task's (tasks/), e.g. model.init on dummy
  inputs. Boxes (nn.LogicallyPartitioned) pass through optax and tree maps, so the optimizer
  state, EMA and teacher inherit the parameter names; `nn.get_partition_spec` reads them and
  `nn.unbox` drops them (see train/loop.py).
  """
  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    params = init_params(model, init_rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        ema_params=params, aux=objective.init_aux(params, model, config), rng=state_rng,
        skipped_steps=jnp.zeros((), jnp.int32))
  return init


def ema_decay(step, config):
  """The sampling-EMA decay at `step`; with `ema_warmup`, min(decay, (1 + s) / (10 + s)), so
  that early EMA weights are not dominated by the initialisation."""
  if not config.ema_warmup:
    return jnp.float32(config.ema_decay)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))


def make_train_step(model, tx, objective, config):
  """train_step(state, batch) -> (state, metrics): forward passes, optax update, both EMAs.

  A step whose loss or gradients are not finite leaves the state unchanged except for the step
  and `skipped_steps` counters; the loop then goes on or stops, as `config.nonfinite` says.
  The gradients' test is that their global norm is finite: one inf or nan makes it so, and
  the norm is computed for the metrics anyway, where a separate isfinite pass would read
  every gradient once more (8% of an SD 1.5 UNet step's op time on CPU, docs/results.md). A
  norm that overflows float32 (above about 1.8e19) also counts as non-finite.
  """
  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(objective.loss_fn, has_aux=True)
    (loss, (metrics, outputs)), grads = grad_fn(state.params, batch, rng, state.aux,
                                                state.step, model=model, config=config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(state.step, config)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
    aux = objective.update_aux(state.aux, params, outputs, state.step, model=model,
                               config=config)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        ema_params=ema, aux=aux)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    skipped = state.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, skipped)
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.int32),
                   skipped_steps=new.skipped_steps, lr=learning_rate(config)(state.step))
    return new, metrics
  return train_step


def unboxed_abstract_state(init_fn, rng):
  """Shapes of the state without running it, and the logical PartitionSpecs of every leaf."""
  boxed = jax.eval_shape(init_fn, rng)
  return nn.unbox(boxed), nn.get_partition_spec(boxed)
