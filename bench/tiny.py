"""The bench scripts' tiny mode: `python bench/<script>.py --tiny` runs the script's own code
path at toy sizes, so that tests/test_bench_tiny.py can run every script and a bench cannot
break unnoticed (bench/input_pipeline.py stopped on a NameError that nothing saw: issue 34).

A tiny run measures nothing worth reporting; it proves that the script still runs end to end
and prints its JSON lines. What --tiny changes is written once per script, as the defaults it
gives the script's flags (`parse_args(parser, argv, batch=2, ...)`, or `absl_tiny` for the
scripts built on absl flags), so a flag given on the command line still wins. Scripts that
build a DiT from a config shrink it with `shrink_dit`: the tests' tiny SD-DiT.
"""
from __future__ import annotations

import argparse

# tests/conftest.py's tiny_sddit_config sizes, on the bench's latent shape (4 channels)
TINY_DIT = {'model.input_size': 8, 'model.width': 32, 'model.depth': 2, 'model.num_heads': 2,
            'model.decoder_depth': 1, 'model.decoder_width': 32, 'model.decoder_heads': 2,
            'model.num_classes': 10,
            'model.head': dict(hidden=32, bottleneck=16, out_dim=32, num_layers=3)}
HELP = 'smoke run at toy sizes (tests/test_bench_tiny.py): proves the script runs, times nothing'


def parse_args(parser: argparse.ArgumentParser, argv=None, **tiny) -> argparse.Namespace:
  """`parser`'s arguments with a --tiny flag added; with --tiny, `tiny` are the defaults."""
  parser.add_argument('--tiny', action='store_true', help=HELP)
  args = parser.parse_args(argv)
  if args.tiny:
    parser.set_defaults(**tiny)
    args = parser.parse_args(argv)
  return args


def absl_tiny(flag_values, tiny: bool, **values):
  """The absl version of `parse_args`'s defaults: with `tiny`, each named flag that the
  command line did not set is parsed from its tiny value, written as on a command line
  (a config file flag loads the file)."""
  if tiny:
    for name, value in values.items():
      if not flag_values[name].present:
        flag_values[name].parse(value)


def shrink_dit(config):
  """`config` with the tiny SD-DiT's sizes (DiT counterparts keep their own decoder)."""
  from diffdis_jax.core.overrides import apply_overrides  # pylint: disable=g-import-not-at-top
  overrides = dict(TINY_DIT)
  if config.model.decoder_mode == 'split' and config.model.decoder_depth == 0:
    overrides.pop('model.decoder_depth')  # DiT: no decoder blocks to shrink
  return apply_overrides(config, overrides, 'bench --tiny')
