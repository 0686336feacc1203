"""Block options (model.norm, model.mlp, model.use_bias, model.qk_norm) against their textbook
definitions in float64 numpy, their parameter and FLOP accounting against independent counts,
and the defaults against GPT-3's block."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments.configs import default, modern
from models import accounting, layers, shapes
from models.attention import MultiHeadAttention
from models.transformer import ModelConfig, Transformer
from tests.test_properties import xla_flops_ratio
from train import checkpoint

RNG = np.random.default_rng(0)


def model_cfg(config=default, **overrides) -> ModelConfig:
  m = config.get_config().model
  m.update(dict(d_model=32, num_layers=2, num_heads=4, max_seq_len=32))
  m.update(overrides)
  return ModelConfig.from_config(m, vocab_size=64)


def randomize(module: nnx.Module, seed: int = 0) -> dict:
  """Every parameter (scales and biases too) set to random values: no 1s and 0s to hide a bug."""
  state = nnx.state(module, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [
    0.5 * jax.random.normal(k, x.shape, x.dtype) + (x.ndim == 1)
    for k, x in zip(keys, leaves, strict=True)
  ]
  nnx.update(module, jax.tree.unflatten(tree, new))
  return jax.tree.map(lambda v: np.asarray(v, np.float64), nnx.state(module).to_pure_dict())


def np_rmsnorm(x, scale, eps=1e-5):
  return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps) * scale


def np_layernorm(x, scale, bias=0.0, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def np_silu(x):
  return x / (1 + np.exp(-x))


def test_rmsnorm_is_x_over_rms_times_scale():
  norm = layers.RMSNorm(16, rngs=nnx.Rngs(0))
  p = randomize(norm)
  x = RNG.normal(size=(3, 5, 16)) * 3 + 1  # a mean: RMSNorm must NOT remove it
  got = np.asarray(norm(jnp.asarray(x, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, np_rmsnorm(x, p['scale_D']), rtol=1e-5, atol=1e-5)
  assert set(p) == {'scale_D'}  # no bias, ever


@pytest.mark.parametrize('use_bias', [True, False])
def test_layernorm_with_and_without_bias(use_bias):
  norm = layers.LayerNorm(16, rngs=nnx.Rngs(0), use_bias=use_bias)
  p = randomize(norm)
  x = RNG.normal(size=(3, 5, 16)) * 3 + 1
  got = np.asarray(norm(jnp.asarray(x, jnp.float32)), np.float64)
  want = np_layernorm(x, p['scale_D'], p.get('bias_D', 0.0))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert set(p) == ({'scale_D', 'bias_D'} if use_bias else {'scale_D'})


@pytest.mark.parametrize('use_bias', [True, False])
def test_swiglu_is_silu_gate_times_up_then_down(use_bias):
  """SwiGLU (Shazeer 2020): (silu(x W1 + b1) * (x W3 + b3)) W2 + b2, W1 the gate."""
  mlp = layers.Mlp(8, 24, rngs=nnx.Rngs(0), init_std=0.3, out_init_std=0.3, kind='swiglu',
                   use_bias=use_bias)  # fmt: skip
  p = randomize(mlp)
  x = RNG.normal(size=(2, 5, 8))
  b = (lambda k: p[k]) if use_bias else (lambda k: 0.0)
  gate, up = x @ p['w1_DxF'] + b('b1_F'), x @ p['w3_DxF'] + b('b3_F')
  want = (np_silu(gate) * up) @ p['w2_FxD'] + b('b2_D')
  got = np.asarray(mlp(jnp.asarray(x, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  n_bias = 2 * 24 + 8 if use_bias else 0
  assert sum(v.size for v in p.values()) == 3 * 8 * 24 + n_bias


def test_gelu_mlp_is_unchanged_by_the_options():
  mlp = layers.Mlp(8, 24, rngs=nnx.Rngs(0), init_std=0.3, out_init_std=0.3, use_bias=False)
  p = randomize(mlp)
  x = RNG.normal(size=(2, 5, 8))
  gelu = lambda h: 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # noqa: E731
  want = gelu(x @ p['w1_DxF']) @ p['w2_FxD']
  got = np.asarray(mlp(jnp.asarray(x, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('kind', ['rmsnorm', 'layernorm'])
@pytest.mark.parametrize('kv_heads', [4, 2])
def test_qk_norm_normalizes_each_heads_query_and_key_before_the_dot(kind, kv_heads):
  """A per-head float64 loop: q_h = norm(x Wq_h), k_g = norm(x Wk_g), softmax(q k^T/sqrt(Dh)) v."""
  attn = MultiHeadAttention(
    16, 4, kv_heads, 8, rngs=nnx.Rngs(0), impl='reference', qk_norm=kind, use_bias=False
  )
  p = randomize(attn)
  norm = (
    (lambda y, w: np_rmsnorm(y, p[f'{w}_norm']['scale_D']))
    if kind == 'rmsnorm'
    else (lambda y, w: np_layernorm(y, p[f'{w}_norm']['scale_D']))
  )
  length = 6
  x = RNG.normal(size=(length, 16))
  outs = []
  for h in range(4):
    g = h // (4 // kv_heads)
    q = norm(x @ p['wq_DxHxDh'][:, h], 'q')
    k = norm(x @ p['wk_DxKxDh'][:, g], 'k')
    v = x @ p['wv_DxKxDh'][:, g]
    s = q @ k.T / np.sqrt(8)
    s[np.triu_indices(length, 1)] = -np.inf
    w = np.exp(s - s.max(-1, keepdims=True))
    outs.append((w / w.sum(-1, keepdims=True)) @ v @ p['wo_HxDhxD'][h])
  got = np.asarray(attn(jnp.asarray(x[None], jnp.float32))[0], np.float64)
  np.testing.assert_allclose(got, sum(outs), rtol=1e-4, atol=1e-4)


def test_use_bias_false_removes_every_bias():
  """Every parameter left is a matrix or a norm's scale; the GPT-3 block has all its biases."""
  for norm in ('layernorm', 'rmsnorm'):
    for mlp in ('gelu', 'swiglu'):
      cfg = model_cfg(norm=norm, mlp=mlp, use_bias=False, qk_norm=True)
      names = _param_shapes(cfg)
      vectors = {n for n, s in names.items() if len(s) == 1}
      assert all(n.endswith('scale_D') for n in vectors), sorted(vectors)
  with_bias = _param_shapes(model_cfg())
  biases = {n.split('/')[-1] for n in with_bias if n.split('/')[-1].startswith('b')}
  assert biases == {'bq_HxDh', 'bk_KxDh', 'bv_KxDh', 'bo_D', 'b1_F', 'b2_D', 'bias_D'}


def _param_shapes(cfg: ModelConfig) -> dict:
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  flat = nnx.state(abstract, nnx.Param).flat_state()
  return {'/'.join(map(str, path)): v.shape for path, v in flat}


def _logical_axes(cfg: ModelConfig) -> dict:
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  flat = nnx.state(abstract, nnx.Param).flat_state()
  return {'/'.join(map(str, p)): (v.shape, v.get_metadata().get('logical_axes')) for p, v in flat}


@pytest.mark.parametrize('scan', [False, True])
def test_every_parameter_of_every_option_has_sharding_names(scan):
  rules = default.get_config().sharding_rules
  cfg = model_cfg(modern, scan_layers=scan)
  for name, (shape, axes) in _logical_axes(cfg).items():
    # A scanned stack has one more leading axis than names: 'layers' (train/sharding.spec_for).
    assert axes is not None and len(axes) + scan * name.startswith('blocks') == len(shape), (
      name,
      shape,
      axes,
    )
    assert all(a is None or a in rules for a in axes), (name, axes)
  assert _logical_axes(cfg)['blocks/0/attn/q_norm/scale_D' if not scan else
                             'blocks/attn/q_norm/scale_D'][1][-1] == 'head_dim'  # fmt: skip


OPTIONS = list(
  itertools.product(['layernorm', 'rmsnorm'], ['gelu', 'swiglu'], [True, False], [False, True])
)


@pytest.mark.parametrize('norm,mlp,use_bias,qk_norm', OPTIONS)
def test_closed_form_counts_equal_the_leaf_sum(norm, mlp, use_bias, qk_norm):
  """models/shapes.py's closed form (SwiGLU: three matrices) against the built model's leaves."""
  opts = dict(norm=norm, mlp=mlp, use_bias=use_bias, qk_norm=qk_norm)
  cfg = model_cfg(num_kv_heads=2, d_ff=40, **opts)
  dims = ('d_model', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim', 'd_ff', 'max_seq_len')
  got = shapes.param_counts(vocab_size=64, **{k: getattr(cfg, k) for k in dims}, **opts)
  assert got == accounting.param_counts(cfg)
  leaves = sum(int(np.prod(s)) for s in _param_shapes(cfg).values())
  assert got['total'] == leaves


def test_swiglu_flops_match_xla_cost_analysis():
  """6 N counts SwiGLU's three matrices: the modern block's FLOPs against XLA's own count."""
  cfg = model_cfg(modern, d_model=128, max_seq_len=64)
  assert cfg.mlp == 'swiglu' and cfg.d_ff == 344
  ratio = xla_flops_ratio(Transformer(cfg, rngs=nnx.Rngs(0)), cfg, 2, 64)
  assert 0.97 < ratio < 1.10, ratio  # the rest: softmax, norms, SiLU, adds


def test_defaults_are_the_gpt3_block_and_old_configs_still_load():
  cfg = model_cfg()
  assert (cfg.norm, cfg.mlp, cfg.use_bias, cfg.qk_norm) == ('layernorm', 'gelu', True, False)
  assert cfg.d_ff == 4 * cfg.d_model
  # A run saved before the options existed has no such keys: it is the GPT-3 block.
  old = default.get_config().model.to_dict()
  for key in ('norm', 'mlp', 'use_bias', 'qk_norm'):
    del old[key]
  assert ModelConfig.from_config(ml_collections.ConfigDict(old), vocab_size=64) == ModelConfig(
    **{
      **cfg.__dict__,
      'd_model': 128,
      'num_layers': 4,
      'max_seq_len': 256,
      'head_dim': 32,
      'd_ff': 512,
    }  # fmt: skip
  )
  # GPT-3's parameters, exactly: 2 LayerNorms with bias per block, biased GELU MLP and QKVO.
  block = {n.split('/', 2)[2] for n in _param_shapes(cfg) if n.startswith('blocks/0/')}
  assert block == {
    'ln1/scale_D', 'ln1/bias_D', 'ln2/scale_D', 'ln2/bias_D', 'mlp/w1_DxF', 'mlp/b1_F',
    'mlp/w2_FxD', 'mlp/b2_D', 'attn/wq_DxHxDh', 'attn/wk_DxKxDh', 'attn/wv_DxKxDh',
    'attn/wo_HxDhxD', 'attn/bq_HxDh', 'attn/bk_KxDh', 'attn/bv_KxDh', 'attn/bo_D',
  }  # fmt: skip


def test_modern_preset_is_the_modern_block():
  cfg = model_cfg(modern)
  assert (cfg.norm, cfg.mlp, cfg.use_bias, cfg.qk_norm, cfg.pos_emb) == (
    'rmsnorm',
    'swiglu',
    False,
    True,
    'rope',
  )
  assert cfg.d_ff == 88  # 8/3 * 32 = 85.3, up to a multiple of 8
  n = accounting.param_counts(cfg)['nonembedding']
  gpt3 = accounting.param_counts(model_cfg())['nonembedding']
  assert abs(n / gpt3 - 1) < 0.03, (n, gpt3)  # about the same N


@pytest.mark.parametrize(
  'key,value', [('norm', 'batchnorm'), ('mlp', 'relu'), ('use_bias', 1), ('qk_norm', 'yes')]
)
def test_bad_option_is_one_line(key, value):
  m = ml_collections.ConfigDict({**default.get_config().model.to_dict(), key: value})
  with pytest.raises(ValueError, match=f'model.{key}='):
    ModelConfig.from_config(m, vocab_size=64)


def test_a_run_saved_before_the_options_resumes_only_as_the_gpt3_block():
  saved = default.get_config().to_dict()
  for key in ('norm', 'mlp', 'use_bias', 'qk_norm'):
    del saved['model'][key]
  checkpoint.check_compatible(saved, default.get_config().to_dict(), 'old')  # no error
  now = default.get_config()
  now.model.norm = 'rmsnorm'
  with pytest.raises(ValueError, match="model.norm: saved 'layernorm' vs now 'rmsnorm'"):
    checkpoint.check_compatible(saved, now.to_dict(), 'old')
