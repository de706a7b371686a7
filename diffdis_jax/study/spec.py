"""What a study is: a base config, its scales and its variants, and how a run's config is made.

The studies themselves are configs as code (configs/study.py builds a `Study` per method);
this module holds only the mechanics, so the package needs nothing from the repository's
configs/ folder. A run's config is built in this order, later steps winning:

  base config -> the scale's overrides -> total_steps (the budget) -> `--set` overrides
  -> eval.metric_samples (the study's sample count) -> the variant's overrides -> seed

so `--set` changes the shared base (e.g. a tiny model for a smoke test) and never undoes
what makes a variant what it is.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from diffdis_jax.core.overrides import apply_overrides


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  what: str        # one line: what this variant is
  overrides: dict  # dotted config field -> value
  # config -> more overrides, read from the config before `overrides` apply: for a field that
  # depends on the scale, e.g. a DiT as deep as SD-DiT's encoder and decoder together
  derived: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class Scale:
  what: str
  steps: int                  # the budget: training steps of every run
  eval_fractions: tuple       # metrics are taken at these fractions of `steps`
  samples: int                # samples per generation metric (fd_digits depends on it)
  overrides: dict


@dataclasses.dataclass(frozen=True)
class Study:
  name: str
  base_config: str                  # where get_config lives, for reports: 'configs/demo.py'
  get_config: Callable              # () -> the base ml_collections config
  variants: tuple                   # Variant, in the table's order
  scales: dict                      # scale name -> Scale
  metrics: tuple                    # (metric, 'lower' | 'higher': which is better)
  metric_note: str                  # what the metrics are, for the table
  reference: str = ''               # variant the others are compared with seed by seed
  cost_anchor: str = ''             # variant whose FLOPs per image the table divides by

  def variant(self, name: str) -> Variant:
    for v in self.variants:
      if v.name == name:
        return v
    raise KeyError(name)

  def build_config(self, scale: str, variant_name: str, seed: int, steps: int, extra: dict,
                   samples: int):
    """The ml_collections config of one run (the order is the module docstring's)."""
    config = self.get_config()
    apply_overrides(config, self.scales[scale].overrides, f'scale {scale}')
    config.total_steps = steps
    apply_overrides(config, extra, '--set')
    config.eval.metric_samples = samples
    variant = self.variant(variant_name)
    derived = variant.derived(config) if variant.derived else {}
    apply_overrides(config, variant.overrides, f'variant {variant_name}')
    apply_overrides(config, derived, f'variant {variant_name}')
    config.seed = seed
    return config


def eval_steps(fractions, steps: int) -> list[int]:
  """The step counts at which metrics are taken: each fraction of the budget, at least 1."""
  return sorted({max(1, round(f * steps)) for f in fractions} | {steps})
