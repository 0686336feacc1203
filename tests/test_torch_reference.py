"""The PyTorch reference model and benchmark, and the JAX model against the reference.

CI has no torch: the JAX model is compared with a committed fixture of the reference's outputs
(tests/fixtures/torch_reference.npz: weights, tokens, logits). Where torch is installed, the
fixture is checked against the reference itself and the other tests run. Regenerate it with
  python -m tests.test_torch_reference
which also writes tests/fixtures/torch_reference.sha256: a hash of the code that defines the
reference's computation (the model classes, `build`, and `make_fixture` below, docstrings and
comments left out) and of the fixture file. CI checks both, so a change to the reference's
computation without a regenerated fixture fails there instead of going unchecked.

Why a hash and not torch in CI: PyPI's torch for Linux pulls several GB of CUDA wheels, and
the CPU-only wheel index is not reachable from every machine this runs on; the fixture keeps
the JAX-side test exact without torch, and the hash keeps the fixture honest.
"""

import ast
import hashlib
import inspect
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from benchmarks import torch_reference as tr

try:
  import torch
except ImportError:
  torch = None
needs_torch = pytest.mark.skipif(torch is None, reason='torch is not installed')
FIXTURE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'torch_reference.npz'
)
FIXTURE_HASH = FIXTURE.replace('.npz', '.sha256')
# (d_model, num_layers, num_heads, head_dim, d_ff, vocab_size, max_seq_len) of the fixture:
# H * Dh != D and an MLP width that is not 4D.
FIXTURE_SHAPE = (32, 2, 2, 12, 40, 50, 12)

# (d_model, num_layers, num_heads, head_dim, d_ff, vocab_size, max_seq_len); the second has
# H * Dh != D and an MLP width that is not 4D.
_SHAPES = [(64, 2, 4, 16, 256, 256, 32), (48, 3, 3, 20, 100, 50, 12)]


def formula(d, n, h, dh, f, v, t) -> int:
  """The JAX model's parameter count with tied embeddings and learned positions."""
  a = h * dh
  attn = 3 * (d * a + a) + a * d + d
  norms = 2 * 2 * d
  mlp = d * f + f + f * d + d
  return n * (attn + norms + mlp) + 2 * d + v * d + t * d


def jax_param_count(d, n, h, dh, f, v, t) -> int:
  from models.accounting import param_counts
  from models.transformer import ModelConfig

  cfg = ModelConfig(
    vocab_size=v,
    d_model=d,
    num_layers=n,
    num_heads=h,
    num_kv_heads=h,
    head_dim=dh,
    d_ff=f,
    max_seq_len=t,
  )
  return param_counts(cfg)['total']


@pytest.mark.parametrize('shape', _SHAPES)
def test_formula_is_the_jax_models_param_count(shape):
  """Runs without torch: the closed form that the reference is checked against below."""
  assert jax_param_count(*shape) == formula(*shape)


@needs_torch
@pytest.mark.parametrize('shape', _SHAPES)
def test_param_count_matches_formula_and_jax_model(shape):
  model = tr.build(*shape)
  assert tr.param_count(model) == formula(*shape) == jax_param_count(*shape)


@needs_torch
def test_init_statistics():
  d, n = 256, 4
  model = tr.build(d, n, 4, 64, 1024, 512, 128)
  params = dict(model.named_parameters())
  assert params['embed.weight'].std().item() == pytest.approx(0.02, rel=0.02)
  assert params['blocks.0.fc.weight'].std().item() == pytest.approx(0.02, rel=0.02)
  out_std = 0.02 / math.sqrt(2 * n)
  assert params['blocks.1.proj.weight'].std().item() == pytest.approx(out_std, rel=0.02)
  assert params['blocks.2.attn.out.weight'].std().item() == pytest.approx(out_std, rel=0.03)
  assert torch.all(params['blocks.3.attn.qkv.bias'] == 0)
  assert torch.all(params['blocks.0.ln1.weight'] == 1) and torch.all(params['ln_f.bias'] == 0)
  # The same seed gives the same model.
  again = dict(tr.build(d, n, 4, 64, 1024, 512, 128).named_parameters())
  assert torch.equal(params['blocks.2.attn.qkv.weight'], again['blocks.2.attn.qkv.weight'])


@needs_torch
def test_causal():
  model = tr.build(*_SHAPES[1])
  gen = torch.Generator().manual_seed(1)
  tokens = torch.randint(0, 50, (2, 12), generator=gen)
  changed = tokens.clone()
  t = 5
  changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 50
  with torch.no_grad():
    a, b = model(tokens), model(changed)
  torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
  assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3  # later positions do see them


def make_fixture() -> dict:
  """The reference's logits for fixed tokens and fixed, non-trivial weights (biases, norms)."""
  model = tr.build(*FIXTURE_SHAPE, gelu_approximate='tanh')  # jax.nn.gelu is the tanh form
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))
    v, t = FIXTURE_SHAPE[5], FIXTURE_SHAPE[6]
    tokens = torch.randint(0, v, (2, t), generator=gen)
    logits = model(tokens)
  out = {f'w/{k}': v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
  return {**out, 'tokens': tokens.numpy().astype(np.int32), 'logits': logits.numpy()}


def jax_model_from(weights: dict):
  """The JAX model with the reference's weights (torch layout: Linear weights are [out, in])."""
  import jax.numpy as jnp
  from flax import nnx

  from models.transformer import ModelConfig, Transformer

  d, n, h, dh, f, v, t = FIXTURE_SHAPE
  sizes = dict(vocab_size=v, d_model=d, num_layers=n, num_heads=h, num_kv_heads=h, head_dim=dh)
  cfg = ModelConfig(**sizes, d_ff=f, max_seq_len=t)
  jm = Transformer(cfg, rngs=nnx.Rngs(0))
  w = {k[2:]: jnp.asarray(x) for k, x in weights.items() if k.startswith('w/')}
  a = h * dh
  jm.embed_VxD[...] = w['embed.weight']
  jm.pos_LxD[...] = w['pos.weight']
  for i, jb in enumerate(jm.blocks):
    p = f'blocks.{i}.'
    for jln, name in ((jb.ln1, 'ln1'), (jb.ln2, 'ln2')):
      jln.scale_D[...] = w[p + name + '.weight']
      jln.bias_D[...] = w[p + name + '.bias']
    qkv_w, qkv_b = w[p + 'attn.qkv.weight'], w[p + 'attn.qkv.bias']
    at = jb.attn
    pairs = ((at.wq_DxHxDh, at.bq_HxDh), (at.wk_DxKxDh, at.bk_KxDh), (at.wv_DxKxDh, at.bv_KxDh))
    for j, (wt, bias) in enumerate(pairs):
      wt[...] = qkv_w[j * a : (j + 1) * a].T.reshape(d, h, dh)
      bias[...] = qkv_b[j * a : (j + 1) * a].reshape(h, dh)
    at.wo_HxDhxD[...] = w[p + 'attn.out.weight'].T.reshape(h, dh, d)
    at.bo_D[...] = w[p + 'attn.out.bias']
    jb.mlp.w1_DxF[...] = w[p + 'fc.weight'].T
    jb.mlp.b1_F[...] = w[p + 'fc.bias']
    jb.mlp.w2_FxD[...] = w[p + 'proj.weight'].T
    jb.mlp.b2_D[...] = w[p + 'proj.bias']
  jm.ln_f.scale_D[...] = w['ln_f.weight']
  jm.ln_f.bias_D[...] = w['ln_f.bias']
  return jm


def test_jax_model_computes_the_reference_function():
  """Runs without torch: the JAX model with the fixture's weights gives the reference's logits."""
  import jax.numpy as jnp

  fx = dict(np.load(FIXTURE))
  got = np.asarray(jax_model_from(fx)(jnp.asarray(fx['tokens'])))
  np.testing.assert_allclose(got, fx['logits'], rtol=1e-4, atol=1e-5)
  assert np.abs(fx['logits']).max() > 0.1  # not a degenerate (all-zero) fixture


@needs_torch
def test_fixture_is_the_reference_output():
  """The committed fixture is what the PyTorch reference computes today."""
  fx, fresh = dict(np.load(FIXTURE)), make_fixture()
  assert fx.keys() == fresh.keys()
  for k in fx:
    np.testing.assert_allclose(fx[k], fresh[k], rtol=1e-5, atol=1e-6, err_msg=k)


@needs_torch
def test_training_reduces_loss_on_a_fixed_batch():
  model = tr.build(64, 2, 4, 16, 256, 64, 16)
  opt = tr.make_optimizer(model)
  tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
  losses = [tr.train_step(model, opt, tokens) for _ in range(20)]
  assert losses[0] == pytest.approx(math.log(64), abs=0.1)  # uniform predictions at init
  assert losses[-1] < losses[0] - 1.0, losses


@needs_torch
def test_benchmark_eager():
  shape = dict(d_model=32, num_layers=2, num_heads=2, vocab_size=64)
  before = torch.get_num_threads()
  r = tr.benchmark(shape, batch=2, seq_len=8, steps=2, warmup=1, compile=False, threads=1)
  assert torch.get_num_threads() == before  # threads apply to the call only
  assert r['compiled'] is False and r['compile_time_s'] is None and r['compile_error'] is None
  assert math.isfinite(r['tokens_per_s']) and r['tokens_per_s'] > 0
  assert r['tokens_per_s'] == pytest.approx(2 * 8 / r['step_time_s'])
  # Derived sizes: head_dim D/H, d_ff 4D, max_seq_len = seq_len.
  assert r['params'] == formula(32, 2, 2, 16, 128, 64, 8)
  assert r['torch_version'] == torch.__version__ and r['threads'] == 1
  assert math.isfinite(r['final_loss'])


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(seq_len=64), 'max_seq_len'),
    (dict(warmup=0, compile=True), 'warmup'),
    (dict(steps=0), 'steps'),
    (dict(shape=dict(d_model=30, num_layers=1, num_heads=4)), 'head_dim'),
    (dict(shape=dict(d_model=32, num_layers=1, num_heads=4, n_embd=3)), 'unknown'),
  ],
)
def test_benchmark_rejects_bad_input(kwargs, match):
  """Runs without torch: every check comes before torch is imported."""
  args = dict(
    shape=dict(d_model=32, num_layers=1, num_heads=4, max_seq_len=16),
    batch=1,
    seq_len=8,
    steps=1,
    warmup=1,
    compile=False,
  )
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    tr.benchmark(**args)


def test_import_needs_no_torch():
  code = 'import sys; import benchmarks.torch_reference; print("torch" in sys.modules)'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == 'False'


@needs_torch
@pytest.mark.slow
def test_benchmark_compiled_matches_eager():
  """torch.compile works here (or says why not) and trains the same numbers as eager."""
  shape = dict(d_model=32, num_layers=1, num_heads=2, vocab_size=64)
  kw = dict(batch=2, seq_len=8, steps=2, warmup=1)
  eager = tr.benchmark(shape, compile=False, **kw)
  comp = tr.benchmark(shape, compile=True, **kw)
  if not comp['compiled']:
    pytest.skip(f'torch.compile unavailable: {comp["compile_error"]}')
  assert comp['compile_time_s'] > 0
  assert comp['final_loss'] == pytest.approx(eager['final_loss'], rel=1e-4)


def _code_hash(fn) -> str:
  """sha256 of a function's code as Python parses it: docstrings, comments, layout left out."""
  tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
  tree.body[0].name = '_'  # the code, not what it is called
  for node in ast.walk(tree):
    body = getattr(node, 'body', None)
    if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
      if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        node.body = body[1:] or [ast.Pass()]
  return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def reference_hashes() -> dict:
  """What the committed fixture was made from, and the fixture itself."""
  code = {
    'benchmarks.torch_reference._model_class': _code_hash(tr._model_class),
    'benchmarks.torch_reference.build': _code_hash(tr.build),
    'tests.test_torch_reference.make_fixture': _code_hash(make_fixture),
    'FIXTURE_SHAPE': hashlib.sha256(repr(FIXTURE_SHAPE).encode()).hexdigest(),
  }
  with open(FIXTURE, 'rb') as f:
    return {'code': code, 'fixture': hashlib.sha256(f.read()).hexdigest()}


def test_fixture_was_made_by_the_reference_as_it_is_now():
  """Runs without torch: the code that defines the reference's computation, and the fixture
  file, are the ones recorded when the fixture was last regenerated (module docstring)."""
  with open(FIXTURE_HASH) as f:
    stored = json.load(f)
  now = reference_hashes()
  changed = [k for k in now['code'] if stored['code'].get(k) != now['code'][k]]
  regen = 'regenerate it with torch installed: python -m tests.test_torch_reference'
  assert not changed, f'{changed} changed since the fixture was made; {regen}'
  assert stored['fixture'] == now['fixture'], f'{FIXTURE} is not the recorded one; {regen}'


def test_code_hash_sees_code_and_ignores_docstrings_and_comments():
  def a(x):
    """Doc."""
    return x + 1  # comment

  def b(x):
    return x + 1

  def c(x):
    return x - 1

  assert _code_hash(a) == _code_hash(b) != _code_hash(c)


if __name__ == '__main__':
  os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
  np.savez_compressed(FIXTURE, **make_fixture())
  with open(FIXTURE_HASH, 'w') as f:
    json.dump(reference_hashes(), f, indent=2)
    f.write('\n')
  print(FIXTURE, os.path.getsize(FIXTURE), 'bytes;', FIXTURE_HASH)
