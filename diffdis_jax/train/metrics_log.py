"""<workdir>/metrics.jsonl: one JSON object per logged step, beside clu's TensorBoard writer."""
from __future__ import annotations

import json
import math
import os
from typing import Any

from diffdis_jax.core import files


def _plain(value: Any):
  value = value.item() if hasattr(value, 'item') else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN or Inf
  return value


class JsonlWriter:
  """Appends records; on resume, `truncate_after(step)` drops what a killed run logged past
  the checkpoint it restarts from, so the merged file has each step once."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled

  def write(self, step: int, values: dict[str, Any]):
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _plain(v) for k, v in sorted(values.items())}}
    files.append_text(self.path, json.dumps(record) + '\n',
                      what=f'the step {step} line of metrics.jsonl')

  def truncate_after(self, step: int):
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
      try:
        if json.loads(line)['step'] <= step:
          kept.append(line)
      except (ValueError, KeyError):
        pass  # a line cut short by a kill
    files.write_text(self.path, ''.join(kept))


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]
