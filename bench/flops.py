"""Analytic model FLOPs of SD-DiT settings against the plain DiT of the same size: no compile.

  python bench/flops.py --config=configs/sddit_s.py       # a config's own layout and head
  python bench/flops.py --model=DiT-XL/2
  python bench/flops.py --model=DiT-XL/2 --mask-ratios=0.2,0.5 --decoders=separate,split:4
  python bench/flops.py --tiny                # smoke run (bench/tiny.py): DiT-S/2, two rows

An SD-DiT step runs the masked student (forward + backward) and the teacher encoder (forward
only) where DiT runs one full forward + backward, so at equal MFU their step-time ratio is
the ratio of model FLOPs per training image printed here (`ratio_vs_dit`). It says which
settings can meet a step-time target before any device time is spent: e.g.
"SD-DiT-XL/2 at most 1.15x DiT-XL/2" (docs/results.md). One JSON line per setting; with
--config, the first SD-DiT line is the config's own defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import costs  # noqa: E402  (bench/costs.py)
import tiny  # noqa: E402  (bench/tiny.py)
from diffdis_jax.tasks import make_task  # noqa: E402
from train_step import bench_config  # noqa: E402  (bench/train_step.py)


def parse_decoder(spec: str):
  """'separate' (MaskDiT's extra decoder, the default) or 'split:N' (the stack's last N)."""
  mode, _, depth = spec.partition(':')
  if mode not in ('separate', 'split') or (mode == 'split') != bool(depth):
    raise SystemExit(f"--decoders: each entry is 'separate' or 'split:N', got {spec!r}")
  return mode, int(depth) if depth else None


def describe_decoder(model_config) -> str:
  if model_config.decoder_mode == 'split':
    return f'split:{model_config.decoder_depth}'
  return f'separate:{model_config.decoder_depth}x{model_config.decoder_width}'


def flops_row(config, dit_flops: float) -> dict:
  flops = costs.sddit_flops(make_task(config).build_model(), config)
  head = config.model.head
  return {'bench': 'flops', 'model': config.model.name, 'method': 'sddit',
          'mask_ratio': config.sddit.mask_ratio, 'decoder': describe_decoder(config.model),
          'head': f"{head['hidden']}/{head['bottleneck']}/{head['out_dim']}",
          **{k: round(v / 1e9, 2) for k, v in flops.items()},
          'ratio_vs_dit': round(flops['train_flops_per_image'] / dit_flops, 4)}


def variant(model_name: str, config_file: str, mask_ratio=None, decoder=None):
  """The SD-DiT config to count: the base (or `config_file`'s), with a mask ratio and decoder
  layout when given."""
  config = bench_config(model_name, 'sddit', batch=1, config_file=config_file)
  if mask_ratio is not None:
    config.sddit.mask_ratio = mask_ratio
  if decoder is not None:
    mode, depth = parse_decoder(decoder)
    config.model.decoder_mode = mode
    if depth is not None:
      config.model.decoder_depth = depth
  return config


def table(model_name: str, mask_ratios, decoders, config_file: str = ''):
  dit_config = bench_config(model_name, 'dit', batch=1, config_file=config_file)
  dit = costs.sddit_flops(make_task(dit_config).build_model(), dit_config)['train_flops_per_image']
  rows = [{'bench': 'flops', 'model': dit_config.model.name, 'method': 'dit',
           'train_flops_per_image': round(dit / 1e9, 2), 'ratio_vs_dit': 1.0}]
  if config_file:
    rows.append({**flops_row(variant(model_name, config_file), dit), 'config': config_file})
  rows += [flops_row(variant(model_name, config_file, m, d), dit)
           for d in decoders for m in mask_ratios]
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='DiT-XL/2')
  parser.add_argument('--config', default='',
                      help="a config file (configs/sddit_s.py): its model, layout and head; "
                           "then only the --mask-ratios / --decoders given are added")
  parser.add_argument('--mask-ratios', default=None,
                      help='comma-separated (default 0.0,...,0.5; with --config: none)')
  parser.add_argument('--decoders', default=None,
                      help="comma-separated: 'separate' (MaskDiT 8x512, the default) or "
                           "'split:N' (the stack's last N blocks decode); default "
                           "separate,split:4 (with --config: the config's own)")
  args = tiny.parse_args(parser, argv, model='DiT-S/2', mask_ratios='0.2', decoders='split:2')
  default_masks = '' if args.config else '0.0,0.1,0.2,0.3,0.4,0.5'
  masks = args.mask_ratios if args.mask_ratios is not None else default_masks
  mask_ratios = [float(m) for m in masks.split(',') if m]
  if any(not 0.0 <= m < 1.0 for m in mask_ratios):
    raise SystemExit(f'--mask-ratios: each must be in [0, 1), got {masks}')
  default_decoders = '' if args.config else 'separate,split:4'
  decoders = [d for d in (args.decoders if args.decoders is not None
                          else default_decoders).split(',') if d]
  for d in decoders:
    parse_decoder(d)  # every entry is checked before anything is built
  if args.config and mask_ratios and not decoders:
    decoders = [None]                 # mask ratios on the config's own layout
  if args.config and decoders and not mask_ratios:
    mask_ratios = [None]
  for row in table(args.model, mask_ratios, decoders, args.config):
    print(json.dumps(row))


if __name__ == '__main__':
  main()
