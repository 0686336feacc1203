"""Tests of the PyTorch reference model and benchmark (skipped when torch is not installed)."""

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip('torch')

from benchmarks import torch_reference as tr  # noqa: E402

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


@pytest.mark.parametrize('shape', _SHAPES)
def test_param_count_matches_formula_and_jax_model(shape):
  from models.accounting import param_counts
  from models.transformer import ModelConfig

  d, n, h, dh, f, v, t = shape
  model = tr.build(*shape)
  assert tr.param_count(model) == formula(*shape)
  cfg = ModelConfig(
    vocab_size=v, d_model=d, num_layers=n, num_heads=h, num_kv_heads=h, head_dim=dh, d_ff=f,
    max_seq_len=t,
  )  # fmt: skip
  assert tr.param_count(model) == param_counts(cfg)['total']


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


def test_same_function_as_the_jax_model():
  """Weights copied from the JAX model give the same logits (with the JAX model's tanh GELU)."""
  import jax
  import numpy as np
  from flax import nnx

  from models.transformer import ModelConfig, Transformer

  d, n, h, dh, f, v, t = _SHAPES[1]
  cfg = ModelConfig(
    vocab_size=v, d_model=d, num_layers=n, num_heads=h, num_kv_heads=h, head_dim=dh, d_ff=f,
    max_seq_len=t,
  )  # fmt: skip
  jm = Transformer(cfg, rngs=nnx.Rngs(3))
  tm = tr.build(*_SHAPES[1], gelu_approximate='tanh')

  def g(x):
    return torch.from_numpy(np.asarray(jax.device_get(x[...])).copy())

  a = h * dh
  with torch.no_grad():
    tm.embed.weight.copy_(g(jm.embed_VxD))
    tm.pos.weight.copy_(g(jm.pos_LxD))
    for jb, tb in zip(jm.blocks, tm.blocks, strict=True):
      for jln, tln in ((jb.ln1, tb.ln1), (jb.ln2, tb.ln2)):
        tln.weight.copy_(g(jln.scale_D))
        tln.bias.copy_(g(jln.bias_D))
      at = jb.attn
      w = [g(p).reshape(d, a).T for p in (at.wq_DxHxDh, at.wk_DxKxDh, at.wv_DxKxDh)]
      tb.attn.qkv.weight.copy_(torch.cat(w, 0))
      tb.attn.qkv.bias.copy_(
        torch.cat([g(p).reshape(a) for p in (at.bq_HxDh, at.bk_KxDh, at.bv_KxDh)])
      )
      tb.attn.out.weight.copy_(g(at.wo_HxDhxD).reshape(a, d).T)
      tb.attn.out.bias.copy_(g(at.bo_D))
      tb.fc.weight.copy_(g(jb.mlp.w1_DxF).T)
      tb.fc.bias.copy_(g(jb.mlp.b1_F))
      tb.proj.weight.copy_(g(jb.mlp.w2_FxD).T)
      tb.proj.bias.copy_(g(jb.mlp.b2_D))
    tm.ln_f.weight.copy_(g(jm.ln_f.scale_D))
    tm.ln_f.bias.copy_(g(jm.ln_f.bias_D))
    tokens = np.random.default_rng(0).integers(0, v, (2, t))
    want = np.asarray(jm(jax.numpy.asarray(tokens)))
    got = tm(torch.from_numpy(tokens)).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_training_reduces_loss_on_a_fixed_batch():
  model = tr.build(64, 2, 4, 16, 256, 64, 16)
  opt = tr.make_optimizer(model)
  tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
  losses = [tr.train_step(model, opt, tokens) for _ in range(20)]
  assert losses[0] == pytest.approx(math.log(64), abs=0.1)  # uniform predictions at init
  assert losses[-1] < losses[0] - 1.0, losses


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
  args = dict(
    shape=dict(d_model=32, num_layers=1, num_heads=4, max_seq_len=16), batch=1, seq_len=8,
    steps=1, warmup=1, compile=False,
  )  # fmt: skip
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    tr.benchmark(**args)


def test_import_needs_no_torch():
  code = 'import sys; import benchmarks.torch_reference; print("torch" in sys.modules)'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == 'False'


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
