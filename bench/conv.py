"""Every convolution of a UNet, forward + backward, by implementation, beside PyTorch.

  python bench/conv.py --size=sd15 --latent=32 --batch=1
  python bench/conv.py --size=tiny --batch=32
  python bench/conv.py --tiny                 # smoke run (bench/tiny.py): two shapes

The convolutions are read off the traced model (so the list is the model's, not a copy of
it), grouped by shape. For each shape: the median seconds of the input and kernel gradients
together with the forward (`jax.vjp` of the convolution, jitted alone) under XLA's
convolution and under im2col (nn/convolution.py), which one `conv_impl=None` picks on this
backend, and torch's `conv2d` forward + backward on the same NCHW shape. One JSON line per
shape, then a total weighted by how often each shape occurs: the convolutions' share of a
train step, one implementation against another, in the same run.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import timing  # noqa: E402  (bench/timing.py)
import tiny  # noqa: E402  (bench/tiny.py)
from diffdis_jax.tasks.diffdis.model import unet_fields  # noqa: E402
from diffdis_jax.nn import convolution  # noqa: E402
from diffdis_jax.nn.unet import UNet2DCondition  # noqa: E402
from train_step import diffdis_bench_config  # noqa: E402  (bench/train_step.py)


def _subjaxprs(params):
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def _convolutions(jaxpr, found):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      found[(lhs, rhs, tuple(eqn.params['window_strides']),
             tuple(tuple(p) for p in eqn.params['padding']))] += 1
    for sub in _subjaxprs(eqn.params):
      _convolutions(sub, found)
  return found


def model_convolutions(config) -> collections.Counter:
  """(input shape, kernel shape, strides, padding) -> count, for the UNet's forward."""
  m, d = config.model, config.diffdis
  unet = UNet2DCondition(in_channels=m.in_channels, out_channels=m.in_channels,
                         **unet_fields(m), conv_impl='xla')
  x = jax.ShapeDtypeStruct((config.batch_size, m.input_size, m.input_size, m.in_channels),
                           jnp.float32)
  context = jax.ShapeDtypeStruct((config.batch_size, d.context_length, d.context_dim),
                                 jnp.float32)
  params = jax.eval_shape(lambda x, c: unet.init(jax.random.PRNGKey(0), x, 1.0, c), x, context)
  jaxpr = jax.make_jaxpr(lambda p, x, c: unet.apply(p, x, 1.0, c))(params, x, context)
  return _convolutions(jaxpr.jaxpr, collections.Counter())


def _ours(conv, lhs, rhs, strides, padding, steps, warmup) -> float:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(lhs), jnp.float32)
  w = jnp.asarray(rng.standard_normal(rhs) / np.sqrt(np.prod(rhs[:3])), jnp.float32)
  forward = lambda x, w: conv(x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  cotangent = jnp.ones(jax.eval_shape(forward, x, w).shape, jnp.float32)
  step = jax.jit(lambda x, w: jax.vjp(forward, x, w)[1](cotangent))
  return timing.median_seconds(lambda: step(x, w), steps, warmup, block=jax.block_until_ready)


def _torch(lhs, rhs, strides, padding, steps, warmup) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  (top, bottom), (left, right) = padding
  if top != bottom or left != right:
    return float('nan')  # conv2d pads symmetrically; the UNet's convolutions all do
  x = torch.randn(lhs[0], lhs[3], lhs[1], lhs[2], requires_grad=True)
  w = torch.randn(rhs[3], rhs[2], rhs[0], rhs[1], requires_grad=True)

  def step():
    y = torch.nn.functional.conv2d(x, w, stride=strides, padding=(top, left))
    y.backward(torch.ones_like(y))

  return timing.median_seconds(step, steps, warmup)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', default='sd15', help="'tiny' (demo UNet) or 'sd15'")
  parser.add_argument('--latent', type=int, default=0, help='latent side (0: config)')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--vs-torch', action='store_true')
  parser.add_argument('--shapes', type=int, default=0,
                      help='time only the first N shapes (0: all); the total covers those')
  args = tiny.parse_args(parser, argv, size='tiny', batch=1, steps=1, warmup=0, shapes=2)

  config = diffdis_bench_config(args.size, args.batch, args.latent, 'none')
  shapes = model_convolutions(config)
  timed = sorted(shapes.items())[:args.shapes or None]
  totals = collections.Counter()
  for (lhs, rhs, strides, padding), count in timed:
    record = {'bench': 'conv', 'size': args.size, 'input': lhs, 'kernel': rhs,
              'strides': strides, 'padding': padding, 'count': count,
              'auto': 'im2col' if convolution.prefers_im2col(lhs, rhs, strides, padding)
                      else 'xla'}
    for name in ('xla', 'im2col'):
      record[f'{name}_s'] = _ours(convolution.conv_general_dilated(name), lhs, rhs, strides,
                                  padding, args.steps, args.warmup)
    record['auto_s'] = record[f"{record['auto']}_s"]
    if args.vs_torch:
      record['torch_s'] = _torch(lhs, rhs, strides, padding, args.steps, args.warmup)
    for key in ('xla_s', 'im2col_s', 'auto_s', 'torch_s'):
      if key in record:
        totals[key] += count * record[key]
        record[key] = round(record[key], 5)
    print(json.dumps(record), flush=True)
  total = {k: round(v, 4) for k, v in totals.items()}
  if 'torch_s' in total:
    total['auto_vs_torch'] = round(totals['auto_s'] / totals['torch_s'], 3)
    total['xla_vs_torch'] = round(totals['xla_s'] / totals['torch_s'], 3)
  print(json.dumps({'bench': 'conv_total', 'size': args.size, 'batch': args.batch,
                    'latent': config.model.input_size, 'convolutions': sum(shapes.values()),
                    'timed_convolutions': sum(count for _, count in timed),
                    **total,
                    'backend': jax.default_backend(), 'jax': jax.__version__}))


if __name__ == '__main__':
  main()
