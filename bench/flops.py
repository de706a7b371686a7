"""Analytic model FLOPs of SD-DiT settings against the plain DiT of the same size: no compile.

  python bench/flops.py --model=DiT-XL/2
  python bench/flops.py --model=DiT-XL/2 --mask-ratios=0.2,0.5 --decoders=separate,split:4

An SD-DiT step runs the masked student (forward + backward) and the teacher encoder (forward
only) where DiT runs one full forward + backward, so at equal MFU their step-time ratio is
the ratio of model FLOPs per training image printed here (`ratio_vs_dit`). It says which
settings can meet a step-time target before any device time is spent: e.g.
"SD-DiT-XL/2 at most 1.15x DiT-XL/2" (docs/results.md). One JSON line per setting.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import costs  # noqa: E402  (bench/costs.py)
from diffdis_jax.tasks import make_task  # noqa: E402
from train_step import bench_config  # noqa: E402  (bench/train_step.py)


def parse_decoder(spec: str):
  """'separate' (MaskDiT's extra decoder, the default) or 'split:N' (the stack's last N)."""
  mode, _, depth = spec.partition(':')
  if mode not in ('separate', 'split') or (mode == 'split') != bool(depth):
    raise SystemExit(f"--decoders: each entry is 'separate' or 'split:N', got {spec!r}")
  return mode, int(depth) if depth else None


def flops_row(model_name: str, mask_ratio: float, decoder: str, dit_flops: float) -> dict:
  config = bench_config(model_name, 'sddit', batch=1)
  config.sddit.mask_ratio = mask_ratio
  mode, depth = parse_decoder(decoder)
  config.model.decoder_mode = mode
  if depth is not None:
    config.model.decoder_depth = depth
  flops = costs.sddit_flops(make_task(config).build_model(), config)
  return {'bench': 'flops', 'model': model_name, 'method': 'sddit', 'mask_ratio': mask_ratio,
          'decoder': decoder if mode == 'split' else f'separate:{config.model.decoder_depth}x'
                                                     f'{config.model.decoder_width}',
          **{k: round(v / 1e9, 2) for k, v in flops.items()},
          'ratio_vs_dit': round(flops['train_flops_per_image'] / dit_flops, 4)}


def table(model_name: str, mask_ratios, decoders):
  dit_config = bench_config(model_name, 'dit', batch=1)
  dit = costs.sddit_flops(make_task(dit_config).build_model(), dit_config)['train_flops_per_image']
  rows = [{'bench': 'flops', 'model': model_name, 'method': 'dit',
           'train_flops_per_image': round(dit / 1e9, 2), 'ratio_vs_dit': 1.0}]
  rows += [flops_row(model_name, m, d, dit) for d in decoders for m in mask_ratios]
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='DiT-XL/2')
  parser.add_argument('--mask-ratios', default='0.0,0.1,0.2,0.3,0.4,0.5')
  parser.add_argument('--decoders', default='separate,split:4',
                      help="comma-separated: 'separate' (MaskDiT 8x512, the default) or "
                           "'split:N' (the stack's last N blocks decode)")
  args = parser.parse_args()
  mask_ratios = [float(m) for m in args.mask_ratios.split(',')]
  if any(not 0.0 <= m < 1.0 for m in mask_ratios):
    raise SystemExit(f'--mask-ratios: each must be in [0, 1), got {args.mask_ratios}')
  decoders = args.decoders.split(',')
  for d in decoders:
    parse_decoder(d)  # every entry is checked before anything is built
  for row in table(args.model, mask_ratios, decoders):
    print(json.dumps(row))


if __name__ == '__main__':
  main()
