"""What a train step costs: analytic model FLOPs (DiT / SD-DiT), device peaks for MFU, and
XLA's memory and FLOP analysis of a compiled step.

The analytic model FLOPs of DiT / SD-DiT (what MFU divides by) live with the method, in
diffdis_jax/tasks/sddit/flops.py, because studies compare variants at equal compute with them;
this module re-exports them for the benchmarks. XLA's own count of the compiled step
(`cost_analysis`) is reported beside them as a check.
"""
from __future__ import annotations

from diffdis_jax.tasks.sddit.flops import dit_block_macs, head_macs, sddit_flops  # noqa: F401

# Dense bfloat16 peaks (FLOP/s, vendors' figures without sparsity) by the device kind JAX
# reports, matched on the longest prefix; MFU is left out for anything else (e.g. CPUs).
PEAK_BF16_FLOPS = {
    'NVIDIA H100': 989e12,            # SXM ('NVIDIA H100 80GB HBM3')
    'NVIDIA H100 PCIe': 756e12,
    'NVIDIA H100 NVL': 835e12,
    'NVIDIA H200': 989e12,
    'NVIDIA A100': 312e12,
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12, 'TPU v5e': 197e12,
    'TPU v5p': 459e12, 'TPU v5': 459e12,
    'TPU v6 lite': 918e12, 'TPU v6e': 918e12,
}


def peak_flops(device_kind: str):
  """The device's dense bf16 peak, or None when the table above does not know it."""
  matches = [kind for kind in PEAK_BF16_FLOPS if device_kind.startswith(kind)]
  return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def compiled_stats(compiled) -> dict:
  """XLA's analysis of a compiled step: buffer sizes, the peak they imply, and its FLOP count.

  peak_bytes_estimate = arguments + outputs - donated (aliased) + temporaries, per device.
  """
  stats = {}
  memory = compiled.memory_analysis()
  if memory is not None:
    fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
              'temp_size_in_bytes', 'generated_code_size_in_bytes')
    analysis = {f: int(getattr(memory, f)) for f in fields if hasattr(memory, f)}
    stats['compiled_memory'] = analysis
    stats['peak_bytes_estimate'] = (
        analysis.get('argument_size_in_bytes', 0) + analysis.get('output_size_in_bytes', 0) -
        analysis.get('alias_size_in_bytes', 0) + analysis.get('temp_size_in_bytes', 0))
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and 'flops' in cost:
      stats['xla_flops'] = float(cost['flops'])
  except Exception:  # pylint: disable=broad-except
    pass  # not every backend reports costs
  return stats
