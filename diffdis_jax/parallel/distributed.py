"""Multi-process start-up."""
from __future__ import annotations

import os

import jax


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """jax.distributed.initialize when the run spans more than one process.

  GPU clusters and local tests pass the coordinator, process count and id explicitly; on a
  TPU pod slice (several hosts) jax detects them itself.
  """
  if coordinator_address is not None or (num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _on_multihost_tpu():
    jax.distributed.initialize()


def _on_multihost_tpu() -> bool:
  # Cloud TPU VMs name their workers here; a single-host slice has one
  hostnames = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hostnames.split(',') if h]) > 1
