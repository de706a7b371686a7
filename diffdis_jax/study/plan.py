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

from diffdis_jax.core import files
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.modes.checks import check_run
from diffdis_jax.core.overrides import OverrideError
from diffdis_jax.study.spec import Study, Variant, eval_steps

SETTINGS_FILE = 'study.json'   # DIR/<study>/study.json: the settings every run there shares
RECORD_FILE = 'study_run.json'  # DIR/<study>/<variant>/seed<k>/study_run.json


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

  def to_json(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, as on disk


@dataclasses.dataclass
class PlannedRun:
  variant: Variant
  seed: int
  workdir: str
  config: object

  @property
  def name(self) -> str:
    return f'{self.variant.name}/seed{self.seed}'


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
                set_items, fast_compile: bool) -> tuple[Settings, list]:
  """Settings and the chosen variants from the flags' values (None: the scale's default)."""
  known = [v.name for v in study.variants]
  chosen = [name.strip() for name in only.split(',') if name.strip()] if only else known
  unknown = [name for name in chosen if name not in known]
  if unknown:
    raise StudyError(f'--only: unknown {study.name} variant(s) {", ".join(unknown)}; '
                     f'known: {", ".join(known)}')
  _positive(seeds, '--seeds')
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
                      samples=samples, set=parse_set(set_items), fast_compile=fast_compile)
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
    diff = [f'{k}={saved.get(k)!r} (this command: {mine[k]!r})' for k in sorted(mine)
            if saved.get(k) != mine[k]]
    if diff:
      raise StudyError(f'--out={out} holds a {settings.study} study with other settings: '
                       f'{"; ".join(diff)}; repeat them to resume, or pass another --out')


def plan(study: Study, settings: Settings, variants, seeds: int,
         out: str) -> list[PlannedRun]:
  """One PlannedRun per variant and seed; a bad --set field or value fails here."""
  runs = []
  for v in variants:
    for seed in range(seeds):
      try:
        config = study.build_config(settings.scale, v.name, seed, settings.steps, settings.set,
                                    settings.samples)
      except OverrideError as e:
        raise StudyError(str(e)) from None
      workdir = os.path.join(os.path.abspath(out), settings.study, v.name, f'seed{seed}')
      runs.append(PlannedRun(v, seed, workdir, config))
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
