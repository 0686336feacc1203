"""The device mesh and the mapping from logical axis names to mesh axes.

Parameters are born with logical axis names (models/layers.py). The config's
`sharding_rules` maps each name to a mesh axis (or a tuple of them, or None = replicated);
this module turns those into `NamedSharding`s. A dimension that a mesh axis does not divide
is replicated rather than failing, so e.g. multi-query attention (1 kv head) still runs on a
tensor-parallel mesh.
"""

import contextlib
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models import layers
from models.shapes import MESH_AXES, mesh_shape


def make_mesh(mesh_cfg, devices: list | None = None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor) over all devices, process-major.

  Devices are kept in jax.devices() order (grouped by process), so each process owns a
  contiguous block of the batch rows: that is what per-host data loading relies on.
  """
  devices = list(jax.devices() if devices is None else devices)
  return _mesh(devices, mesh_shape(mesh_cfg, len(devices)))


def mesh_for(config, sizes: tuple[int, ...]) -> Mesh:
  """The run's mesh over every device, of the sizes validate.check_config read from
  config.mesh, with the batches checked against it (one-line ValueError)."""
  mesh = _mesh(list(jax.devices()), sizes)
  check_batch(config, mesh)
  return mesh


def _mesh(devices: list, sizes: tuple[int, ...]) -> Mesh:
  # Classic Mesh: Auto axis types, the GSPMD behaviour the step is written for.
  return Mesh(np.array(devices).reshape(sizes), MESH_AXES)


def batch_axes(rules) -> tuple[str, ...]:
  """Mesh axes the batch dimension is split over."""
  axes = rules.get('batch', ('data', 'fsdp'))
  return (axes,) if isinstance(axes, str) else tuple(axes or ())


def spec_for(logical_axes: tuple, shape: tuple[int, ...], rules, mesh: Mesh) -> PartitionSpec:
  """PartitionSpec for one array from its logical axis names.

  Stacked (scanned) layers carry one more leading dimension than names: it is 'layers'.
  A mesh axis is used at most once per array; a dimension it does not divide is replicated.
  Parameter names claim their mesh axes before activation names ('batch', 'act_*') do: an
  activation laid out like a parameter (the embedding lookup's rows, split like the table's
  columns: 'batch', 'act_length', 'embed') keeps the parameter's split, the batch the rest.
  """
  names = tuple(logical_axes or ())
  if len(shape) == len(names) + 1:
    names = ('layers',) + names
  if len(names) != len(shape):
    raise ValueError(f'logical axes {names} do not match shape {shape}')
  used, spec = set(), [None] * len(names)
  activation = set(layers.ACTIVATION_AXES)
  for i in sorted(range(len(names)), key=lambda i: names[i] in activation):
    target = rules.get(names[i]) if names[i] is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    if axes and shape[i] % math.prod(mesh.shape[a] for a in axes) == 0:
      used.update(axes)
      spec[i] = axes[0] if len(axes) == 1 else axes
  return PartitionSpec(*spec)


def param_shardings(abstract_model: nnx.Module, rules, mesh: Mesh) -> dict:
  """NamedShardings for the model's parameters, as a pure dict like `state.to_pure_dict()`."""
  state = nnx.state(abstract_model)

  def to_sharding(var):
    axes = var.get_metadata().get('logical_axes')
    return NamedSharding(mesh, spec_for(axes, var.get_value().shape, rules, mesh))

  shardings = jax.tree.map(to_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.State(shardings).to_pure_dict() if not isinstance(shardings, dict) else shardings


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of a [batch, length] array: rows split over the batch axes."""
  return NamedSharding(mesh, PartitionSpec(batch_axes(rules) or None))


def activation_sharding(rules, mesh: Mesh):
  """Context in which the model pins its activations (models.layers.constrain) by `rules`.

  Open it around the model call inside the jitted function; with one device it does nothing.
  """
  if mesh.size == 1:
    return contextlib.nullcontext()
  return layers.activation_sharding(
    lambda axes, shape: NamedSharding(mesh, spec_for(axes, shape, rules, mesh))
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch(config, mesh) -> None:
  """The batch splits over the data-parallel devices and processes, each process owning its
  loader's rows (one-line ValueError)."""
  t, e = config.train, config.eval
  shards = math.prod(mesh.shape[a] for a in batch_axes(config.sharding_rules))
  if t.grad_accum < 1 or t.global_batch % t.grad_accum:
    raise ValueError(
      f'train.grad_accum={t.grad_accum} must divide train.global_batch={t.global_batch}'
    )
  micro = t.global_batch // t.grad_accum
  if micro % shards:
    raise ValueError(
      f'the (micro)batch of {micro} sequences does not split over the {shards} '
      f'data-parallel devices of mesh {dict(mesh.shape)}; make train.global_batch/'
      'train.grad_accum a multiple of it'
    )
  if e.batch_size % shards:
    raise ValueError(
      f'eval.batch_size={e.batch_size} does not split over the {shards} data-parallel devices'
    )
  for name, b in (('train.global_batch', t.global_batch), ('eval.batch_size', e.batch_size)):
    if b % jax.process_count():
      raise ValueError(f'{name}={b} does not split over {jax.process_count()} processes')
  _check_rows_per_process(config, mesh)


def _check_rows_per_process(config, mesh) -> None:
  """Each process must own the contiguous block of batch rows its loader produces."""
  b = config.train.global_batch
  batch_sh = batch_sharding(mesh, config.sharding_rules)
  per = b // jax.process_count()
  want = (jax.process_index() * per, (jax.process_index() + 1) * per)
  rows = batch_sh.addressable_devices_indices_map((b, 1)).values()
  starts = [r[0].start or 0 for r in rows]
  stops = [r[0].stop if r[0].stop is not None else b for r in rows]
  if (min(starts), max(stops)) != want:
    raise ValueError(
      f'mesh {dict(mesh.shape)} does not split the batch over processes (process '
      f'{jax.process_index()} holds rows {min(starts)}..{max(stops)}); put the processes '
      'along the data/fsdp axes'
    )


def to_global(local: dict, sh, global_rows: int) -> dict:
  """A global batch from each process's rows of it."""
  return {
    k: jax.make_array_from_process_local_data(sh, v, (global_rows, *v.shape[1:]))
    for k, v in local.items()
  }


def local_rows(global_array: jax.Array) -> np.ndarray:
  """This process's rows of a row-sharded global array, in order."""
  shards = sorted(global_array.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # replicas along non-batch axes hold the same rows
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)
