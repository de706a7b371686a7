"""The training loop: state on the mesh, the compiled step, logging, checkpoints, samples.

Everything that differs between methods (model, objective, data, sample grid, evaluations)
comes from the task the Trainer is given (tasks/); nothing here names a method.
"""
from __future__ import annotations

import logging
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from clu import metric_writers, periodic_actions

from diffdis_jax.core.dtypes import resolve_compute_dtype
from diffdis_jax.eval.sample import save_png
from diffdis_jax.parallel import mesh as mesh_lib
from diffdis_jax.train import checkpoint as ckpt_lib
from diffdis_jax.train import preemption
from diffdis_jax.train import step as step_lib
from diffdis_jax.train import workdir as workdir_lib
from diffdis_jax.train.metrics_log import JsonlWriter


class Trainer:
  """Builds everything a run needs without compiling; `train()` runs it, and the other run
  modes (modes/) restore its state to sample or evaluate."""

  def __init__(self, config, workdir: str, task, devices=None):
    """`task`: the method's (tasks.make_task); `devices`: the mesh's devices (default all);
    tests use a subset, e.g. to resume a checkpoint of an 8-device mesh on 2 devices."""
    self.config, self.workdir, self.task = config, workdir, task
    self.mesh = mesh_lib.make_mesh(config.mesh, devices)
    # what the model computes in, and why: 'auto' differs between hosts (core/dtypes.py)
    self.compute_dtype, why = resolve_compute_dtype(config.compute_dtype)
    logging.info('compute dtype %s (%s); parameters and optimizer state float32',
                 self.compute_dtype, why)
    self.model = task.build_model()
    self.objective = task.objective
    # the configs the step is compiled from: the run's, then the final phase's (if any), which
    # the task derives (SD-DiT and MaskDiT: no mask); `phase_start` steps come before it
    self.phase_start = step_lib.final_phase_start(config)
    self.phase_configs = (config,) if self.phase_start is None else (
        config, task.final_phase_config())
    self.tx = step_lib.make_optimizer(config)
    init_fn = step_lib.make_init_fn(self.model, self.tx, self.objective, config,
                                    init_params=self.task.init_params)
    rng = jax.random.PRNGKey(config.seed)
    self.abstract_state, logical = step_lib.unboxed_abstract_state(init_fn, rng)
    self.state_shardings = mesh_lib.logical_to_shardings(logical, self.mesh, config.axis_rules)
    # a width the mesh does not divide is named here, not deep inside jit's lowering
    mesh_lib.check_divisible(self.abstract_state, self.state_shardings)
    self._init = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=self.state_shardings)
    self._rng = rng
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    # XLA options for the step's compile, e.g. {'xla_backend_optimization_level': 0}: tests
    # use it to halve CPU compile times
    self.compiler_options = None
    self.final_scores = {}  # what the task's final evaluation scored at the end of `train`
    self.final_eval_seconds = 0.0  # and how long it took

  def init_state(self):
    # the initialiser runs once: XLA's cheapest compile (a UNet's init otherwise compiles as
    # long as a forward pass)
    init = self._init.lower(self._rng).compile({'xla_backend_optimization_level': 0})
    return self.task.finish_init(init(self._rng), self.state_shardings)

  def abstract_batch(self):
    return self.task.abstract_batch(self.batch_sharding)

  def phase(self, step: int) -> int:
    """Which of `phase_configs` trains step `step` (1-based, as the loop counts)."""
    return int(self.phase_start is not None and step > self.phase_start)

  def jitted_step(self, phase: int = 0):
    """The train step jitted with the state and batch shardings, the state donated: what
    `compile_step` compiles here, and what bench/export.py lowers for other platforms."""
    step_fn = step_lib.make_train_step(self.model, self.tx, self.objective,
                                       self.phase_configs[phase])
    return jax.jit(step_fn, in_shardings=(self.state_shardings, self.batch_sharding),
                   out_shardings=(self.state_shardings, mesh_lib.replicated(self.mesh)),
                   donate_argnums=0)

  def lower_step(self, phase: int = 0):
    """The train step lowered for the state and batch shardings, under the mesh's activation
    rules: what `compile_step` compiles (bench/profile_compile.py times the two apart)."""
    with mesh_lib.activation_rules(self.mesh, self.config.axis_rules):
      return self.jitted_step(phase).lower(self.abstract_target(), self.abstract_batch())

  def compile_step(self, phase: int = 0):
    """The train step of `phase`, compiled ahead of time for the state and batch shardings."""
    t0 = time.perf_counter()
    compiled = self.lower_step(phase).compile(self.compiler_options)
    self.compile_seconds = time.perf_counter() - t0
    logging.info('train step%s compiled in %.1f s', f' (final phase, after step '
                 f'{self.phase_start})' if phase else '', self.compile_seconds)
    return compiled

  def data_iterator(self):
    return self.task.train_iterator(jax.process_index(), jax.process_count())

  def shard(self, batch):
    return mesh_lib.shard_batch(batch, self.mesh)

  def abstract_target(self):
    """The state's shapes with the shardings a restore onto this mesh gives them."""
    return ckpt_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)

  def restore_or_init(self, checkpointer, data_iterator):
    """The newest intact checkpoint's state (broken ones are set aside), else a fresh one."""
    state = checkpointer.restore_latest(self.abstract_target(), data_iterator)
    return self.init_state() if state is None else state

  def restore_latest(self):
    """The newest intact checkpoint's state, without the input position (sampling and
    evaluation need none); FileNotFoundError when the workdir holds no checkpoint."""
    checkpointer = ckpt_lib.Checkpointer(self.workdir, max_to_keep=self.config.keep_checkpoints)
    try:
      return checkpointer.restore_latest(self.abstract_target(), required=True)
    finally:
      checkpointer.close()

  def train(self, stop_at: int | None = None):
    """Train to `config.total_steps` (or only to step `stop_at`, saving there)."""
    config, workdir = self.config, self.workdir
    last = config.total_steps if stop_at is None else min(stop_at, config.total_steps)
    workdir_lib.check_identity(config, self.objective, workdir)
    os.makedirs(workdir, exist_ok=True)
    checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
    saved = checkpointer.latest_step()
    if saved is not None and saved > config.total_steps:
      # resuming would score and export the later checkpoint under the earlier step
      checkpointer.close()
      raise workdir_lib.WorkdirMismatch(
          f'{workdir} holds a checkpoint at step {saved}, past total_steps='
          f'{config.total_steps}; raise --config.total_steps or give a fresh --workdir')
    with checkpointer.closing_on_error():
      return self._train(checkpointer, last)

  def _train(self, checkpointer, last: int):
    config, workdir = self.config, self.workdir
    lead = jax.process_index() == 0
    data_it = self.data_iterator()
    state = self.restore_or_init(checkpointer, data_it)
    if lead:  # after the restore: it refuses checkpoints of another model (no identity file)
      workdir_lib.write_identity(config, self.objective, workdir)
    start = int(state.step)
    jsonl = JsonlWriter(workdir, enabled=lead)
    jsonl.truncate_after(start)
    writer = metric_writers.create_default_writer(workdir, just_logging=not lead,
                                                  asynchronous=True)
    if start == 0:
      writer.write_hparams({k: v for k, v in _flat(config).items()})
    phase = self.phase(start + 1)
    train_step = self.compile_step(phase)
    sample_fn = self.task.make_preview_fn(self.model)
    hooks = [periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer,
                                             every_steps=config.log_every)]
    logging.info('training from step %d to %d on mesh %s', start, config.total_steps,
                 dict(self.mesh.shape))
    writer.write_scalars(start, {'compile_seconds': self.compile_seconds})

    window = MetricWindow()
    stop = preemption.StopRequest(checkpointer.manager, config.preemption_check_every)
    preempted = False
    # periodic evaluations of the EMA params, e.g. SD-DiT's FID every eval.fid_every steps
    eval_hooks = self.task.eval_hooks(self.model, self.mesh)
    for step in range(start + 1, last + 1):
      if self.phase(step) != phase:  # the final phase's step: compiled when it is reached
        phase = self.phase(step)
        train_step = self.compile_step(phase)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = self.task.prepare_batch(self.shard(next(data_it)), step)
        state, metrics = train_step(state, batch)
      if config.nonfinite == 'stop' and not bool(metrics['finite']):  # a host sync per step
        checkpointer.close()  # the last finite step's save completes
        raise FloatingPointError(f'non-finite loss or gradients at step {step}; stopping '
                                 'without saving (nonfinite=stop)')
      window.add(metrics)
      for hook in hooks:
        hook(step)
      if step % config.log_every == 0 or step == last:
        metrics = dict(window.mean_and_reset(), **self.task.input_metrics(data_it))
        writer.write_scalars(step, metrics)
        jsonl.write(step, metrics)
      if step % config.sample_every == 0 or step == config.total_steps:
        self.write_samples(sample_fn, state.ema_params, step, writer)
      preempted = stop.reached(step)
      if step % config.checkpoint_every == 0 or step == last or preempted:
        checkpointer.save(step, state, data_it, force=preempted)
        jsonl.write(step, {'params_fingerprint': ckpt_lib.params_fingerprint(state.params)})
      if preempted:
        logging.warning('stopped at step %d as asked (SIGTERM); its checkpoint is saved, '
                        'run again to continue', step)
        break
      for eval_hook in eval_hooks:
        eval_hook(step, state.ema_params, writer, jsonl)
    if not preempted and last == config.total_steps:
      t0 = time.perf_counter()
      scores = self.final_scores = self.task.final_eval(sample_fn, state.ema_params)
      self.final_eval_seconds = time.perf_counter() - t0
      if scores:
        writer.write_scalars(last, scores)
        jsonl.write(last, scores)
    checkpointer.close()
    writer.flush()
    writer.close()
    return state

  def write_samples(self, sample_fn, params, step, writer, name=None):
    """The task's preview grid as samples/<name or step_N>.png (and to TensorBoard)."""
    grid = self.task.preview(sample_fn, params)
    if grid is None:
      return None
    if jax.process_index() == 0:
      path = os.path.join(self.workdir, 'samples', name or f'step_{step:08d}.png')
      save_png(path, grid, upscale=4)
      if writer is not None:
        writer.write_images(step, {'samples': grid[None]})
      logging.info('sample grid: %s', path)
    return grid


class MetricWindow:
  """Averages step metrics over a logging interval without a host sync per step.

  Counters ('finite', 'skipped_steps') are reported as the window's sum and last value.
  """

  def __init__(self):
    self.total, self.count, self.last = None, 0, None

  def add(self, metrics):
    self.total = metrics if self.total is None else jax.tree.map(jnp.add, self.total, metrics)
    self.count, self.last = self.count + 1, metrics

  def mean_and_reset(self):
    total, last = jax.device_get((self.total, self.last))
    out = {k: float(v) / self.count for k, v in total.items()}
    out['finite'] = int(total['finite'])  # steps with finite loss and gradients
    out['skipped_steps'] = int(last['skipped_steps'])
    self.total, self.count, self.last = None, 0, None
    return out


def _flat(config, prefix=''):
  out = {}
  for k, v in config.items():
    if hasattr(v, 'items'):
      out.update(_flat(v, f'{prefix}{k}.'))
    elif isinstance(v, (int, float, str, bool)):
      out[f'{prefix}{k}'] = v
  return out
