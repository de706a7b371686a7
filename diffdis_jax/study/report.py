"""The finished runs of a study folder -> DIR/<study>/results.json, table.md and curves.png
(and teacher.png: the teacher's collapse diagnostics over training, where runs have a teacher).

Every finished run found under the folder counts, not only those of the latest invocation, so
a study grown over several commands (more variants, more seeds) is reported whole. The
standard deviation is the sample one (n - 1) over seeds; with fewer than two seeds it is null
and the table shows the single value with "(n=1)".

With a reference variant (`Study.reference`), each other variant is also compared with it seed
by seed: the seed moves every variant of a study together (same data order, same noise), so
the mean and std of the per-seed differences say more than two overlapping mean ± std.
"""
from __future__ import annotations

import datetime
import math
import os

from diffdis_jax.core import files
from diffdis_jax.study import curves
from diffdis_jax.study.inputs import mixed_inputs
from diffdis_jax.study.plan import read_record, training_cost, write_json
from diffdis_jax.study.spec import Study
from diffdis_jax.train.metrics_log import read_metrics


ABSENT = 'absent'  # the run did not measure the metric (e.g. zero-shot without a text head)


def summarise(values) -> dict:
  """mean, sample std and counts over seeds of one metric. Each value is a number, None (the
  run measured it but it was not finite) or ABSENT."""
  finite = [v for v in values if v is not None and v is not ABSENT]
  n = len(finite)
  mean = math.fsum(finite) / n if n else None
  std = (math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n >= 2 else None)
  return {'mean': mean, 'std': std, 'n': n, 'not_finite': sum(v is None for v in values),
          'absent': sum(v is ABSENT for v in values)}


def _finished_records(variant_dir: str) -> list[dict]:
  if not os.path.isdir(variant_dir):
    return []
  records = [read_record(os.path.join(variant_dir, d)) for d in sorted(os.listdir(variant_dir))
             if d.startswith('seed')]
  return sorted((r for r in records if r and r['complete']), key=lambda r: r['seed'])


def collect(study: Study, study_dir: str, saved_settings: dict, command: str) -> dict:
  scale = study.scales[saved_settings['scale']]
  metrics = [name for name, _ in study.metrics]
  variants, records = {}, []
  for v in study.variants:
    done = _finished_records(os.path.join(study_dir, v.name))
    records += done
    if not done:
      continue
    steps = [str(s) for s in saved_settings['eval_at']]
    first = done[0]
    variant_config = lambda: study.build_config(  # called within this iteration
        saved_settings['scale'], v.name, first['seed'], int(steps[-1]), saved_settings['set'],
        saved_settings['samples'])
    variants[v.name] = {
        'what': v.what,
        'overrides': first['overrides'],
        'seeds': [r['seed'] for r in done],
        'num_params': first.get('num_params'),
        'per_seed': {str(r['seed']): r['evals'] for r in done},
        'summary': {step: {m: summarise([r['evals'].get(step, {}).get(m, ABSENT) for r in done])
                           for m in metrics} for step in steps},
        'wall_seconds': {str(r['seed']): round(r['wall_seconds'], 1) for r in done},
        # the scoring's part of wall_seconds (runs recorded before it was timed have none)
        'score_seconds': {str(r['seed']): round(sum(r['score_seconds']), 1) for r in done
                          if 'score_seconds' in r},
        'compile_seconds': {str(r['seed']): r['compile_seconds'] for r in done},
        'load_average': {str(r['seed']): r['load_average'] for r in done},
        'hardware': first.get('hardware'),
        **compute(first, steps, variant_config),
    }
    teacher = teacher_series(os.path.join(study_dir, v.name), variants[v.name]['seeds'])
    if teacher:
      variants[v.name]['teacher'] = teacher
  return {
      'study': study.name,
      # inputs (latents, VAE, classifier, generator) whose contents differ between runs
      'mixed_inputs': mixed_inputs(records),
      'reference': study.reference or None,
      'cost_anchor': study.cost_anchor or None,
      'paired': paired_differences(variants, study.reference, study.metrics),
      # against the cost anchor too (SD-DiT studies: DiT), where that is another variant
      'paired_anchor': ({} if study.cost_anchor == study.reference else
                        paired_differences(variants, study.cost_anchor, study.metrics)),
      'base_config': study.base_config,
      'scale': {'name': saved_settings['scale'], 'what': scale.what},
      'settings': saved_settings,
      'budget': saved_settings.get('budget', 'steps'),
      'metrics': dict(study.metrics),
      'metrics_note': study.metric_note,
      'std': 'sample standard deviation (n - 1) over seeds; null with fewer than two',
      'command': command,
      'written': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'variants': variants,
  }


# what tells a healthy teacher from a collapsed one (objectives/sddit.teacher_diagnostics),
# logged at every log step of an SD-DiT run
TEACHER_METRICS = ('teacher_entropy', 'teacher_usage_entropy', 'teacher_prototypes_won',
                   'dis_patch_kl')


def teacher_series(variant_dir: str, seeds) -> dict:
  """{metric: {'steps': [...], 'mean': [...], 'min': [...], 'max': [...]}} over the seeds'
  metrics.jsonl, at the logged steps every seed has; {} for a run without a teacher."""
  per_seed = []
  for seed in seeds:
    path = os.path.join(variant_dir, f'seed{seed}', 'metrics.jsonl')
    if not os.path.exists(path):
      return {}
    per_seed.append({r['step']: r for r in read_metrics(os.path.dirname(path))
                     if 'teacher_usage_entropy' in r})
  steps = sorted(set.intersection(*(set(rows) for rows in per_seed))) if per_seed else []
  if not steps:
    return {}
  out = {}
  for metric in TEACHER_METRICS:
    if metric not in per_seed[0][steps[0]]:
      continue
    values = [[rows[s][metric] for rows in per_seed] for s in steps]
    out[metric] = {'steps': steps, 'mean': [math.fsum(v) / len(v) for v in values],
                   'min': [min(v) for v in values], 'max': [max(v) for v in values]}
  return out


def compute(record: dict, marks, variant_config) -> dict:
  """A variant's training compute from its first seed's record (every seed trains the same):
  steps, analytic FLOPs per image and in all, and the step and FLOPs of each mark. Records
  written before studies counted FLOPs ran at equal steps; their counts come from
  `variant_config()`, the variant's config as the study builds it (built only for those)."""
  if 'eval_steps' in record:
    return {'steps': record['steps'], 'batch_size': record['batch_size'],
            'train_flops_per_image': record['train_flops_per_image'],
            'training_flops': record['training_flops'],
            'eval_steps': {m: record['eval_steps'].get(m) for m in marks},
            'eval_flops': {m: record['eval_flops'].get(m) for m in marks}}
  config = variant_config()
  cost, batch = training_cost(config), config.batch_size
  total = lambda steps: None if cost is None else cost.flops(steps, batch)
  fpi = None if cost is None else cost.mean_per_image(config.total_steps)
  return {'steps': config.total_steps, 'batch_size': batch, 'train_flops_per_image': fpi,
          'training_flops': total(config.total_steps),
          'eval_steps': {m: int(m) for m in marks}, 'eval_flops': {m: total(m) for m in marks}}


def paired_differences(variants: dict, reference: str, metrics: tuple) -> dict:
  """{variant: {step: {metric: summary of (variant - reference) over the shared seeds, and
  'better': how many of those seeds favour the variant}}}; {} without a reference."""
  if not reference or reference not in variants:
    return {}
  ref = variants[reference]['per_seed']
  out = {}
  for name, v in variants.items():
    if name == reference:
      continue
    seeds = [k for k in v['per_seed'] if k in ref]
    out[name] = {}
    for step in v['summary']:
      out[name][step] = {}
      for m, direction in metrics:
        pairs = [(v['per_seed'][k].get(step, {}).get(m), ref[k].get(step, {}).get(m))
                 for k in seeds]
        diffs = [a - b for a, b in pairs if a is not None and b is not None]
        better = sum((d < 0) if direction == 'lower' else (d > 0) for d in diffs)
        out[name][step][m] = dict(summarise(diffs), seeds=len(diffs), better=better)
  return out


def _digits(level) -> int:
  """Decimals for a metric at this level: three for fractions (accuracies), one for fd."""
  return 3 if level is not None and abs(level) < 1.5 else 1


def _cell(stats: dict) -> str:
  if stats['mean'] is None:
    return 'not finite' if stats['not_finite'] else 'n/a'
  digits = _digits(stats['mean'])
  text = f'{stats["mean"]:.{digits}f}'
  text += f' ± {stats["std"]:.{digits}f}' if stats['std'] is not None else ' (n=1)'
  if stats['not_finite']:
    text += f' ({stats["not_finite"]} not finite)'
  return text


def table_markdown(results: dict) -> str:
  s = results['settings']
  arrows = {'lower': '↓', 'higher': '↑'}
  steps = [str(k) for k in s['eval_at']]
  metric_cols = [(step, m) for step in steps for m in results['metrics']]
  head = ['variant', 'seeds', 'params'] + [
      f'{m} {arrows[results["metrics"][m]]} @{step}' for step, m in metric_cols] + [
      'steps', 'train FLOPs', 's/run', 'scoring']
  anchor = results['variants'].get(results.get('cost_anchor') or '')
  anchor_fpi = anchor and anchor['train_flops_per_image']
  if anchor_fpi:
    head.insert(3, f'FLOPs/img ÷ `{results["cost_anchor"]}`')
  lines = [f'# {results["study"]} study: mean ± std over seeds', '',
           f'Base `{results["base_config"]}`, scale `{results["scale"]["name"]}` '
           f'({results["scale"]["what"]}); {s["steps"]} steps; metrics at steps '
           f'{", ".join(steps)}; {s["samples"]} samples per generation metric. '
           f'Std: {results["std"]}. s/run: mean wall seconds of a run, compile and '
           f'evaluation included; scoring: the evaluations\' share of it. train FLOPs: analytic model FLOPs of the whole run '
           f'(forward and backward). n/a: not measured. {results["metrics_note"]}', '',
           *_budget_lines(results), '',
           f'Command: `{results["command"]}`', '',
           *_mixed_input_lines(results.get('mixed_inputs')),
           '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name, v in results['variants'].items():
    walls = list(v['wall_seconds'].values())
    scored = v.get('score_seconds') or {}
    share = (f'{sum(scored.values()) / sum(v["wall_seconds"][k] for k in scored):.0%}'
             if scored else 'n/a')
    row = [f'`{name}`', str(len(v['seeds'])), f'{v["num_params"]:,}'] + [
        _cell(v['summary'][step][m]) for step, m in metric_cols] + [
        f'{v["steps"]:,}', _flops(v['training_flops']), f'{sum(walls) / len(walls):.0f}',
        share]
    if anchor_fpi:
      fpi = v['train_flops_per_image']
      row.insert(3, 'n/a' if fpi is None else f'{fpi / anchor_fpi:.2f}')
    lines.append('| ' + ' | '.join(row) + ' |')
  lines += [''] + [f'- `{name}`: {v["what"]}' for name, v in results['variants'].items()]
  lines += _paired_table(results, steps, results.get('paired'), results['reference'])
  lines += _paired_table(results, steps, results.get('paired_anchor'),
                         results.get('cost_anchor'))
  return '\n'.join(lines) + '\n'


def _mixed_input_lines(mixed: dict | None) -> list[str]:
  if not mixed:
    return []
  return [f'**Warning: the runs did not all read the same {field}** (fingerprints '
          f'{", ".join(values)}; `inputs` in each run\'s study_run.json): differences '
          'between them mix the method with the data.' for field, values in mixed.items()
          ] + ['']


def _flops(flops) -> str:
  return 'n/a' if flops is None else f'{flops:.3g}'


def _budget_lines(results: dict) -> list[str]:
  if results['budget'] != 'flops':
    return ['Equal steps: every variant trains the same steps and is scored at them.']
  ref = results['reference']
  lines = [f'Equal compute: every variant spends the training FLOPs that `{ref}` spends in '
           f'{results["settings"]["steps"]} steps, so a cheaper one trains longer; a column '
           f'@k is the compute of {ref}\'s step k. Each variant\'s own steps at the marks:']
  for name, v in results['variants'].items():
    own = ', '.join(str(v['eval_steps'][m]) for m in v['eval_steps'])
    lines.append(f'`{name}` {own};')
  return [' '.join(lines)]


def _signed(stats: dict, level) -> str:
  """A paired difference, at the decimals of the metric's own `level` (the reference's
  value): an fd difference of 1.2 is not written as 1.237."""
  if stats['mean'] is None:
    return 'n/a'
  digits = _digits(level)
  text = f'{stats["mean"]:+.{digits}f}'
  return text + (f' ± {stats["std"]:.{digits}f}' if stats['std'] is not None else ' (n=1)')


def _paired_table(results: dict, steps, paired: dict | None, reference: str | None
                  ) -> list[str]:
  """(variant - reference) at every mark, each seed against the same seed."""
  if not paired:
    return []
  arrows = {'lower': '↓', 'higher': '↑'}
  cols = [(step, m) for step in steps for m in results['metrics']]
  head = ['variant − reference'] + [f'{m} {arrows[results["metrics"][m]]} @{step}'
                                     for step, m in cols]
  lines = ['', f'## Paired by seed against `{reference}`', '',
           'Mean ± std over seeds of (variant − reference), each seed against the same seed; '
           'in brackets, the seeds on which the variant is better.', '',
           '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  levels = results['variants'][reference]['summary']
  for name, by_step in paired.items():
    cells = []
    for step, m in cols:
      stats = by_step.get(step, {}).get(m)
      level = levels.get(step, {}).get(m, {}).get('mean')
      cells.append('n/a' if stats is None else
                   f'{_signed(stats, level)} [{stats["better"]}/{stats["seeds"]}]')
    lines.append('| ' + ' | '.join([f'`{name}` − `{reference}`'] + cells) + ' |')
  return lines


def write_report(study: Study, study_dir: str, saved_settings: dict, command: str) -> dict:
  results = collect(study, study_dir, saved_settings, command)
  write_json(os.path.join(study_dir, 'results.json'), results)
  files.write_text(os.path.join(study_dir, 'table.md'), table_markdown(results))
  curves.write_curves(results, os.path.join(study_dir, 'curves.png'))
  if any('teacher' in v for v in results['variants'].values()):
    curves.write_teacher_curves(results, os.path.join(study_dir, 'teacher.png'))
  return results
