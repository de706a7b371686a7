"""Per-method training tasks: everything the Trainer needs to know about a method besides its
objective (objectives/), so that train/loop.py has no branch on the method.

A task is built as `make_task(config, workdir)` and provides:

  build_model()                            the flax module
  init_params(model, rng)                  boxed parameters (traced inside the state's init)
  finish_init(state, shardings)            the fresh state with host-side values that init
                                           cannot trace (pretrained weights, the empty
                                           prompt's embedding), placed with `shardings`
  abstract_batch(batch_sharding)           ShapeDtypeStructs of one global batch
  train_iterator(process_index, count)     this host's checkpointable batch iterator (grain)
  prepare_batch(global_batch, step)        the step's batch from the sharded host batches
                                           (e.g. DiffDis' frozen encoders on pairs)
  input_metrics(data_iterator)             {name: scalar} of the input, e.g. skipped records
  make_preview_fn(model)                   the jitted sampler `preview` uses
  preview(preview_fn, params)              the periodic sample grid, uint8 (h, w, c), or None
  final_eval(preview_fn, params)           {name: scalar} written to metrics.jsonl at the end
  eval_hooks(trainer)                      callables (step, ema_params, writer, jsonl) run
                                           after every step, each deciding when to evaluate
"""
from __future__ import annotations

from diffdis_jax.tasks.diffdis import DiffDisTask
from diffdis_jax.tasks.sddit import SDDiTTask

TASKS = {'sddit': SDDiTTask, 'diffdis': DiffDisTask}


def make_task(config, workdir: str | None = None):
  try:
    task = TASKS[config.method]
  except KeyError:
    raise ValueError(f'unknown method {config.method!r}; known: {sorted(TASKS)}') from None
  return task(config, workdir)
