"""Where a train step's time goes, op by op: a jax.profiler trace of the compiled step, summed.

  export XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true      # on CPU
  python bench/profile_step.py --method=unet --size=sd15 --latent=32 --batch=1 --optimizer=sgd
  python bench/profile_step.py --model=DiT-S/2 --method=dit --batch=8
  python bench/profile_step.py --tiny                       # smoke run (bench/tiny.py)

Compiles the same step as bench/train_step.py (its flags), runs `--steps` steps under
`jax.profiler.trace` after one untimed step, and reads the trace back with
`jax.profiler.ProfileData`. Each op event of the step is attributed through the compiled
HLO to the flax module that produced it (the op's `op_name` metadata, e.g.
`up_blocks_1/resnets_0/conv1`) and to the forward or backward pass (`transpose(...)` in the
name), and summed over the steps. Prints JSON lines: one per group (module kind x pass x
HLO opcode), largest first, down to `--top`, then a total. On XLA:CPU the per-op events exist
only with `--xla_cpu_enable_xprof_traceme=true` (the script refuses to run without it there).
"""
from __future__ import annotations

import collections
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402

import tiny  # noqa: E402  (bench/tiny.py)
import train_step as bench  # noqa: E402  (bench/train_step.py)
from diffdis_jax.tasks import make_task  # noqa: E402
from diffdis_jax.train import step as step_lib  # noqa: E402

# `%name = <shape> opcode(...), ... calls=%comp, metadata={op_name="..."}` in the HLO text
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\(')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) \(.*\{$')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# path components that are jax's own wrappers, not flax modules
_JAX_WORDS = re.compile(r'^(jit|jvp|transpose|vmap|remat|checkpoint|pjit|while|body|cond|'
                        r'closed_call|custom_jvp_call|custom_vjp_call|rematted_computation)\b')
# the model's entry point: jvp(DiffDisUNet), or jvp(DiffDisUNet.predict_text) for a method
_MODEL_CALL = re.compile(r'jvp\(([A-Z][\w.]*)\)')
_METHOD_CALL = re.compile(r'^[A-Z]\w*\.')
_HEAVY = ('convolution', 'dot', 'reduce')  # what a fusion is labelled by, first found


def hlo_index(hlo_text: str) -> dict:
  """Instruction name -> (label, op_name metadata) over every computation of the module.

  The label is the opcode, and for a fusion the heaviest op it contains: 'fusion(dot)' for a
  product fused with its elementwise neighbours, 'fusion(reduce)' for a norm's statistics.
  """
  contents, current, rows = collections.defaultdict(dict), None, []
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if match:
      calls, op_name = _CALLS.search(line), _OP_NAME.search(line)
      op_name = op_name.group(1) if op_name else ''
      # per computation: each opcode's first op_name, for fusions that carry none
      if op_name or match.group(3) not in contents[current]:
        contents[current].setdefault(match.group(3), op_name)
      rows.append((match.group(1), match.group(3), calls.group(1) if calls else None, op_name))
  index = {}
  for name, opcode, calls, op_name in rows:
    if opcode == 'fusion':
      inside = contents.get(calls, {})
      inner = next((op for op in _HEAVY if op in inside), None)
      opcode = f'fusion({inner})' if inner else 'fusion'
      op_name = op_name or inside.get(inner, '') or next(
          (n for n in inside.values() if n), '')
    index[name] = (opcode, op_name)
  return index


def attribute(op_name: str) -> tuple[str, str]:
  """(where, pass) of an op_name. Inside the model: the innermost two module names, indices
  dropped, so that every ResNet's conv1 sums together, and prefixed with the method where
  the model was applied through one (`predict_text: conv1/conv`). Outside it (loss,
  optimizer, EMA, the non-finite guard): the last two names of the path. 'backward' under a
  transpose."""
  parts = [p for p in op_name.split('/') if p and not _JAX_WORDS.match(p)]
  in_model = _MODEL_CALL.search(op_name)
  if in_model:
    # `Class.method` components are method calls (e.g. DiffDisUNet._down_mid), not modules
    modules = [re.sub(r'_\d+(?=$|\.)', '', p) for p in parts[:-1] if not _METHOD_CALL.match(p)]
    where = '/'.join(modules[-2:]) or (parts[-1] if parts else '(model)')
    method = in_model.group(1).partition('.')[2]
    if method:  # a second entry point into the model (DiffDis' predict_text pass)
      where = f'{method}: {where}'
  else:
    where = 'step: ' + '/'.join(parts[-2:]) if parts else '(XLA-made, no metadata)'
  return where, 'backward' if 'transpose(' in op_name else 'forward'


def op_events(trace_dir: str, names: set) -> collections.Counter:
  """Summed duration (s) per HLO instruction name over the trace's events."""
  files = [os.path.join(root, f) for root, _, fs in os.walk(trace_dir) for f in fs
           if f.endswith('.xplane.pb')]
  totals = collections.Counter()
  for path in files:
    for plane in jax.profiler.ProfileData.from_file(path).planes:
      for line in plane.lines:
        for event in line.events:
          if event.name in names:
            totals[event.name] += event.duration_ns * 1e-9
  return totals


def main(argv=None):
  parser = bench.argument_parser(__doc__.splitlines()[0])
  parser.add_argument('--top', type=int, default=40, help='groups printed')
  args = tiny.parse_args(parser, argv, **bench.TINY, top=5)
  if jax.default_backend() == 'cpu' and 'xla_cpu_enable_xprof_traceme=true' not in \
      os.environ.get('XLA_FLAGS', ''):
    raise SystemExit('XLA:CPU records per-op events only with '
                     'XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true; set it and rerun')
  if args.method in ('diffdis', 'unet'):
    align = 'diffusion' if args.method == 'diffdis' else 'none'
    config = bench.diffdis_bench_config(args.size, args.batch, args.latent, align)
  else:
    config = bench.bench_config(args.model, args.method, args.batch, args.config)
  config = bench.apply_flags(config, args)
  if args.tiny and args.method in ('sddit', 'dit'):
    config = tiny.shrink_dit(config)

  task = make_task(config)
  model = task.build_model()
  objective = task.objective
  tx = bench.make_optimizer(config, args.optimizer)
  init = jax.jit(lambda r: nn.unbox(step_lib.make_init_fn(model, tx, objective, config, task.init_params)(r)))
  rng, batch = jax.random.PRNGKey(0), bench.random_batch(config)
  step = jax.jit(step_lib.make_train_step(model, tx, objective, config),
                 donate_argnums=0).lower(jax.eval_shape(init, rng), batch).compile(
                     bench.compiler_options(args))
  index = hlo_index(step.as_text())
  state = init(rng)
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
    seconds = op_events(trace_dir, set(index))

  groups = collections.Counter()
  for name, total in seconds.items():
    opcode, op_name = index[name]
    groups[(*attribute(op_name), opcode)] += total / args.steps
  op_time = sum(groups.values())
  for (kind, pass_, opcode), total in groups.most_common(args.top):
    print(json.dumps({'bench': 'profile_step', 'module': kind, 'pass': pass_,
                      'opcode': opcode, 'seconds_per_step': round(total, 4),
                      'share': round(total / op_time, 4)}))
  by_opcode = collections.Counter()
  for (_, _, opcode), total in groups.items():
    by_opcode[opcode] += total
  print(json.dumps({'bench': 'profile_step_total', 'method': args.method,
                    'op_seconds_per_step': round(op_time, 4), 'steps': args.steps,
                    'by_opcode': {k: round(v, 4) for k, v in by_opcode.most_common(12)},
                    **bench._flag_fields(args), 'backend': jax.default_backend()}))


if __name__ == '__main__':
  main()
