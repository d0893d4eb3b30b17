"""Device mesh, logical axis rules, and placing pytrees onto the mesh.

Every weight carries logical axis names (e.g. ("embed", "mlp")); the config's
rules map each name onto mesh axes. The same code then runs on 1 CPU, on 8
simulated devices, on a GPU and on a TPU pod: only the mesh shape changes.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The scanned layers' stacked axis (models/decoder.py LAYERS_AXIS): never sharded, whatever
# the rules say, since each scan iteration reads one whole layer's slice.
UNSHARDED_AXES = ("layers",)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of a config's mesh section (config.mesh: data, fsdp, tensor)."""
  return device_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor, devices)


def single_device_mesh() -> Mesh:
  return device_mesh(fsdp=1, devices=jax.devices()[:1])


def device_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one entry may be -1 to take the remaining devices. The
  default puts every device on the fsdp axis: params sharded, the batch split over all."""
  devices = list(devices if devices is not None else jax.devices())
  shape = [int(data), int(fsdp), int(tensor)]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {shape}")
  known = int(np.prod([d for d in shape if d != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh: {len(devices)} devices do not divide by {known} ({shape})")
    shape[shape.index(-1)] = len(devices) // known
  size = int(np.prod(shape))
  if size < len(devices) and jax.process_count() == 1:
    # Debugging on part of one host's devices is allowed; say so.
    logging.warning("mesh %s uses %d of the %d devices", shape, size, len(devices))
    devices = devices[:size]
  if size != len(devices):
    raise ValueError(f"mesh: data*fsdp*tensor = {size} ({shape}) but {len(devices)} devices")
  # Auto axes: shardings are given explicitly at jit boundaries and GSPMD
  # propagates them inside (jax.make_mesh would default to Explicit axes).
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules) -> P:
  """Logical axis names -> PartitionSpec, dropping mesh axes that do not divide a dim."""
  rule_map = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    if name in UNSHARDED_AXES:
      spec.append(None)
      continue
    if name is not None and name not in rule_map:
      raise KeyError(f"logical axis {name!r} has no rule in config.mesh.rules")
    target = rule_map.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    kept = []
    size = 1
    for axis in targets:
      if axis in used:
        continue
      n = mesh.shape[axis]
      if n == 1:
        continue
      if dim % (size * n):
        logging.debug("axis %s (dim %d) not divisible by mesh axis %s=%d: not sharded over it",
                      name, dim, axis, n)
        continue
      kept.append(axis)
      size *= n
    used.update(kept)
    spec.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*spec)


def logical_sharding(axes, shape, mesh: Mesh, rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def tree_shardings(abstract_tree: Any, logical_axes: Any, mesh: Mesh, rules) -> Any:
  """Shardings for a pytree of ShapeDtypeStructs given a matching tree of axis names.

  Leaves without axis names (None) are replicated.
  """
  def one(leaf, axes):
    if axes is None or not hasattr(leaf, "shape") or len(leaf.shape) == 0:
      return NamedSharding(mesh, P())
    return logical_sharding(axes, leaf.shape, mesh, rules)
  return jax.tree.map(one, abstract_tree, logical_axes,
                      is_leaf=lambda x: x is None)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their target shardings: what Orbax restores onto and
  jit lowers for."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def params_logical_axes(boxed_params: Any) -> Any:
  """Tree of logical-axis tuples from Flax `LogicallyPartitioned` boxed params."""
  return jax.tree.map(
      lambda x: tuple(x.names) if isinstance(x, nn.LogicallyPartitioned) else None,
      boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules, shape: Sequence[int]) -> NamedSharding:
  """Batch arrays are [batch, ...]: the batch axis goes over the "batch" rule's axes."""
  return logical_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh, rules)


def micro_batch_sharding(mesh: Mesh, rules, shape: Sequence[int]) -> NamedSharding:
  """Arrays split into micro-batches, [micro, batch, ...]: the second axis is the batch."""
  return logical_sharding((None, "batch") + (None,) * (len(shape) - 2), shape, mesh, rules)


def activation_sharding(batch_sharding: NamedSharding) -> NamedSharding:
  """Activations [rows, ...] in a train step: rows over the mesh axes that split the
  batch's first axis (the steps check that those divide every batch and micro-batch)."""
  return NamedSharding(batch_sharding.mesh, P(batch_sharding.spec[0] if batch_sharding.spec
                                              else None))
