"""Collectives: read from a compiled XLA program, and predicted from the model and the mesh.

`collectives(hlo_text)` lists the collectives of a compiled module (`.compile().as_text()`):
kind, result bytes, group size, and how many times it runs (a collective inside a `while`
body, e.g. under `scan_layers`, runs once per trip).

`step_volume(...)` is the communication-volume model of one train step of
`models/transformer.py` under `train/step.py`, per device, as payload bytes (the unsplit
size: an all-reduce's operand, an all-gather's result, a reduce-scatter's input) per mesh axis
and kind of collective:
* data parallel (batch over `data`): the gradients all-reduced, each device's shard of them
  (parameters split over fsdp/tensor stay split);
* FSDP (batch and the parameters' `embed` dimension over `fsdp`): each parameter all-gathered
  for the forward (again for the backward's recomputation under remat), its gradient
  reduce-scattered;
* tensor parallel (heads, mlp and vocab over `tensor`): two all-reduces of the [B, L, D]
  activations per block forward (after the attention output projection and the MLP's second
  matmul, Megatron-LM's f/g operators) and the input gradients in the backward; the tied
  embedding is split over `vocab`, so the lookup and the logits add a few more.
A ring all-reduce of payload S over n devices sends 2 (n - 1) / n * S per device, an
all-gather or reduce-scatter (n - 1) / n * S (`ring_bytes`). Where XLA:CPU's program differs
from the textbook one, the model follows the compiled program and says so (see
tests/test_hlo_collectives.py).

Only `param_table` touches JAX (abstract shapes through nnx.eval_shape, nothing allocated),
so the planner (benchmarks/plan.py) uses the same model at any size.
"""

import dataclasses
import functools
import itertools
import math
import re
import types
from collections import defaultdict

import numpy as np

KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {
  'pred': 1,
  's8': 1,
  'u8': 1,
  'f16': 2,
  'bf16': 2,
  's16': 2,
  'u16': 2,
  'f32': 4,
  's32': 4,
  'u32': 4,
  'f64': 8,
  's64': 8,
  'u64': 8,
}
_ARRAY = re.compile(r'\b(pred|[suf]\d+|bf16)\[([\d,]*)\]')
_INSTR = re.compile(
  r'^\s*(?:ROOT\s+)?%?(\S+)\s*=\s*(.*?)\s+(' + '|'.join(KINDS) + r')(-start)?\((.*)$'
)
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  name: str
  shapes: tuple  # ((dtype, dims), ...): the result (a tuple when the compiler combined several)
  groups: tuple  # the replica groups, as tuples of device ids
  count: int  # how many times it runs per step

  @property
  def group_size(self) -> int:
    return len(self.groups[0])

  @property
  def bytes(self) -> int:
    """Result bytes of one execution (for an all-gather the gathered size)."""
    return sum(_DTYPE_BYTES[dt] * math.prod(dims) for dt, dims in self.shapes)

  @property
  def payload(self) -> int:
    """The unsplit size: the result, except a reduce-scatter's input (n x its result)."""
    return self.bytes * (self.group_size if self.kind == 'reduce-scatter' else 1)


def _shapes(text: str) -> tuple:
  return tuple(
    (dt, tuple(int(d) for d in dims.split(',') if d)) for dt, dims in _ARRAY.findall(text)
  )


def _iota(dims: str, perm: str | None) -> np.ndarray:
  """XLA's iota device list: arange reshaped to `dims`, transposed by `perm`."""
  shape = [int(d) for d in dims.split(',')]
  ids = np.arange(math.prod(shape)).reshape(shape)
  return ids.transpose([int(p) for p in perm.split(',')]) if perm else ids


def _groups(attrs: str, num_devices: int | None) -> tuple[tuple[int, ...], ...]:
  """The replica groups (device ids), from any of XLA's spellings."""
  m = re.search(
    r'replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?'
    r'\s*\{([^}]*)\}',
    attrs,
  )
  if m:  # mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, optionally device_ids=([2,4]T(1,0))
    names_sizes = re.findall(r"'([^']*)'=(\d+)", m.group(1))
    names = [n for n, _ in names_sizes]
    sizes = [int(v) for _, v in names_sizes]
    ids = _iota(m.group(2), m.group(3)) if m.group(2) else np.arange(math.prod(sizes))
    ids = ids.reshape(sizes)
    chosen = [names.index(a.strip().strip("'")) for a in m.group(4).split(',') if a.strip()]
    rest = [i for i in range(len(sizes)) if i not in chosen]
    ids = ids.transpose(rest + chosen).reshape(-1, math.prod(sizes[i] for i in chosen))
    return tuple(tuple(int(x) for x in g) for g in ids)
  m = re.search(r'replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?', attrs)
  if m:  # iota form [groups, size]<=[dims]T(perm)
    ids = _iota(m.group(3), m.group(4)).reshape(int(m.group(1)), int(m.group(2)))
    return tuple(tuple(int(x) for x in g) for g in ids)
  m = re.search(r'replica_groups=\{((?:\{[\d,]*\},?)*)\}', attrs)
  if m and m.group(1):  # explicit {{0,1},{2,3}}
    return tuple(
      tuple(int(x) for x in g.split(',')) for g in re.findall(r'\{([\d,]*)\}', m.group(1))
    )
  pairs = re.findall(r'\{(\d+),(\d+)\}', attrs.split('source_target_pairs=', 1)[-1])
  if 'source_target_pairs' in attrs and pairs:  # collective-permute: the devices that send
    return (tuple(sorted({int(a) for a, _ in pairs})),)
  if num_devices and (m or 'replica_groups' not in attrs):
    return (tuple(range(num_devices)),)  # empty: all devices
  raise ValueError(f'cannot read the replica groups of: {attrs[:200]}')


def collectives(hlo_text: str, num_devices: int | None = None) -> list[Collective]:
  """The collectives of a compiled HLO module, each with how often it runs per step."""
  comp_of_line, body_calls, found = None, [], []
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and not line.startswith(' '):
      comp_of_line = m.group(1)
      continue
    w = re.search(r'\bwhile\(.*\bbody=%?([\w.\-]+)', line)
    if w:
      trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      body_calls.append((comp_of_line, w.group(1), int(trips.group(1)) if trips else None))
    for callee in re.findall(r'\b(?:to_apply|calls)=%?([\w.\-]+)', line):
      if re.search(r'\b(call|conditional|async-start)\(', line):
        body_calls.append((comp_of_line, callee, 1))
    c = _INSTR.match(line)
    if c:
      name, result, kind, start, rest = c.groups()
      shapes = _shapes(result)
      if start and kind == 'all-gather':  # async (TPU/GPU): ((operands), (results))
        shapes = shapes[len(shapes) // 2 :]
      found.append((comp_of_line, kind, name, shapes, _groups(rest, num_devices)))
  # How many times each computation runs: the entry once, a while body trip-count times.
  times = defaultdict(int)
  entry = re.search(r'^ENTRY\s+%?([\w.\-]+)', hlo_text, re.M)
  times[entry.group(1) if entry else None] = 1
  for _ in range(8):  # nesting depth; a fixed point is reached long before
    for caller, callee, trips in body_calls:
      if trips is None:
        raise ValueError(f'while loop {callee} has no known trip count')
      times[callee] = max(times[callee], times[caller] * trips)
  return [Collective(k, n, s, g, times[comp]) for comp, k, n, s, g in found]


def summary(cs: list[Collective]) -> dict[str, dict[str, int]]:
  """{kind: {'ops': executions per step, 'bytes': result bytes per step}}."""
  out = {k: {'ops': 0, 'bytes': 0} for k in KINDS}
  for c in cs:
    out[c.kind]['ops'] += c.count
    out[c.kind]['bytes'] += c.count * c.bytes
  return out


def axes_of(groups, device_ids: np.ndarray, axis_names: tuple[str, ...]) -> str:
  """Which mesh axes a collective's replica groups run over, e.g. 'tensor' or 'data+fsdp'.

  `device_ids` is the mesh's array of device ids (`np.vectorize(lambda d: d.id)(mesh.devices)`).
  """
  want = {frozenset(g) for g in groups}
  live = [i for i, n in enumerate(device_ids.shape) if n > 1]
  for r in range(1, len(live) + 1):
    for chosen in itertools.combinations(live, r):
      rest = [i for i in range(device_ids.ndim) if i not in chosen]
      size = math.prod(device_ids.shape[i] for i in chosen)
      got = device_ids.transpose(rest + list(chosen)).reshape(-1, size)
      if {frozenset(int(x) for x in g) for g in got} == want:
        return '+'.join(axis_names[i] for i in chosen)
  return 'other'


def by_axis(cs: list[Collective], device_ids: np.ndarray, axis_names) -> dict:
  """{(axes, kind): {'ops': executions per step, 'bytes': payload bytes per step}}."""
  out = defaultdict(lambda: {'ops': 0, 'bytes': 0})
  for c in cs:
    entry = out[axes_of(c.groups, device_ids, axis_names), c.kind]
    entry['ops'] += c.count
    entry['bytes'] += c.count * c.payload
  return dict(out)


@dataclasses.dataclass(frozen=True)
class ParamShard:
  """One parameter as the sharding rules split it: elements per device, and whether its
  shards are gathered over `fsdp` (an all-gather in, a reduce-scatter of its gradient out)."""

  name: str
  local: int  # elements per device (for scanned layers: all layers together)
  over_fsdp: bool
  layered: bool  # one of the blocks' parameters


@functools.lru_cache(maxsize=8)
def _abstract_params(cfg) -> tuple:
  """(name, shape, logical axes) of every parameter of the model `cfg` (a ModelConfig)."""
  import jax
  from flax import nnx

  from models.transformer import Transformer

  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  leaves = jax.tree_util.tree_leaves_with_path(
    nnx.state(abstract, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable)
  )
  return tuple(
    (jax.tree_util.keystr(path), var.get_value().shape, var.get_metadata().get('logical_axes'))
    for path, var in leaves
  )


def param_table(cfg, mesh: dict[str, int], rules) -> list[ParamShard]:
  """Every parameter of the model `cfg` (a ModelConfig), split by `rules` over a mesh of
  these sizes, through train/sharding.py's own spec_for: nothing is allocated."""
  from train.sharding import spec_for

  fake_mesh = types.SimpleNamespace(shape={a: mesh.get(a, 1) for a in ('data', 'fsdp', 'tensor')})
  table = []
  for name, shape, logical in _abstract_params(cfg):
    spec = spec_for(logical, shape, rules, fake_mesh)
    axes = [a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
    split = math.prod(fake_mesh.shape[a] for a in axes)
    table.append(ParamShard(name, math.prod(shape) // split, 'fsdp' in axes, 'blocks' in name))
  return table


def ring_bytes(kind: str, payload: float, n: int) -> float:
  """Bytes one device sends for a collective of this payload over n devices, with rings."""
  if n <= 1:
    return 0.0
  if kind == 'all-reduce':
    return 2.0 * (n - 1) / n * payload
  if kind in ('reduce-scatter', 'all-gather'):
    return (n - 1) / n * payload
  return float(payload)


def step_volume(
  cfg,
  table: list[ParamShard],
  mesh: dict[str, int],
  batch: int,
  seq_len: int,
  *,
  param_bytes: int = 4,
  act_bytes: int = 4,
  remat: str = 'none',
  fsdp_gathers: int = 2,
) -> dict[tuple[str, str], tuple[float, int]]:
  """Predicted {(mesh axes, kind): (payload bytes per device per step, group size)}.

  `batch` is the global batch in sequences; parameters and gradients are `param_bytes` wide,
  activations `act_bytes` (the compute dtype). Payload as in `Collective.payload`. Axes are
  'data', 'fsdp', 'tensor' or 'data+fsdp' (a reduction over both batch axes).
  """
  data, fsdp, tensor = (mesh.get(a, 1) for a in ('data', 'fsdp', 'tensor'))
  vol = {}

  def add(axes, kind, payload, n):
    if n > 1 and payload:
      old = vol.get((axes, kind), (0.0, n))[0]
      vol[axes, kind] = (old + payload, n)

  # A tied embedding gets two gradients, from the lookup and from the logits matmul. Where
  # they are all-reduced XLA:CPU reduces both before adding them; where they are
  # reduce-scattered over fsdp it adds them first (as compiled on every mesh we tried).
  def grad_bytes(p, all_reduce: bool):
    twice = all_reduce and cfg.tie_embeddings and 'embed_VxD' in p.name
    return param_bytes * p.local * (2 if twice else 1)

  split = [p for p in table if p.over_fsdp]
  whole = [p for p in table if not p.over_fsdp]
  # FSDP: each split parameter is all-gathered for the forward and again for the backward
  # (ZeRO-3's schedule, the default). Without remat XLA may keep the forward's gathered copy
  # instead (`fsdp_gathers=1`; XLA:CPU did so on an FSDP-only mesh); with remat the
  # backward's recomputation needs a second gather. Gradients are reduce-scattered over fsdp
  # at the gathered size, then all-reduced over data at the shard's size.
  passes = 2 if remat != 'none' else fsdp_gathers
  add('fsdp', 'all-gather', passes * fsdp * param_bytes * sum(p.local for p in split), fsdp)
  add('fsdp', 'reduce-scatter', fsdp * sum(grad_bytes(p, False) for p in split), fsdp)
  add('data', 'all-reduce', sum(grad_bytes(p, True) for p in split), data)
  # Parameters not split over fsdp: their gradients are all-reduced over the batch axes.
  batch_axes = '+'.join(a for a, n in (('data', data), ('fsdp', fsdp)) if n > 1)
  add(batch_axes, 'all-reduce', sum(grad_bytes(p, True) for p in whole), data * fsdp)
  # The embedding lookup's rows come out split like the table's columns (over fsdp) and move
  # to the residual's batch split by one all-to-all forward and one backward, each of the
  # device's [tokens, D] activation: far less than gathering a [V, D] table once more.
  if fsdp > 1 and any(p.over_fsdp and 'embed_VxD' in p.name for p in table):
    tokens = batch // (data * fsdp) * seq_len
    add('fsdp', 'all-to-all', 2 * act_bytes * tokens * cfg.d_model, fsdp)
  if tensor > 1:
    tokens = batch // (data * fsdp) * seq_len
    # Per block: forward 2 all-reduces of [tokens, D] (after the attention out-projection
    # and after the MLP), backward the input gradients of the MLP and of attention: Megatron
    # sums Q, K and V's before one all-reduce, XLA:CPU reduces the three (4 in all). Full
    # remat repeats the forward's 2. Outside the blocks: the vocab-split embedding lookup
    # (forward) and the logits' input gradient (backward), 1 each, and 3 [tokens] float32
    # reductions of the vocab-split softmax (max, sum, target logit).
    per_block = 2 + 4 + (2 if remat == 'full' else 0)
    blocks = act_bytes * tokens * cfg.d_model * (per_block * cfg.num_layers + 2)
    add('tensor', 'all-reduce', blocks + 3 * 4 * tokens, tensor)
  return vol
