"""<workdir>/eval.json: one section per kind of evaluation, each rewritten on its own.

`--mode=eval` writes 'images' (FID and friends of a samples file against an ADM reference) and
'classifier' (fd_digits or fd_fmnist and sample_class_acc, for image sets with their own
classifier) for SD-DiT, and 'zeroshot' and 'retrieval' for DiffDis; a section is replaced
whole, the others are kept.
"""
from __future__ import annotations

import json
import os

from diffdis_jax.core import files

EVAL_FILE = 'eval.json'


def read_eval_json(workdir: str) -> dict:
  path = os.path.join(workdir, EVAL_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def update_eval_json(workdir: str, section: str, value: dict) -> str:
  """Sets `section` of <workdir>/eval.json, keeping the other sections."""
  content = read_eval_json(workdir)
  content[section] = value
  os.makedirs(workdir, exist_ok=True)
  return files.write_json(os.path.join(workdir, EVAL_FILE), content)
