"""The collectives XLA compiles into the train step, read from the compiled HLO, per mesh.

A 2-layer float32 model (d_model 64, 4 heads, vocab 256, T 16, global batch 8) is compiled
for data, tensor, FSDP and mixed meshes of the 8 fake CPU devices. For each mesh the
collectives are grouped by the mesh axes their replica groups run over; the tests assert the
kinds, counts per layer and bytes that each parallelism should produce, that nothing else is
there (no all-gather of a whole activation, no all-to-all but the embedding lookup's), and
that train/comm.py's volume model agrees with the compiled bytes within 10%.

Where XLA:CPU differs from what TPU/GPU compilers do, the expectation says so:
* XLA:CPU combines all gradient all-reduces of one axis into one tuple-shaped all-reduce (its
  all-reduce combiner has no size threshold in practice at these sizes); TPU/GPU combine up to
  a threshold, so they show a few.
* XLA:CPU does not form reduce-scatters: an FSDP gradient is all-reduced at its gathered size
  and then sliced (TPU/GPU: reduce-scatter). Bytes are compared as the reduced size.
* The three input gradients of the Q, K, V projections are all-reduced separately (one tuple
  op) instead of summed first as in Megatron-LM: 4 all-reduces per block backward, not 2.
* The tied embedding's two gradients (lookup, logits) are reduced before they are added.

With FSDP the embedding table's columns are split over fsdp, so the lookup's rows come out
split by D and move to the residual stream's batch split with one all-to-all each way
(models/transformer.py pins that first layout; without it XLA gathered the whole activation on
the mixed mesh). Gathering the table before the lookup avoids them, but then XLA reduces the
tied table's gradient once per use: a [V, D] reduction more per step against two [tokens, D]
all-to-alls, so the all-to-alls are the cheaper program and the one expected here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import default
from models.transformer import ModelConfig
from train import comm, sharding, step

LAYERS, D, HEADS, VOCAB, T, B = 2, 64, 4, 256, 16, 8
AXES = sharding.MESH_AXES
_CACHE = {}


def abstract_step_args(trainer, b: int, t: int):
  """The train step's (state, batch) as sharded ShapeDtypeStructs, to lower it without data."""
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    trainer.abstract_state,
    trainer.state_shardings,
  )
  tokens = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=trainer.batch_sharding)
  return state, {'inputs': tokens, 'targets': tokens, 'segment_ids': tokens}


def config(mesh: dict, scan: bool = False):
  c = default.get_config()
  c.model.update(
    dict(
      d_model=D,
      num_layers=LAYERS,
      num_heads=HEADS,
      max_seq_len=T,
      vocab_size=VOCAB,
      scan_layers=scan,
    )
  )
  c.data.seq_len, c.train.global_batch = T, B
  c.mesh.update({a: mesh.get(a, 1) for a in AXES})
  return c


def compiled(mesh: dict, scan: bool = False):
  """(collectives grouped by (axes, kind), the collectives, model config, mesh), cached."""
  key = (tuple(sorted(mesh.items())), scan)
  if key not in _CACHE:
    c = config(mesh, scan)
    model_cfg = ModelConfig.from_config(c.model)
    m = sharding.make_mesh(c.mesh)
    trainer = step.make_trainer(c, model_cfg, m)
    state, batch = abstract_step_args(trainer, B, T)
    hlo = trainer.train_step.lower(state, batch).compile().as_text()
    cs = comm.collectives(hlo, m.size)
    ids = np.vectorize(lambda d: d.id)(m.devices)
    _CACHE[key] = (comm.by_axis(cs, ids, AXES), cs, ids, model_cfg, c)
  return _CACHE[key]


def predicted(mesh: dict, scan: bool = False) -> dict:
  _, _, _, model_cfg, c = compiled(mesh, scan)
  table = comm.param_table(model_cfg, mesh, c.sharding_rules)
  return comm.step_volume(model_cfg, table, mesh, B, T, param_bytes=4, act_bytes=4)


def param_bytes(mesh: dict) -> int:
  """Bytes of one device's parameter shards (as train/sharding.py splits them)."""
  _, _, _, model_cfg, c = compiled(mesh)
  return 4 * sum(p.local for p in comm.param_table(model_cfg, mesh, c.sharding_rules))


def tokens_x_d_ops(cs, ids, axis: str, tokens: int, fsdp: int = 1) -> int:
  """Executions of `axis` all-reduces whose operands are [tokens, D] activations (with FSDP
  the lookup's is [fsdp x tokens, D / fsdp]: the table's column split, before its all-to-all)."""
  act = {(tokens, D), (tokens // T, T, D), (tokens // T * fsdp, T, D // fsdp)}
  return sum(
    c.count * sum(dims in act for _, dims in c.shapes)
    for c in cs
    if c.kind == 'all-reduce' and comm.axes_of(c.groups, ids, AXES) == axis
  )


def assert_close(got: float, want: float, what: str):
  assert abs(got - want) <= 0.1 * want, f'{what}: compiled {got:,.0f} bytes, model {want:,.0f}'


def test_data_parallel_one_gradient_all_reduce():
  mesh = {'data': 8}
  got, cs, _, _, _ = compiled(mesh)
  # Only gradient (and loss) all-reduces over `data`, combined into one op on XLA:CPU.
  assert set(got) == {('data', 'all-reduce')}, got
  assert got['data', 'all-reduce']['ops'] == 1
  # Its bytes: every parameter once, the tied embedding twice, and the loss scalars.
  embed = 4 * VOCAB * D
  extra = got['data', 'all-reduce']['bytes'] - param_bytes(mesh) - embed
  assert 0 <= extra <= 16, extra
  assert_close(got['data', 'all-reduce']['bytes'], predicted(mesh)['data', 'all-reduce'][0], 'dp')


@pytest.mark.parametrize('scan', [False, True])
def test_tensor_parallel_megatron_all_reduces(scan):
  mesh = {'data': 2, 'tensor': 4}
  got, cs, ids, _, _ = compiled(mesh, scan)
  assert set(got) == {('data', 'all-reduce'), ('tensor', 'all-reduce')}, got
  # [tokens, D] all-reduces over `tensor`: per block 2 forward + 4 backward (XLA:CPU keeps
  # Q, K and V's input gradients apart; Megatron: 2), plus the vocab-split embedding lookup
  # and the logits' input gradient.
  tokens = B // 2 * T
  assert tokens_x_d_ops(cs, ids, 'tensor', tokens) == 6 * LAYERS + 2
  # Gradients of the tensor-split parameters: one combined all-reduce over `data` (with
  # scanned layers the stacked gradients leave the loop and are reduced in a few ops).
  assert got['data', 'all-reduce']['ops'] == 1 or scan
  want = predicted(mesh, scan)
  for key in got:
    assert_close(got[key]['bytes'], want[key][0], str(key))


def test_scanned_layers_move_the_same_bytes():
  """A collective inside the scan's while loop runs once per layer."""
  flat, _, _, _, _ = compiled({'data': 2, 'tensor': 4}, False)
  scanned, _, _, _, _ = compiled({'data': 2, 'tensor': 4}, True)
  assert set(flat) == set(scanned)
  for key in flat:  # equal up to a few scalars that the two programs fuse differently
    assert abs(flat[key]['bytes'] - scanned[key]['bytes']) <= 1e-3 * flat[key]['bytes'], key


def reductions(vol: dict) -> dict[str, float]:
  """Gradient-reduction payload per axes: all-reduce + reduce-scatter (XLA:CPU all-reduces
  what TPU/GPU reduce-scatter)."""
  out = {}
  for (axes, kind), v in vol.items():
    if kind in ('all-reduce', 'reduce-scatter'):
      out[axes] = out.get(axes, 0) + (v['bytes'] if isinstance(v, dict) else v[0])
  return out


def check_sharded_program(mesh, got, cs, ids, model_cfg, rules):
  """What an FSDP (+ data, + tensor) step must contain, and nothing else."""
  table = comm.param_table(model_cfg, mesh, rules)
  fsdp = mesh.get('fsdp', 1)
  tokens = B // (mesh.get('data', 1) * fsdp) * T
  # The embedding lookup's rows move from the table's column split to the batch split: one
  # all-to-all of the device's [tokens, D] forward, one backward, and no other all-to-all.
  a2a = [c for c in cs if c.kind == 'all-to-all']
  assert len(a2a) == 2 and got['fsdp', 'all-to-all']['bytes'] == 2 * 4 * tokens * D, got
  # Token ids and their in-range mask (int32 and bool, a batch's worth at most) may be moved
  # to where the lookup runs; every other all-gather brings together one parameter's shards,
  # over fsdp only: no activation is gathered and nothing else is permuted.
  per_leaf = model_cfg.num_layers if model_cfg.scan_layers else 1
  gathered_sizes = {p.local * fsdp // (per_leaf if p.layered else 1) for p in table if p.over_fsdp}
  for c in cs:
    ids_only = all(dt in ('s32', 'pred') for dt, _ in c.shapes) and c.bytes <= 4 * B * T
    if c.kind == 'collective-permute' or (c.kind == 'all-gather' and ids_only):
      assert ids_only, (c.kind, c.shapes, c.name)
    elif c.kind == 'all-gather':
      axes = comm.axes_of(c.groups, ids, AXES)
      assert axes == 'fsdp' and c.bytes // 4 in gathered_sizes, (axes, c.shapes, c.name)
  # Each attention projection is gathered once per layer for the forward, and once more for
  # the backward unless XLA keeps the forward's copy (it does on an FSDP-only CPU mesh).
  attn_bytes = 4 * D * (HEADS // mesh.get('tensor', 1)) * (D // HEADS)
  attn = sum(c.count for c in cs if c.kind == 'all-gather' and c.bytes == attn_bytes)
  assert attn in (4 * LAYERS, 8 * LAYERS), attn
  want = comm.step_volume(model_cfg, table, mesh, B, T, fsdp_gathers=attn // (4 * LAYERS))
  # The other parameters follow the same schedule: bytes within 10% of the volume model.
  assert_close(got['fsdp', 'all-gather']['bytes'], want['fsdp', 'all-gather'][0], 'all-gather')
  assert_close(got['fsdp', 'all-to-all']['bytes'], want['fsdp', 'all-to-all'][0], 'all-to-all')
  if mesh.get('tensor', 1) > 1:  # the Megatron all-reduces, as in the tensor-parallel test
    assert tokens_x_d_ops(cs, ids, 'tensor', tokens, fsdp) == 6 * LAYERS + 2
  # Gradient reductions: all of them within 10%, and each axis that carries more than 5%.
  # (XLA:CPU all-reduces small vectors over data+fsdp at once instead of over fsdp then data.)
  hlo_red, model_red = reductions(got), reductions(want)
  total = sum(model_red.values())
  assert_close(sum(hlo_red.values()), total, 'all reductions')
  for axes in set(hlo_red) | set(model_red):
    if max(hlo_red.get(axes, 0), model_red.get(axes, 0)) > 0.05 * total:
      assert_close(hlo_red.get(axes, 0), model_red.get(axes, 0), f'{axes} reductions')


@pytest.mark.parametrize('mesh', [{'fsdp': 8}, {'data': 2, 'fsdp': 2, 'tensor': 2}])
def test_fsdp_and_mixed_meshes(mesh):
  got, cs, ids, model_cfg, c = compiled(mesh)
  check_sharded_program(mesh, got, cs, ids, model_cfg, c.sharding_rules)


# Hand-written HLO in the three spellings of replica groups XLA prints, and a while loop.
SNIPPET = """
HloModule m

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %ar = f32[4,8]{1,0} all-reduce(%x), channel_id=1, replica_groups=[2,4]<=[8], to_apply=%add
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %ag = f32[8,8]{1,0} all-gather(%a), replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}
  %rs = f32[2,8]{1,0} reduce-scatter(%a), replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
  %m = (f32[4]{0}, bf16[2,2]{1,0}) all-reduce(%b, %c), replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([4,2]T(1,0)) {'axis_0'}, to_apply=%add
  %w = (s32[], f32[4,8]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
}
"""  # noqa: E501


def test_parser_reads_groups_bytes_and_loop_trips():
  by_name = {c.name: c for c in comm.collectives(SNIPPET, 8)}
  ar, ag, rs, m = by_name['ar'], by_name['ag'], by_name['rs'], by_name['m']
  assert (ar.kind, ar.count, ar.bytes, ar.groups) == (
    'all-reduce',
    3,
    128,
    ((0, 1, 2, 3), (4, 5, 6, 7)),
  )
  assert ag.groups == ((0, 4), (1, 5), (2, 6), (3, 7)) and ag.count == 1 and ag.bytes == 256
  assert rs.group_size == 2 and rs.bytes == 64 and rs.payload == 128
  # device_ids [4,2]T(1,0) = [[0,2,4,6],[1,3,5,7]] read as a 2 x 4 mesh; groups along axis_0
  # are its columns.
  assert m.groups == ((0, 1), (2, 3), (4, 5), (6, 7)) and m.bytes == 4 * 4 + 2 * 4
  ids = np.arange(8).reshape(2, 4, 1)
  assert comm.axes_of(ar.groups, ids, AXES) == 'fsdp'
  assert comm.axes_of(ag.groups, ids, AXES) == 'data'
