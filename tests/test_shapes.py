"""The model's shape (models/shapes.py): one set of rules, read without JAX, by every reader.

A sweep expands without importing JAX (the launchers and the planner run on machines that may
have none); a fused kernel is checked against the machine only when the check is for this
machine; ModelConfig, the sweeps' Shape, the attention layer and the PyTorch reference derive
the same sizes and refuse the same shapes with the same line.
"""

import json
import os
import subprocess
import sys

import pytest
from flax import nnx

from benchmarks import torch_reference
from experiments import sweep_spec
from experiments.configs import default
from experiments.sweeps import common
from models import shapes
from models.attention import MultiHeadAttention
from tests.cluster import REPO
from train import validate

EXPAND = """
import json, sys
from experiments import sweep_spec
runs = 0
for path, overrides in json.loads(sys.argv[1]):
  runs += len(sweep_spec.expand(path, overrides).runs)
jax = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax'))
print(json.dumps({'runs': runs, 'jax': jax}))
"""


def test_expanding_a_sweep_imports_no_jax():
  """Every run's whole config is range-checked (train/validate.py), and no JAX module loads."""
  sweeps = [
    ['experiments/sweeps/demo.py', {}],
    ['experiments/sweeps/block.py', {}],
    ['experiments/sweeps/demo.py', {'model.attention_impl': 'cudnn', 'model.dtype': 'bfloat16'}],
    ['experiments/sweeps/gpt3_reduced.py', {'model.attention_impl': 'splash'}],
  ]
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  out = subprocess.run(
    [sys.executable, '-c', EXPAND, json.dumps(sweeps)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  got = json.loads(out.stdout.splitlines()[-1])
  assert got['runs'] > 20
  assert got['jax'] == [], got['jax']


@pytest.mark.parametrize('impl, needs', [('cudnn', 'GPU'), ('splash', 'TPU')])
def test_a_fused_kernel_is_planned_anywhere_and_refused_on_the_wrong_machine(impl, needs):
  """Planned for another machine (the sweep planner), a kernel this CPU lacks is accepted;
  checked for this machine (launch.train), it is one line that names the kernel's platform."""
  config = default.get_config()
  config.model.attention_impl = impl
  validate.check_config(config, on_this_machine=False)
  sweep = sweep_spec.expand('experiments/sweeps/demo.py', {'model.attention_impl': impl})
  assert {r.overrides['model.attention_impl'] for r in sweep.runs} == {impl}
  with pytest.raises(ValueError, match=f'model.attention_impl={impl} needs a {needs}') as e:
    validate.check_config(config, on_this_machine=True)
  assert '\n' not in str(e.value)
  # A platform given is checked against the one the kernel needs; '' checks nothing.
  m = config.model
  with pytest.raises(ValueError, match=f'needs a {needs}, but the model runs on cpu'):
    shapes.ModelConfig.from_config(m, vocab_size=64, platform='cpu')
  assert shapes.ModelConfig.from_config(m, vocab_size=64, platform=needs.lower()).platform
  assert shapes.ModelConfig.from_config(m, vocab_size=64).attention_impl == impl


# (d_model, num_heads, head_dim, num_kv_heads): what each reader derives, or the line it refuses.
SHAPES = [
  ((64, 4, 0, 0), (16, 4)),
  ((96, 3, 0, 1), (32, 1)),
  ((48, 6, 16, 2), (16, 2)),  # head_dim given: 6 x 16 = 96 wide attention on d_model 48
  ((50, 4, 0, 0), 'model.num_heads=4 does not divide model.d_model=50'),
  ((64, 4, 0, 3), 'model.num_kv_heads=3 must divide model.num_heads=4'),
  ((64, 0, 0, 0), 'model.num_heads must be >= 1, got 0'),
]


def _model(d_model: int, num_heads: int, head_dim: int, num_kv_heads: int):
  m = default.get_config().model
  m.update(d_model=d_model, num_heads=num_heads, head_dim=head_dim, num_kv_heads=num_kv_heads)
  cfg = shapes.ModelConfig.from_config(m, vocab_size=64)
  return cfg.head_dim, cfg.num_kv_heads, cfg.d_ff


def _sweep_shape(d_model: int, num_heads: int, head_dim: int, num_kv_heads: int):
  s = common.Shape(2, d_model, num_heads, head_dim)
  return s.dh, shapes.derive_kv_heads(num_heads, num_kv_heads), s.ff


def _torch(d_model: int, num_heads: int, head_dim: int, num_kv_heads: int):
  shape = dict(d_model=d_model, num_layers=2, num_heads=num_heads, head_dim=head_dim)
  s = torch_reference._resolve_shape(shape, seq_len=16)
  return s['head_dim'], shapes.derive_kv_heads(num_heads, num_kv_heads), s['d_ff']


def _layer(d_model: int, num_heads: int, head_dim: int, num_kv_heads: int):
  for key, value in (('d_model', d_model), ('num_heads', num_heads)):
    shapes.at_least_one(key, value)
  dh = shapes.derive_head_dim(d_model, num_heads, head_dim)
  kv = num_kv_heads or num_heads
  attn = MultiHeadAttention(d_model, num_heads, kv, dh, rngs=nnx.Rngs(0))
  return attn.head_dim, attn.num_kv_heads, shapes.default_d_ff(d_model)


@pytest.mark.parametrize('reader', [_model, _sweep_shape, _torch, _layer])
@pytest.mark.parametrize('dims, want', SHAPES)
def test_every_reader_derives_the_same_sizes_and_refuses_the_same_shapes(reader, dims, want):
  if isinstance(want, str):
    with pytest.raises(ValueError) as e:
      reader(*dims)
    assert str(e.value).startswith(want), str(e.value)
    return
  head_dim, kv = want
  assert reader(*dims) == (head_dim, kv, 4 * dims[0])


def test_rope_needs_an_even_head_dim_in_the_config_and_in_the_layer():
  m = default.get_config().model
  m.update(d_model=36, num_heads=4, pos_emb='rope')
  line = 'model.pos_emb=rope needs an even head dimension, got 9'
  with pytest.raises(ValueError, match=line):
    shapes.ModelConfig.from_config(m, vocab_size=64)
  with pytest.raises(ValueError, match=line):
    MultiHeadAttention(36, 4, 4, 9, rngs=nnx.Rngs(0), use_rope=True)
  m.head_dim = 8  # given: 4 x 8 heads on d_model 36
  assert shapes.ModelConfig.from_config(m, vocab_size=64).head_dim == 8
