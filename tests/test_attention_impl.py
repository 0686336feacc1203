"""Which attention implementation runs ('auto' and the explicit choices), and that every path
that runs on a CPU computes the textbook function (the float64 oracle of test_models)."""

import itertools
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import default
from models import kernels
from models.attention import MultiHeadAttention
from models.kernels import LONG, choose_attention
from models.shapes import IMPLS
from models.transformer import ModelConfig, Transformer
from tests.cluster import REPO
from tests.test_models import model_cfg, textbook_attention
from train import sharding, validate
from train.step import compile_train_step, make_trainer

PLATFORMS = ('cpu', 'gpu', 'tpu')
DTYPES = ('float32', 'bfloat16', 'float16')
HEAD_DIMS = (60, 64, 128, 256, 264)
LENGTHS = (127, 128, 1000, 1023, 1024, 2047, 2048)
CAPABILITIES = (None, 7.5, 8.0, 9.0)


def table():
  """Every combination of the inputs, with what choose_attention says (or the error)."""
  for req, plat, dt, dh, length, seg, cap in itertools.product(
    IMPLS, PLATFORMS, DTYPES, HEAD_DIMS, LENGTHS, (False, True), CAPABILITIES
  ):
    if plat != 'gpu' and cap is not None:
      continue  # only CUDA devices have a compute capability
    kw = dict(platform=plat, dtype=dt, head_dim=dh, length=length, segments=seg, capability=cap)
    try:
      yield req, kw, choose_attention(req, **kw)
    except ValueError as e:
      yield req, kw, e


def test_decision_table_invariants():
  rows = list(table())
  assert len(rows) > 2000
  for req, kw, out in rows:
    if isinstance(out, ValueError):
      # Only an insisted-on fused kernel may refuse, in one line that names it.
      assert req in ('cudnn', 'splash') and '\n' not in str(out) and req in str(out), (req, kw)
      continue
    impl, reason = out
    assert '\n' not in reason
    accelerator = kw['platform'] != 'cpu'
    if accelerator and kw['length'] >= LONG and impl in ('xla', 'reference'):
      assert reason, f'L x L scores materialized silently: {req} {kw}'
    if impl in ('xla', 'reference') and reason:
      assert str(kw['length']) in reason  # the warning says at which length
    if req != 'auto':
      assert impl == req  # an explicit choice is honoured (or refused)
    elif kw['platform'] == 'cpu':
      assert (impl, reason) == ('xla', '')
    elif kw['platform'] == 'tpu':
      assert impl == ('splash' if kw['length'] % 128 == 0 else 'xla')
      assert bool(reason) == (impl == 'xla')
    else:
      assert impl in ('cudnn', 'xla') and bool(reason) == (impl == 'xla')


@pytest.mark.parametrize(
  'kw, impl, why',
  [
    (dict(dtype='bfloat16', head_dim=64, length=2048, capability=9.0), 'cudnn', ''),
    (dict(dtype='float16', head_dim=128, length=2048, capability=8.0), 'cudnn', ''),
    (dict(dtype='bfloat16', head_dim=64, length=100, capability=8.0), 'cudnn', ''),
    (dict(dtype='bfloat16', head_dim=256, length=2048, capability=9.0), 'cudnn', ''),
    (dict(dtype='bfloat16', head_dim=64, length=2048, segments=True, capability=9.0), 'cudnn', ''),
    (dict(dtype='float32', head_dim=64, length=2048, capability=9.0), 'xla', 'float32'),
    (dict(dtype='bfloat16', head_dim=256, length=2048, capability=8.0), 'xla', 'head_dim 256'),
    (dict(dtype='bfloat16', head_dim=60, length=2048, capability=9.0), 'xla', 'head_dim 60'),
    (dict(dtype='bfloat16', head_dim=64, length=2048, capability=7.5), 'xla', 'capability'),
    (dict(dtype='bfloat16', head_dim=64, length=2048, capability=None), 'xla', 'CUDA'),
    (
      dict(dtype='bfloat16', head_dim=64, length=2047, segments=True, capability=9.0),
      'xla',
      'even',
    ),
  ],
)
def test_auto_on_gpu(kw, impl, why):
  got, reason = choose_attention('auto', platform='gpu', **kw)
  assert got == impl
  assert (why in reason) if why else reason == ''


@pytest.mark.parametrize('length, dh', [(64, 64), (100, 64), (1000, 128), (2047, 8), (64, 256)])
def test_cudnn_rule_agrees_with_jaxs_own_check(length, dh):
  """Below Hopper, our cuDNN rule refuses exactly what JAX's own flash-attention check does."""
  from jax._src.cudnn import fused_attention_stablehlo as fa

  q = jax.ShapeDtypeStruct((1, length, 2, dh), jnp.bfloat16)
  for has_bias in (False, True):
    try:
      fa.check_is_flash_attention(q, q, q, fa.AttentionLayout.BTNH.value, 91000, has_bias, True)
      jax_ok = True
    except NotImplementedError:
      jax_ok = False
    ours = kernels.cudnn_problem('bfloat16', dh, length, has_bias, capability=8.0)
    assert jax_ok == (ours == ''), (length, dh, has_bias, ours)


def test_auto_on_tpu_and_cpu():
  kw = dict(dtype='bfloat16', head_dim=64)
  assert choose_attention('auto', platform='tpu', length=2048, **kw) == ('splash', '')
  impl, reason = choose_attention('auto', platform='tpu', length=1000, **kw)
  assert impl == 'xla' and 'multiple of 128' in reason and '1000' in reason
  assert choose_attention('auto', platform='cpu', length=4096, **kw) == ('xla', '')


def test_insisting_on_a_missing_kernel_is_a_one_line_config_error():
  cfg = default.get_config().model
  cfg.attention_impl = 'cudnn'
  with pytest.raises(ValueError, match='needs a GPU') as e:
    ModelConfig.from_config(cfg, vocab_size=64, platform='cpu')
  assert '\n' not in str(e.value)
  assert ModelConfig.from_config(cfg, vocab_size=64, platform='gpu').attention_impl == 'cudnn'
  cfg.attention_impl = 'splash'
  with pytest.raises(ValueError, match='needs a TPU'):
    ModelConfig.from_config(cfg, vocab_size=64, platform='gpu')
  # No platform given: the machine's, checked by validate (this one is a CPU).
  config = default.get_config()
  for impl in ('cudnn', 'splash'):
    config.model.attention_impl = impl
    validate.check_config(config, on_this_machine=False)  # planned for another machine
    with pytest.raises(ValueError, match=f'needs a {"GPU" if impl == "cudnn" else "TPU"}'):
      validate.check_config(config)
  assert model_cfg().attention_impl == 'auto'  # the default


def test_model_config_starts_no_backend(tmp_path):
  """XLA reads XLA_FLAGS when the backend starts: config checks must leave it unstarted."""
  code = (
    'from experiments.configs import gpt3\n'
    'from models.transformer import ModelConfig\n'
    'from train import validate\n'
    'from jax._src import xla_bridge\n'
    "c = gpt3.get_config('Medium'); c.model.vocab_size = 50304\n"
    'validate.check_config(c, on_this_machine=False)\n'
    "ModelConfig.from_config(c.model); ModelConfig.from_config(c.model, platform='gpu')\n"
    'assert not xla_bridge.backends_are_initialized()\n'
  )
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, check=True, timeout=300)


def test_fallback_is_logged_once_per_reason(monkeypatch, caplog):
  """A GPU run in float32 falls back to XLA and says why, once, however often it traces."""
  monkeypatch.setattr(kernels, '_logged', set())
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  monkeypatch.setattr(kernels, 'device_capability', lambda: 9.0)
  attn = MultiHeadAttention(32, 4, 4, 8, rngs=nnx.Rngs(0))
  with caplog.at_level(logging.WARNING):
    impls = [attn.resolved_impl(2048, segments=False) for _ in range(3)]
    impls.append(attn.resolved_impl(4096, segments=False))  # another length: another reason
  assert impls == ['xla'] * 4
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 2, warnings
  assert 'float32' in warnings[0] and 'L=2048' in warnings[0] and 'L=4096' in warnings[1]


def random_biases(attn):
  for name in ('bq_HxDh', 'bk_KxDh', 'bv_KxDh', 'bo_D'):
    var = getattr(attn, name)
    var[...] = jax.random.normal(jax.random.key(2), var[...].shape) * 0.1


@pytest.mark.parametrize('impl', ['auto', 'xla', 'reference'])
@pytest.mark.parametrize('kv_heads', [4, 2])
def test_cpu_paths_match_the_textbook_within_segments(impl, kv_heads):
  """Each document of a packed row is attended to as if it were alone (the textbook)."""
  attn = MultiHeadAttention(32, 4, kv_heads, 8, rngs=nnx.Rngs(1), impl=impl)
  random_biases(attn)
  x = jax.random.normal(jax.random.key(3), (2, 16, 32))
  seg = jnp.array([[1] * 6 + [2] * 10, [3] * 16])
  got = np.asarray(attn(x, seg))
  x64 = np.asarray(x, np.float64)
  for b, lo, hi in [(0, 0, 6), (0, 6, 16), (1, 0, 16)]:
    want = textbook_attention(attn, x64[b, lo:hi])
    np.testing.assert_allclose(got[b, lo:hi], want, rtol=1e-4, atol=1e-5)


def test_splash_kernel_matches_the_textbook():
  """The TPU kernel, run by the Pallas interpreter: GQA, two documents in one row."""
  attn = MultiHeadAttention(16, 4, 2, 8, rngs=nnx.Rngs(1), impl='splash')
  random_biases(attn)
  x = jax.random.normal(jax.random.key(3), (1, 128, 16))
  seg = jnp.array([[1] * 50 + [2] * 78])
  got = np.asarray(jax.jit(attn)(x, seg))
  x64 = np.asarray(x, np.float64)
  for lo, hi in [(0, 50), (50, 128)]:
    np.testing.assert_allclose(
      got[0, lo:hi], textbook_attention(attn, x64[0, lo:hi]), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize('overrides', [{'pos_emb': 'rope', 'num_kv_heads': 2}])
def test_auto_and_reference_models_agree_with_rope_and_gqa(overrides):
  """Rope rotates q and k before the implementations differ: all must agree after it."""
  toks = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
  seg = jnp.array([[1] * 6 + [2] * 10, [1] * 16])
  outs = [
    Transformer(model_cfg(attention_impl=impl, **overrides), rngs=nnx.Rngs(0))(toks, seg)
    for impl in ('reference', 'auto')
  ]
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def _tiny_trainer(impl: str):
  config = default.get_config()
  config.model.update(dict(d_model=32, num_layers=1, num_heads=2, max_seq_len=16))
  config.model.attention_impl = impl
  config.data.seq_len = 16
  cfg = ModelConfig.from_config(config.model, vocab_size=64)
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  return config, cfg, mesh, make_trainer(config, cfg, mesh)


_NO_PLAN = 'INTERNAL: cuDNN: no execution plans found for this graph (fmha)'


@pytest.mark.parametrize(
  'impl, error, falls_back',
  [
    ('auto', _NO_PLAN, True),
    ('xla', _NO_PLAN, False),  # insisted on: its error is the user's to see
    ('auto', 'RESOURCE_EXHAUSTED: Out of memory while trying to allocate', False),
  ],
)
def test_auto_survives_a_kernel_that_does_not_compile(monkeypatch, caplog, impl, error, falls_back):
  """A fused kernel that fails to build for a shape (simulated): one line, then XLA attention."""
  config, cfg, mesh, trainer = _tiny_trainer(impl)
  tokens = jnp.ones((8, 16), jnp.int32)
  batch = {'inputs': tokens, 'targets': tokens, 'segment_ids': tokens}
  state = trainer.init()
  real_compile = jax.stages.Lowered.compile
  calls = []

  def compile_fails_once(self, *a, **kw):
    calls.append(1)
    if len(calls) == 1:
      raise RuntimeError(error + '\nin the compiler, at length 16')
    return real_compile(self, *a, **kw)

  monkeypatch.setattr(jax.stages.Lowered, 'compile', compile_fails_once)
  rebuilt = []

  def rebuild(c):
    rebuilt.append(c.attention_impl)
    return make_trainer(config, c, mesh)

  if not falls_back:
    with pytest.raises(RuntimeError, match=error.split(':')[0]):
      compile_train_step(trainer, cfg, rebuild, state, batch)
    assert not rebuilt
    return
  with caplog.at_level(logging.WARNING):
    new, step = compile_train_step(trainer, cfg, rebuild, state, batch)
  assert rebuilt == ['xla']
  (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert 'falls back to XLA' in line and 'no execution plans' in line and '\n' not in line
  # The rebuilt step trains the same parameters: one step of it equals one of an XLA trainer.
  _, _, _, xla = _tiny_trainer('xla')
  got = step(state, batch)[1]['loss']
  want = xla.train_step(xla.init(), batch)[1]['loss']
  np.testing.assert_allclose(got, want, rtol=1e-6)
