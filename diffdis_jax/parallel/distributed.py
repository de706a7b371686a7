"""Multi-process start-up."""
from __future__ import annotations

import glob
import importlib.util
import os

import jax


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """jax.distributed.initialize when the run spans more than one process.

  GPU clusters and local tests pass the coordinator, process count and id explicitly; on a
  TPU pod slice (several hosts) jax detects them itself. Must run before anything touches a
  device.
  """
  if coordinator_address is not None or (num_processes or 1) > 1:
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _on_cloud_tpu_vm():
    jax.distributed.initialize()
  else:
    return


def describe() -> str:
  """'process I of N: L local of G devices (platform)', for the run's first log lines."""
  return (f'process {jax.process_index()} of {jax.process_count()}: '
          f'{jax.local_device_count()} local of {jax.device_count()} devices '
          f'({jax.devices()[0].platform})')


def _cpu_collectives():
  # computations that span processes on CPU (tests, CPU clusters) need a cross-process
  # collectives library; jax 0.10 defaults to gloo, older releases to none
  if os.environ.get('JAX_PLATFORMS', '').split(',')[0] != 'cpu':
    return
  if jax.config.values.get('jax_cpu_collectives_implementation') in (None, 'none'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def _on_cloud_tpu_vm() -> bool:
  """A Cloud TPU VM, where jax reads the worker list from the environment or the metadata.

  GKE sets TPU_WORKER_HOSTNAMES; a TPU VM made with `gcloud compute tpus tpu-vm create` does
  not, so libtpu beside TPU chips counts too (jax then asks the metadata server for the
  workers; on a single-host slice it finds one process).
  """
  hostnames = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hostnames.split(',') if h]) > 1:
    return True
  if os.environ.get('JAX_PLATFORMS', 'tpu').split(',')[0] not in ('', 'tpu'):
    return False
  chips = glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*')
  return bool(chips) and importlib.util.find_spec('libtpu') is not None
