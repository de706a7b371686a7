"""Device mesh, logical-axis rules and shardings.

The mesh has three axes: 'data' (pure data parallelism), 'fsdp' (data parallelism with
parameters and optimizer state sharded) and 'tensor' (heads and MLP width split). The batch is
split over ('data', 'fsdp'); parameters follow the logical-axis rules of the config.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffdis_jax.core.checks import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


class MeshError(ConfigError):
  pass


def resolve_mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Replace a single -1 by the devices left over; check the product equals `num_devices`."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise MeshError(f'mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1')
  if any(s == 0 or s < -1 for s in sizes):
    raise MeshError(f'mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive or -1')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f'mesh {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} '
                      'devices; change --config.mesh.*')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(f'mesh data*fsdp*tensor = {math.prod(sizes)} but {num_devices} devices are '
                    'available; set --config.mesh.data/fsdp/tensor so their product equals '
                    'the device count (one of them may be -1)')
  return tuple(sizes)


def parse_mesh_flag(text: str) -> dict[str, int]:
  """'data:1,fsdp:8,tensor:1' -> {'data': 1, 'fsdp': 8, 'tensor': 1}; omitted axes are 1."""
  sizes = dict.fromkeys(MESH_AXES, 1)
  for part in filter(None, (p.strip() for p in text.split(','))):
    name, _, value = part.partition(':')
    if name not in sizes or not value.lstrip('-').isdigit():
      raise MeshError(f'bad mesh entry {part!r} in {text!r}; write e.g. data:1,fsdp:8,tensor:1')
    sizes[name] = int(value)
  return sizes


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config, len(devices))
  try:  # a topology-aware device order where jax knows one (TPU slices, GPU hosts)
    array = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # pylint: disable=broad-except
    array = np.asarray(devices).reshape(shape)
  return Mesh(array, MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']


def resolved_data_parallel_size(mesh_config, num_devices: int) -> int:
  """What `data_parallel_size` will be for the mesh `mesh_config` makes of `num_devices`,
  before any mesh is built (config checks)."""
  sizes = dict(zip(MESH_AXES, resolve_mesh_shape(mesh_config, num_devices)))
  return math.prod(sizes[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_to_shardings(logical_specs, mesh: Mesh, rules):
  """Map a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, [tuple(r) for r in rules])


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules):
  """Trace under this so the models' activation constraints (nn/layers.py `constrain`) take
  effect: they need both the mesh and the logical-axis rules; outside, they are no-ops."""
  with jax.set_mesh(mesh), nn.logical_axis_rules([tuple(r) for r in rules]):
    yield


def shard_batch(batch, mesh: Mesh):
  """Global arrays from this process's part of the batch (leading axis split over BATCH_AXES)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def check_divisible(abstract_tree, shardings):
  """Raise MeshError naming the first leaf whose sharded dimension the mesh does not divide.

  jit reports this much later and without the parameter's name; the usual fix is a rule in
  `config.axis_rules` or a mesh whose axis sizes divide the model's widths and heads.
  """
  leaves = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  for (path, leaf), sharding in zip(leaves, jax.tree.leaves(shardings)):
    spec = getattr(sharding, 'spec', P())
    for dim, axes in zip(leaf.shape, spec):
      axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      size = math.prod(sharding.mesh.shape[a] for a in axes)
      if dim % size:
        raise MeshError(
            f'{jax.tree_util.keystr(path)} of shape {leaf.shape} has a dimension of {dim} '
            f'split over mesh axes {axes} of size {size}, which does not divide it; change the '
            'mesh or config.axis_rules')
