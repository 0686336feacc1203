"""benchmarks/plan.py: closed forms for a tiny model, valid suggestions, one-line errors."""

import math
import subprocess
import sys

import pytest

from benchmarks import hardware
from benchmarks import planner as plan
from models.transformer import ModelConfig
from tests.cluster import REPO

# vocab 16, d_model 8, 1 layer, 2 heads x 4, d_ff 32, 4 positions, tied embedding.
TINY = ModelConfig(
  vocab_size=16,
  d_model=8,
  num_layers=1,
  num_heads=2,
  num_kv_heads=2,
  head_dim=4,
  d_ff=32,
  max_seq_len=4,
  dtype='bfloat16',
  scan_layers=True,
)
# Parameters by hand: embedding 16*8 + positions 4*8 + final norm 2*8 = 176; the layer: two
# norms 32, Q K V 3*(8*8 + 8) = 216, output 8*8 + 8 = 72, MLP 8*32 + 32 + 32*8 + 8 = 552.
N_TOTAL = 176 + 32 + 216 + 72 + 552  # 1048
N_EMBED = 16 * 8 + 4 * 8
# PaLM FLOPs per token: 6 (non-embedding + unembedding matmul) + 12 L H Dh T.
FLOPS_PER_TOKEN = 6 * (N_TOTAL - N_EMBED + 8 * 16) + 12 * 1 * 2 * 4 * 4


def test_data_parallel_across_two_h100_nodes_closed_form():
  hw = hardware.parse('h100-16')
  assert (hw.chips, hw.island) == (16, 8)
  p = plan.plan(TINY, hw, {'data': 16, 'fsdp': 1, 'tensor': 1}, 4, 32, 'none')
  assert p.memory['params'] == 4 * N_TOTAL
  assert p.memory['adam'] == 8 * N_TOTAL
  assert p.model_flops == FLOPS_PER_TOKEN * 32 * 4 == p.hardware_flops
  compute = FLOPS_PER_TOKEN * 128 / 16 / 989e12
  assert math.isclose(p.compute_s, compute, rel_tol=1e-12)
  # One ring all-reduce over 16 GPUs of 2 nodes, limited by InfiniBand (50 GB/s one way):
  # every parameter once and the tied embedding's second gradient, float32.
  sent = 2 * 15 / 16 * 4 * (N_TOTAL + 16 * 8)
  [(axis, kind, got_sent, seconds, link)] = p.comm
  assert (axis, kind, link) == ('data', 'all-reduce', 'InfiniBand')
  assert math.isclose(got_sent, sent) and math.isclose(seconds, sent / 50e9)
  assert math.isclose(p.step_s, max(compute, sent / 50e9))  # overlapped with compute
  assert math.isclose(p.mfu, FLOPS_PER_TOKEN * 128 / (p.step_s * 16 * 989e12))


def test_tensor_parallel_inside_one_node_closed_form():
  hw = hardware.parse('h100-8')
  p = plan.plan(TINY, hw, {'data': 4, 'fsdp': 1, 'tensor': 2}, 4, 32, 'full')
  tokens = 32 // 4 * 4
  # Per block 2 + 4 all-reduces of [tokens, d_model] in bf16, + 2 recomputed under full
  # remat, + the embedding lookup and the logits' gradient, + 3 float32 [tokens] vectors.
  result = 2 * tokens * 8 * (8 * 1 + 2) + 3 * 4 * tokens
  rows = {(a, k): (sent, s, link) for a, k, sent, s, link in p.comm}
  sent, seconds, link = rows['tensor', 'all-reduce']
  assert link == 'NVLink' and math.isclose(sent, 2 * 1 / 2 * result)
  assert math.isclose(seconds, sent / 450e9)
  assert p.hardware_flops == pytest.approx(p.model_flops * 4 / 3)
  # Tensor all-reduces are exposed; the gradient all-reduce hides behind compute.
  hidden = rows['data', 'all-reduce'][1]
  assert math.isclose(p.step_s, max(p.compute_s, hidden) + seconds)


def test_sequence_parallelism_splits_the_replicated_activations_and_moves_the_same_bytes():
  hw = hardware.parse('h100-8')
  mesh = {'data': 4, 'fsdp': 1, 'tensor': 2}
  tokens = 32 // 4 * 4
  bld = tokens * 8  # B x L x D in bf16 halves, as activation_bytes counts
  logits = 8 * tokens * 16 / 2
  want = {  # per layer: (replicated over tensor, split over tensor), and full's extra layer
    'none': (8, 24, 0),
    'dots': (6, 16, 0),
    'full': (2, 0, 8 + 24 / 2),
  }
  for remat, (rep, split, extra) in want.items():
    plain = plan.plan(TINY, hw, mesh, 4, 32, remat)
    sp = plan.plan(TINY, hw, mesh, 4, 32, remat, sequence=True)
    assert plain.memory['activations'] == bld * (rep + split / 2 + extra) + logits
    extra_sp = (8 + 24) / 2 if remat == 'full' else 0
    assert sp.memory['activations'] == bld * (rep / 2 + split / 2 + extra_sp) + logits
    assert sp.comm == plain.comm and sp.step_s == plain.step_s
  # No tensor axis: nothing to split along L.
  assert not plan.plan(
    TINY, hw, {'data': 8, 'fsdp': 1, 'tensor': 1}, 4, 32, 'none', 1, True
  ).sequence


def test_palms_published_configuration_fits_only_with_sequence_parallelism():
  """PaLM 540B, 2 x 3072 TPU v4, data 2 x fsdp 256 x tensor 12, full remat (PLANNER.md)."""
  hw = hardware.parse('v4-6144', slices=2)
  cfg = plan.model_config('palm.540B', 2048)
  mesh = {'data': 2, 'fsdp': 256, 'tensor': 12}
  assert not plan.plan(cfg, hw, mesh, 2048, 2048, 'full').fits
  assert plan.plan(cfg, hw, mesh, 2048, 2048, 'full', sequence=True).fits
  assert not plan.plan(cfg, hw, mesh, 2048, 2048, 'dots', sequence=True).fits


def test_tpu_slice_names_count_tensorcores_and_dcn_joins_slices():
  assert hardware.parse('v5p-256').chips == 128  # 2 TensorCores per v5p chip
  assert hardware.parse('v5e-256').chips == 256
  two = hardware.parse('v4-8', slices=2)
  assert (two.chips, two.island) == (8, 4)
  p = plan.plan(TINY, two, {'data': 2, 'fsdp': 4, 'tensor': 1}, 4, 32, 'none')
  links = {a: link for a, _, _, _, link in p.comm}
  assert links == {'data': 'DCN', 'fsdp': 'ICI', 'data+fsdp': 'DCN'}


@pytest.mark.parametrize('model, hw', [('gpt3.6.7B', 'h100-64'), ('gpt3.175B', 'v5p-1024')])
def test_suggestion_is_a_valid_plan_that_fits(model, hw):
  slice_ = hardware.parse(hw)
  cfg = plan.model_config(model, 2048)
  p = plan.suggest(cfg, slice_, 2048, 512)
  assert p is not None
  assert math.prod(p.mesh.values()) == slice_.chips
  assert 512 % (p.mesh['data'] * p.mesh['fsdp']) == 0
  assert cfg.num_heads % p.mesh['tensor'] == 0
  assert p.memory['total'] <= plan.HEADROOM * slice_.chip.hbm_bytes
  if slice_.chip.island:  # GPUs: tensor parallelism stays on NVLink
    assert p.mesh['tensor'] <= slice_.island


def test_nothing_fits_is_none():
  assert (
    plan.suggest(plan.model_config('gpt3.175B', 2048), hardware.parse('h100-8'), 2048, 8) is None
  )


@pytest.mark.parametrize(
  'args, says',
  [
    (['--hardware=v9-8'], 'unknown hardware'),
    (['--hardware=v5p-256', '--mesh=fsdp=64,tensor=4'], '128 are available'),
    (['--mesh=fsdp=x'], 'bad mesh entry'),
    (['--model=gpt4'], 'unknown model'),
  ],
)
def test_bad_input_is_one_line(args, says):
  out = subprocess.run(
    [sys.executable, '-m', 'benchmarks.plan', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 2, out.stderr
  assert out.stderr.count('\n') == 1 and says in out.stderr, out.stderr
  assert out.stdout == ''
