"""A study's convergence plot: each metric against training steps and against training FLOPs,
one curve per variant (the mean over seeds) in a band of ±1 std. How a convergence claim is
read, so it must be readable at a glance: labelled axes, a legend, and each metric's better
direction in its title.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use('Agg')  # files only: no display on training hosts
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

BETTER = {'lower': 'lower is better', 'higher': 'higher is better'}


def series(variant: dict, metric: str):
  """(steps, flops, mean, std) over the marks where the variant has a finite mean; flops is
  None when the variant has no analytic count."""
  rows = []
  for mark, stats in variant['summary'].items():
    stats = stats[metric]
    if stats['mean'] is None:
      continue
    flops = variant['eval_flops'].get(mark)
    rows.append((variant['eval_steps'][mark], flops, stats['mean'], stats['std'] or 0.0))
  rows.sort()
  if not rows:
    return None
  steps, flops, mean, std = (list(c) for c in zip(*rows))
  return (np.array(steps), None if None in flops else np.array(flops), np.array(mean),
          np.array(std))


def write_curves(results: dict, path: str) -> dict:
  """One row per metric, columns 'against steps' and 'against training FLOPs'; PNG at `path`.
  Returns {panel title: [the variants drawn in it]}."""
  metrics = list(results['metrics'].items())
  variants = results['variants']
  fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 3.6 * len(metrics)), squeeze=False)
  colors = plt.get_cmap('tab10')
  drawn = {}
  for row, (metric, direction) in enumerate(metrics):
    for col, (x_name, x_label) in enumerate((('steps', 'training steps'),
                                             ('flops', 'training FLOPs (analytic, model)'))):
      ax = axes[row][col]
      names = []
      for i, (name, v) in enumerate(variants.items()):
        data = series(v, metric)
        if data is None:
          continue
        steps, flops, mean, std = data
        x = steps if x_name == 'steps' else flops
        if x is None:
          continue
        label = f'{name} (n={len(v["seeds"])})'
        ax.plot(x, mean, marker='o', color=colors(i % 10), label=label)
        ax.fill_between(x, mean - std, mean + std, color=colors(i % 10), alpha=0.18)
        names.append(name)
      ax.set_xlabel(x_label)
      ax.set_ylabel(metric)
      title = f'{metric} ({BETTER[direction]}) against {x_label.split(" (")[0]}'
      ax.set_title(title, fontsize=10)
      drawn[title] = names
      ax.grid(alpha=0.3)
      if names:
        ax.legend(fontsize=8)
  budget = ('equal compute' if results.get('budget') == 'flops' else 'equal steps')
  fig.suptitle(f'{results["study"]} study, scale {results["scale"]["name"]}, {budget}: '
               'mean over seeds, band ±1 std', fontsize=11)
  fig.tight_layout()
  partial = path + '.partial.png'   # a reader never sees half a file
  fig.savefig(partial, dpi=100)
  plt.close(fig)
  os.replace(partial, path)
  return drawn


TEACHER_PANELS = (
    ('teacher_usage_entropy', 'entropy of the batch-mean target (nats): log K = all '
     'prototypes alike, 0 = one wins all'),
    ('teacher_prototypes_won', 'prototypes that are the argmax of at least one token'),
    ('teacher_entropy', 'mean entropy of one token\'s target (nats): sharpness'),
    ('dis_patch_kl', 'KL(teacher target || student), per token (nats)'),
)


def write_teacher_curves(results: dict, path: str):
  """The teacher's collapse diagnostics against steps, one curve per variant with a teacher
  (mean over seeds, band from the lowest to the highest seed); PNG at `path`."""
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.2))
  colors = plt.get_cmap('tab10')
  for ax, (metric, title) in zip(axes.flat, TEACHER_PANELS):
    for i, (name, v) in enumerate(results['variants'].items()):
      data = v.get('teacher', {}).get(metric)
      if data is None:
        continue
      ax.plot(data['steps'], data['mean'], color=colors(i % 10),
              label=f'{name} (n={len(v["seeds"])})')
      ax.fill_between(data['steps'], data['min'], data['max'], color=colors(i % 10),
                      alpha=0.18)
    ax.set_xlabel('training steps')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.suptitle(f'{results["study"]} study, scale {results["scale"]["name"]}: the teacher\'s '
               'targets over training (mean over seeds, band min to max)', fontsize=11)
  fig.tight_layout()
  partial = path + '.partial.png'
  fig.savefig(partial, dpi=100)
  plt.close(fig)
  os.replace(partial, path)
