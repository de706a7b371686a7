"""Dotted-field overrides of a config ('model.width': 96): configs, studies and tests share
this one setter, so a misspelt field fails the same way everywhere."""
from __future__ import annotations

from diffdis_jax.core.checks import ConfigError


class OverrideError(ConfigError):
  pass


def apply_overrides(config, overrides: dict, source: str = 'overrides'):
  """Sets each dotted field of `overrides` in place and returns `config`; a field the config
  lacks or a value of the wrong type raises OverrideError naming `source`."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for part in path:
      if part not in node:
        raise OverrideError(f'{source}: the config has no field {key!r}')
      node = node[part]
    if not hasattr(node, 'keys') or last not in node:
      raise OverrideError(f'{source}: the config has no field {key!r}')
    try:
      node[last] = value
    except (TypeError, ValueError) as e:
      raise OverrideError(f'{source}: {key}={value!r}: {str(e).splitlines()[0]}') from None
  return config
