"""Which run a workdir belongs to: a workdir holding checkpoints of another model or method
must not be trained on, sampled or evaluated as if it were this config's.

The first run in a workdir writes run_identity.json (the fields that fix the shapes of the
train state) and config.json (the whole config, for people); later runs compare.
"""
from __future__ import annotations

import json
import os

from diffdis_jax.core import files
from diffdis_jax.core.checks import ConfigError

IDENTITY_FILE = 'run_identity.json'
IDENTITY_FIELDS = ('method', 'model', 'data.name')
# fields of a config that the identity holds where the config has them: what a checkpoint's
# numbers mean (an SD-DiT trained on EDM samples garbage under flow's sampler)
OPTIONAL_FIELDS = ('objective',)
# fields added after runs began, with the value every run before them had: an identity saved
# without one reads as that value, so those workdirs still resume
ADDED_LATER = {'objective': 'edm', 'model.time_freq_shift': 0.0}


class WorkdirMismatch(ConfigError):
  pass


def identity(config, objective) -> dict:
  """IDENTITY_FIELDS of `config`, plus whether the objective keeps a teacher in the state."""
  out = {}
  for field in IDENTITY_FIELDS:
    value = config
    for part in field.split('.'):
      value = value[part]
    out[field] = value.to_dict() if hasattr(value, 'to_dict') else value
  out.update({field: config[field] for field in OPTIONAL_FIELDS if field in config})
  out['teacher'] = objective.uses_teacher(config)
  return json.loads(json.dumps(out))


def check_identity(config, objective, workdir: str):
  """Stop before touching a workdir whose checkpoints belong to a different model or method."""
  path = os.path.join(workdir, IDENTITY_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  diff = differences(saved, identity(config, objective))
  if diff:
    raise WorkdirMismatch(
        f'workdir {workdir} holds a run with different {"; ".join(diff)}; use another '
        '--workdir or the config that run was started with')


def _flat(tree, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def differences(saved: dict, mine: dict) -> list[str]:
  """'field: A in the workdir, B here' for each leaf field (model.width, not model) that
  differs between two nested dicts; a field of ADDED_LATER that `saved` lacks reads as the
  value it stands for."""
  saved, mine = _flat(saved), _flat(mine)
  saved.update({k: v for k, v in ADDED_LATER.items() if k in mine and k not in saved})
  missing = '(not set)'
  return [f'{k}: {saved.get(k, missing)!r} in the workdir, {mine.get(k, missing)!r} here'
          for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)]


def write_identity(config, objective, workdir: str):
  """run_identity.json and config.json, once (the first run in the workdir)."""
  path = os.path.join(workdir, IDENTITY_FILE)
  if os.path.exists(path):
    return
  files.write_json(path, identity(config, objective))
  files.write_text(os.path.join(workdir, 'config.json'),
                   config.to_json_best_effort(indent=1, sort_keys=True))
