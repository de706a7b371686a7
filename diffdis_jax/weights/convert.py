"""Reading safetensors files and mapping a PyTorch state dict onto a Flax parameter tree.

The mapping is driven by the module itself: `expected_params` traces the module's `init` to
get every parameter path and shape; a converter renames each PyTorch key to a module path
(`rename`), and `convert_state_dict` picks the parameter inside that module from what the
module is (a `layers.Dense` holds `dense/kernel`, a `layers.Conv` holds `conv/kernel`, a norm
holds `norm/scale`) and lays out the array accordingly (Linear weights transposed, Conv
weights OIHW -> HWIO). Everything that does not line up is collected and reported at once.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Iterable, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

Path = tuple[str, ...]
PICKLE_SUFFIXES = ('.pt', '.pth', '.bin', '.ckpt', '.pkl')

CONVERT_ONE_LINER = (
    "python -c \"import sys, torch, safetensors.torch as st; "
    "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
    "sd = sd.get('ema', sd.get('state_dict', sd)); "
    "st.save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])\" IN.pt OUT.safetensors")


class WeightMismatchError(ValueError):
  """A state dict whose keys or shapes do not match the model; the message lists them."""


def load_safetensors(path) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors file (or of a sharded `*.safetensors.index.json`) as numpy.

  Pickle checkpoints (.pt/.pth/.bin/.ckpt) are refused: unpickling runs arbitrary code.
  Convert one once with the command in the error message.
  """
  path = os.fspath(path)
  if path.endswith(PICKLE_SUFFIXES):
    raise ValueError(f'{path} is a pickle checkpoint, which is not loaded; convert it to '
                     f'safetensors first: {CONVERT_ONE_LINER}')
  if not os.path.exists(path):
    raise FileNotFoundError(f'no such weights file: {path}')
  if path.endswith('.index.json'):
    with open(path) as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
    out = {}
    for shard in shards:
      out.update(load_safetensors(os.path.join(os.path.dirname(path), shard)))
    return out
  return safetensors.numpy.load_file(path)  # bfloat16 comes back as ml_dtypes.bfloat16


def expected_params(module: nn.Module, *args, **kwargs) -> dict[Path, tuple[int, ...]]:
  """Flat {path: shape} of the parameters `module.init(rng, *args, **kwargs)` creates,
  without allocating them."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  params = flax.core.meta.unbox(variables["params"])
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params).items()}


def apply_renames(key: str, rules: Iterable[tuple[str, str]]) -> str:
  """Regex renames in order, then PyTorch list indices `.3.` -> Flax submodule names `_3.`."""
  for pattern, repl in rules:
    key = re.sub(pattern, repl, key)
  return re.sub(r'\.(\d+)(?=\.|$)', r'_\1', key)


def _place(module_path: Path, leaf: str, value: np.ndarray, expected) -> tuple[Path, np.ndarray]:
  """Put a PyTorch `weight`/`bias` of the module at `module_path` where our module keeps it."""
  def has(*rest):
    return module_path + rest in expected
  if has('dense', 'kernel'):
    if leaf == 'weight':
      # A 1x1 conv stored where we use a Dense (old VAE attention, SD 1.x proj_in variants).
      value = value.reshape(value.shape[0], -1) if value.ndim == 4 else value
      return module_path + ('dense', 'kernel'), value.T
    return module_path + ('dense', leaf), value
  if has('conv', 'kernel'):
    if leaf == 'weight':
      if value.ndim == 2:  # a Linear stored where we use a 1x1 conv
        value = value[:, :, None, None]
      return module_path + ('conv', 'kernel'), value.transpose(2, 3, 1, 0)
    return module_path + ('conv', leaf), value
  if has('norm', 'scale'):
    return module_path + ('norm', 'scale' if leaf == 'weight' else leaf), value
  return module_path + (leaf,), value


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    expected: Mapping[Path, tuple[int, ...]],
    rules: Iterable[tuple[str, str]] = (),
    special: Optional[Callable[[str, np.ndarray], Optional[list]]] = None,
    ignore: Iterable[str] = (),
    what: str = 'model',
) -> dict:
  """Nested float32 Flax params from a PyTorch state dict, or WeightMismatchError.

  `special(key, value)` may return [(path, array), ...] for keys that are not a plain
  rename (split or reshaped tensors), or None to fall through to `rules`. Keys fully matching
  a regex in `ignore` are skipped (buffers, duplicates checked elsewhere).
  """
  produced: dict[Path, np.ndarray] = {}
  unexpected, mis_shaped, seen = [], [], set()
  ignore = [re.compile(p) for p in ignore]
  for key, value in state_dict.items():
    if any(p.fullmatch(key) for p in ignore):
      continue
    value = np.asarray(value)
    entries = special(key, value) if special is not None else None
    if entries is None:
      name = apply_renames(key, rules)
      module_path, _, leaf = name.rpartition('.')
      entries = [_place(tuple(module_path.split('.')) if module_path else (), leaf, value,
                        expected)]
    for path, array in entries:
      shown = '/'.join(path)
      if path not in expected:
        unexpected.append(f'{key} (-> {shown})')
      elif tuple(array.shape) != expected[path]:
        mis_shaped.append(f'{key} {tuple(value.shape)} -> {shown} needs {expected[path]}')
        seen.add(path)
      elif path in produced:
        unexpected.append(f'{key} (-> {shown}, given twice)')
      else:
        produced[path] = array
  missing = ['/'.join(p) for p in expected if p not in produced and p not in seen]
  if missing or unexpected or mis_shaped:
    lines = [f'{what}: the state dict does not match the model '
             f'({len(missing)} missing, {len(unexpected)} unexpected, '
             f'{len(mis_shaped)} mis-shaped)']
    for title, items in (('missing', missing), ('unexpected', unexpected),
                         ('mis-shaped', mis_shaped)):
      if items:
        lines.append(f'  {title}:')
        lines.extend(f'    {item}' for item in items)
    raise WeightMismatchError('\n'.join(lines))
  params = {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in produced.items()}
  return flax.traverse_util.unflatten_dict(params)


def config_value(config: Mapping, key: str, default):
  value = config.get(key, default)
  return default if value is None else value


def check_config(config: Mapping, what: str, allowed: Mapping[str, Iterable]) -> None:
  """Fail on config values our module does not implement (rather than computing wrongly)."""
  bad = [f'{k}={config[k]!r} (supported: {list(v)})' for k, v in allowed.items()
         if k in config and config[k] not in list(v)]
  if bad:
    raise ValueError(f'{what}: unsupported config: ' + '; '.join(bad))
