"""What a study invocation will do, and every check of its input.

The checks run in two rounds so that bad input answers fast: `check_flags` and `plan` read
only the flags, --out, the recorded settings and the variants' configs; `check_runs` then
checks each run's config as launch/main.py would (`modes.check_run`: devices, files,
workdir identity) before anything is compiled. Each failure is one StudyError line.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
from typing import Optional

from diffdis_jax.core import files
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.modes.checks import check_run
from diffdis_jax.core.overrides import OverrideError
from diffdis_jax.study.spec import Study, Variant, eval_steps
from diffdis_jax.tasks import make_task
from diffdis_jax.train.step import final_phase_start

SETTINGS_FILE = 'study.json'   # DIR/<study>/study.json: the settings every run there shares
RECORD_FILE = 'study_run.json'  # DIR/<study>/<variant>/seed<k>/study_run.json
# what every variant shares: 'steps' (the same training steps) or 'flops' (the same training
# FLOPs as the study's reference variant spends in those steps, so a cheaper variant trains
# for more steps and is scored at the same compute marks)
BUDGETS = ('steps', 'flops')


class StudyError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every run of one study in one --out shares; a rerun must repeat them."""
  study: str
  scale: str
  steps: int
  eval_at: tuple
  samples: int
  set: dict
  fast_compile: bool
  budget: str = 'steps'

  def to_json(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, as on disk


# settings added since the first studies were written, and the value older ones ran with
SETTINGS_SINCE = {'budget': 'steps'}


@dataclasses.dataclass
class PlannedRun:
  variant: Variant
  seed: int
  workdir: str
  config: object
  # this run's own evaluation steps, and the mark (a step of the settings' eval_at) each one
  # stands for: the same steps, or under budget 'flops' the same training FLOPs
  eval_at: tuple = ()
  marks: tuple = ()
  cost: Optional[TrainingCost] = None   # analytic model FLOPs (None: unknown)

  @property
  def name(self) -> str:
    return f'{self.variant.name}/seed{self.seed}'

  @property
  def flops_per_image(self) -> Optional[float]:
    """Training FLOPs per image, averaged over the whole run (its final phase included)."""
    return None if self.cost is None else self.cost.mean_per_image(self.config.total_steps)

  def training_flops(self, step: int) -> Optional[float]:
    """Model FLOPs of `step` training steps of this run (None without an analytic count)."""
    return None if self.cost is None else self.cost.flops(step, self.config.batch_size)


@dataclasses.dataclass(frozen=True)
class TrainingCost:
  """A run's analytic model FLOPs per image, forward and backward: `per_image` up to step
  `final_start`, `final_per_image` after it. A final phase trains another config (MaskDiT's
  unmasked fine-tune sees twice the tokens of its masked steps), so it costs its own."""
  per_image: float
  final_start: Optional[int] = None
  final_per_image: Optional[float] = None

  def flops(self, steps: int, batch: int) -> float:
    main = steps if self.final_start is None else min(steps, self.final_start)
    final = (steps - main) * self.final_per_image if steps > main else 0.0
    return float(batch) * (main * self.per_image + final)

  def mean_per_image(self, steps: int) -> float:
    return self.flops(steps, 1) / steps if steps else self.per_image

  def steps_for(self, flops: float, batch: int) -> int:
    """The step count whose training spends `flops`, to the nearest step (at least 1)."""
    main = flops / (batch * self.per_image)
    if self.final_start is not None and main > self.final_start:
      rest = flops - self.final_start * batch * self.per_image
      main = self.final_start + rest / (batch * self.final_per_image)
    return max(1, round(main))


def training_cost(config) -> Optional[TrainingCost]:
  """The method's analytic training cost for `config` (None where it has no FLOP count)."""
  task = make_task(config)
  model = task.build_model()
  per_image = task.train_flops_per_image(model)
  start = final_phase_start(config)
  if per_image is None or start is None:
    return None if per_image is None else TrainingCost(per_image)
  final = make_task(task.final_phase_config()).train_flops_per_image(model)
  return TrainingCost(per_image, start, final)


def _equal_compute_steps(marks, spend, cost_at, batch: int) -> tuple:
  """The steps at which a variant has spent what the reference had at each mark (`spend(k)`
  FLOPs at step k). The last mark fixes the run's length and with it where a final phase
  starts (`cost_at(total_steps)`), so that length is found first, by fixed-point iteration."""
  total = cost_at(marks[-1]).steps_for(spend(marks[-1]), batch)
  for _ in range(8):  # the phase's start moves about a tenth of a step per step: settles fast
    again = cost_at(total).steps_for(spend(marks[-1]), batch)
    if again == total:
      break
    total = again
  cost = cost_at(total)
  return tuple(cost.steps_for(spend(k), batch) for k in marks[:-1]) + (total,)


def parse_set(items) -> dict:
  """['model.width=32', 'model.block_out_channels=(16, 32)'] -> {field: Python value};
  a value that is no Python literal stays a string."""
  out = {}
  for item in items or ():
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise StudyError(f'--set={item!r} is not FIELD=VALUE, e.g. --set=model.width=32')
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[key] = text
  return out


def _positive(value, flag: str):
  if value is None or value < 1:
    raise StudyError(f'{flag} must be a positive integer, got {value}')


def check_flags(study: Study, scale: str, only: str, seeds: int, steps, eval_at: str, samples,
                set_items, fast_compile: bool,
                budget: str = 'steps') -> tuple[Settings, list]:
  """Settings and the chosen variants from the flags' values (None: the scale's default)."""
  if budget not in BUDGETS:
    raise StudyError(f'--budget={budget!r} is not one of {list(BUDGETS)}')
  if budget == 'flops' and not study.reference:
    raise StudyError(f'--budget=flops needs a reference variant whose compute the others '
                     f'match; study {study.name} has none (use --budget=steps)')
  known = [v.name for v in study.variants]
  chosen = [name.strip() for name in only.split(',') if name.strip()] if only else known
  unknown = [name for name in chosen if name not in known]
  if unknown:
    raise StudyError(f'--only: unknown {study.name} variant(s) {", ".join(unknown)}; '
                     f'known: {", ".join(known)}')
  _positive(seeds, '--seeds')
  if scale not in study.scales:
    raise StudyError(f'--scale={scale}: study {study.name} has the scales '
                     f'{", ".join(study.scales)}')
  scale_cfg = study.scales[scale]
  steps = scale_cfg.steps if steps is None else steps
  _positive(steps, '--steps')
  samples = scale_cfg.samples if samples is None else samples
  _positive(samples, '--samples')
  if eval_at:
    try:
      points = sorted({int(x) for x in eval_at.split(',') if x.strip()} | {steps})
    except ValueError:
      raise StudyError(f'--eval_at={eval_at!r} is not a comma-separated list of step '
                       'counts, e.g. --eval_at=500,1000') from None
    if points[0] < 1 or points[-1] > steps:
      raise StudyError(f'--eval_at={eval_at}: every step count must be in 1..{steps} '
                       '(--steps, the budget)')
  else:
    points = eval_steps(scale_cfg.eval_fractions, steps)
  settings = Settings(study=study.name, scale=scale, steps=steps, eval_at=tuple(points),
                      samples=samples, set=parse_set(set_items), fast_compile=fast_compile,
                      budget=budget)
  order = [name for name in known if name in chosen]  # the table's order
  return settings, [study.variant(name) for name in order]


def check_out(out: str, settings: Settings):
  """--out is new, empty, or written by this driver with the same settings for this study."""
  path = os.path.abspath(out)
  if os.path.exists(path) and not os.path.isdir(path):
    raise StudyError(f'--out={out} is a file; pass a directory')
  if os.path.isdir(path) and os.listdir(path) and not any(
      os.path.isfile(os.path.join(path, name, SETTINGS_FILE)) for name in os.listdir(path)):
    raise StudyError(f'--out={out} holds files that launch/study.py did not write; pass a new '
                     'or empty directory (or one a study wrote before, to resume it)')
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise StudyError(f'--out={out} cannot be created or written ({parent})')
  saved_path = os.path.join(path, settings.study, SETTINGS_FILE)
  if os.path.isfile(saved_path):
    with open(saved_path) as f:
      saved = json.load(f)['settings']
    mine = settings.to_json()
    saved = {**SETTINGS_SINCE, **saved}
    diff = [f'{k}={saved.get(k)!r} (this command: {mine[k]!r})' for k in sorted(mine)
            if saved.get(k) != mine[k]]
    if diff:
      raise StudyError(f'--out={out} holds a {settings.study} study with other settings: '
                       f'{"; ".join(diff)}; repeat them to resume, or pass another --out')


def _build(study: Study, settings: Settings, name: str, seed: int, steps: int):
  try:
    return study.build_config(settings.scale, name, seed, steps, settings.set, settings.samples)
  except OverrideError as e:
    raise StudyError(str(e)) from None


def plan(study: Study, settings: Settings, variants, seeds: int,
         out: str) -> list[PlannedRun]:
  """One PlannedRun per variant and seed; a bad --set field or value fails here."""
  spend = None
  if settings.budget == 'flops':
    reference = _build(study, settings, study.reference, 0, settings.steps)
    reference_cost = training_cost(reference)
    if reference_cost is None:
      raise StudyError(f'--budget=flops: method {reference.method} has no analytic FLOP '
                       'count to match; use --budget=steps')
    spend = lambda k: reference_cost.flops(k, reference.batch_size)
  runs = []
  for v in variants:
    cost_at = lambda steps, name=v.name: training_cost(_build(study, settings, name, 0, steps))
    marks = tuple(settings.eval_at)
    own = marks
    if spend is not None:
      if cost_at(settings.steps) is None:
        raise StudyError(f'--budget=flops: variant {v.name} has no analytic FLOP count')
      batch = _build(study, settings, v.name, 0, settings.steps).batch_size
      own = _equal_compute_steps(marks, spend, cost_at, batch)
      if len(set(own)) < len(own):
        raise StudyError(f'--budget=flops: variant {v.name} would be scored twice at one step '
                         f'({list(own)} for the marks {list(marks)}); raise --steps')
    cost = cost_at(own[-1])
    for seed in range(seeds):
      config = _build(study, settings, v.name, seed, own[-1])
      workdir = os.path.join(os.path.abspath(out), settings.study, v.name, f'seed{seed}')
      runs.append(PlannedRun(v, seed, workdir, config, eval_at=own, marks=marks, cost=cost))
  return runs


def read_record(workdir: str) -> dict | None:
  path = os.path.join(workdir, RECORD_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_json(path: str, data):
  """Atomically; NaN and Inf are refused (records say null for what was not finite)."""
  files.write_json(path, data, allow_nan=False)


def check_runs(runs: list[PlannedRun], num_devices: int):
  """Each config as launch/main.py checks it, and each workdir holds nothing of another run."""
  for run in runs:
    try:
      check_run(run.config, 'train', run.workdir, num_devices)
    except ConfigError as e:
      raise StudyError(f'{run.name}: {e}') from None
    record = read_record(run.workdir)
    overrides = json.loads(json.dumps(run.variant.overrides))
    if record is not None and record['overrides'] != overrides:
      raise StudyError(f'{run.workdir} was run with the overrides {record["overrides"]}, '
                       f'but variant {run.variant.name} is now {overrides}; pass another '
                       '--out (configs/study.py changed since)')


def save_settings(out: str, settings: Settings) -> str:
  """DIR/<study>/study.json, once: it marks --out as a study's and fixes its settings.
  Returns the study's folder."""
  folder = os.path.join(os.path.abspath(out), settings.study)
  path = os.path.join(folder, SETTINGS_FILE)
  if not os.path.isfile(path):
    os.makedirs(folder, exist_ok=True)
    write_json(path, {'settings': settings.to_json(), 'written_by': 'launch/study.py'})
  return folder
