"""The files a study's runs read, fingerprinted, so that runs paired by seed are known to
share them.

A study's runs are compared by seed, often across sessions. Their configs name the latents,
the VAE that decodes samples, the classifier behind fd_fmnist and, for a fine-tune, the
pretrained generator, by path. Rebuilding one of those (`make fmnist` again) keeps the path
and changes the contents, and the config, the run identity and the study settings all stay
the same: a run made before the rebuild would resume, or be paired, with runs made after it,
and their differences would mean nothing. Each run's record keeps the contents' fingerprint;
a run whose inputs changed since it began is refused, and the report names any input that
its runs do not share.
"""
from __future__ import annotations

import hashlib
import os

from diffdis_jax.core import files

# config field -> the part of the folder it names whose contents the run depends on
# (a pretrained generator's workdir also holds logs that do not matter)
INPUT_FIELDS = {
    'data.dir': '',
    'data.vae_path': '',
    'sample.vae': '',
    'eval.classifier_dir': '',
    'init.pretrained_generator': 'checkpoints',
}


def _field(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    if part not in node:
      return None
    node = node[part]
  return node


def fingerprint_path(path: str) -> str:
  """sha256 of a file's contents, or of a folder's files (relative names and contents)."""
  if os.path.isfile(path):
    return files.file_sha256(path)
  digest = hashlib.sha256()
  for folder, _, names in sorted(os.walk(path)):  # sorted: the same order on every host
    for name in sorted(names):
      full = os.path.join(folder, name)
      digest.update(os.path.relpath(full, path).encode() + b'\0')
      digest.update(files.file_sha256(full).encode())
  return digest.hexdigest()


def fingerprint_inputs(config) -> dict[str, str]:
  """{field: fingerprint} of every input file or folder the config names and that exists."""
  out, seen = {}, {}  # data.vae_path and sample.vae usually name one folder: hash it once
  for field, part in INPUT_FIELDS.items():
    path = _field(config, field)
    if isinstance(path, str) and path and os.path.exists(os.path.join(path, part)):
      full = os.path.realpath(os.path.join(path, part))
      if full not in seen:
        seen[full] = fingerprint_path(full)[:16]
      out[field] = seen[full]
  return out


def changed_inputs(recorded: dict | None, now: dict) -> list[str]:
  """The fields whose contents differ from those a run recorded when it began (a run
  recorded before inputs were fingerprinted has nothing to compare)."""
  return sorted(f for f in now if recorded and f in recorded and recorded[f] != now[f])


def mixed_inputs(records) -> dict[str, list[str]]:
  """{field: its distinct fingerprints} for each input that the records do not all share."""
  seen: dict[str, set] = {}
  for record in records:
    for field, value in (record.get('inputs') or {}).items():
      seen.setdefault(field, set()).add(value)
  return {field: sorted(values) for field, values in seen.items() if len(values) > 1}
