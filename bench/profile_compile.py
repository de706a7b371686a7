"""Where a config's train-step compile goes: tracing and lowering, then XLA's phases.

  XLA_FLAGS= python bench/profile_compile.py --config=configs/demo_diffdis.py
  python bench/profile_compile.py --tiny      # smoke run (bench/tiny.py): the tiny SD-DiT

Builds the config's Trainer (nothing is trained; a task that needs a pre-stage, such as the
DiffDis text encoder, is only lowered against its abstract state), lowers the train step
(`Trainer.lower_step`, what `Trainer.compile_step` compiles), and compiles it under `jax.profiler.trace`. Prints JSON lines:
the trace-and-lower and compile wall times, then each event of XLA's compiler thread longer
than `--min-seconds` in start order (HLO passes, thunk emission, LLVM code generation), with
its start offset. Events nest: a phase's children follow it.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

import tiny  # noqa: E402  (bench/tiny.py)
from train_step import config_from_file  # noqa: E402  (bench/train_step.py)
from diffdis_jax.modes.run import build_trainer  # noqa: E402


def compiler_events(trace_dir: str, min_seconds: float):
  """(start offset s, duration s, name) of the compiler thread's events, in start order."""
  path = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)[0]
  events = []
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      if line.name.startswith('tf_PjRtCompiler'):
        events += [(e.start_ns, e.duration_ns, e.name) for e in line.events]
  if not events:
    return []
  start = min(e[0] for e in events)
  return [((s - start) / 1e9, d / 1e9, name) for s, d, name in sorted(events)
          if d / 1e9 >= min_seconds]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/demo_diffdis.py')
  parser.add_argument('--xla-opt-level', type=int, default=-1,
                      help="XLA's backend optimisation level (-1: its default)")
  parser.add_argument('--min-seconds', type=float, default=0.25)
  args = tiny.parse_args(parser, argv, config='configs/demo.py', xla_opt_level=0,
                         min_seconds=0.0)

  config = config_from_file(args.config)
  if args.tiny and config.method == 'sddit':
    config = tiny.shrink_dit(config)
  with tempfile.TemporaryDirectory(prefix='profile_compile_') as scratch:
    trainer = build_trainer(config, os.path.join(scratch, 'workdir'))
    t0 = time.perf_counter()
    lowered = trainer.lower_step()
    lower_s = time.perf_counter() - t0
    options = (None if args.xla_opt_level < 0
               else {'xla_backend_optimization_level': args.xla_opt_level})
    trace_dir = os.path.join(scratch, 'trace')
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      lowered.compile(options)
    compile_s = time.perf_counter() - t0
    print(json.dumps({'config': args.config, 'xla_opt_level': args.xla_opt_level,
                      'trace_and_lower_s': round(lower_s, 2), 'compile_s': round(compile_s, 2),
                      'backend': jax.default_backend()}))
    for offset, seconds, name in compiler_events(trace_dir, args.min_seconds):
      print(json.dumps({'at_s': round(offset, 2), 'seconds': round(seconds, 2), 'event': name}))

if __name__ == '__main__':
  main()
