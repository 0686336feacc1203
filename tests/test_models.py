"""Properties of the attention module and the transformer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments.configs import default
from models import accounting, gpt3
from models.attention import MultiHeadAttention
from models.transformer import ModelConfig, Transformer


def model_cfg(**overrides) -> ModelConfig:
  m = default.get_config().model
  m.update(dict(d_model=32, num_layers=2, num_heads=4, max_seq_len=32))
  m.update(overrides)
  return ModelConfig.from_config(m, vocab_size=64)


def tokens(b=2, length=16, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, length), 0, 64)


def textbook_attention(attn: MultiHeadAttention, x_LxD: np.ndarray) -> np.ndarray:
  """One sequence, one head at a time, in float64 numpy: the textbook, literally."""
  p = {k: np.asarray(v[...], np.float64) for k, v in nnx.state(attn).to_pure_dict().items()}
  length, heads, kv = x_LxD.shape[0], attn.num_heads, attn.num_kv_heads
  outs = []
  for h in range(heads):
    g = h // (heads // kv)  # the kv head this query head reads
    q = x_LxD @ p['wq_DxHxDh'][:, h] + p['bq_HxDh'][h]
    k = x_LxD @ p['wk_DxKxDh'][:, g] + p['bk_KxDh'][g]
    v = x_LxD @ p['wv_DxKxDh'][:, g] + p['bv_KxDh'][g]
    scores = q @ k.T / np.sqrt(q.shape[-1])
    scores[np.triu_indices(length, 1)] = -np.inf
    w = np.exp(scores - scores.max(-1, keepdims=True))
    outs.append((w / w.sum(-1, keepdims=True)) @ v)
  concat = np.concatenate(outs, axis=-1)  # heads concatenated ...
  wo = p['wo_HxDhxD'].reshape(-1, p['wo_HxDhxD'].shape[-1])
  return concat @ wo + p['bo_D']  # ... and projected back to d_model


@pytest.mark.parametrize('impl', ['reference', 'xla'])
@pytest.mark.parametrize('kv_heads', [4, 2, 1])
def test_attention_matches_textbook(impl, kv_heads):
  attn = MultiHeadAttention(32, 4, kv_heads, 8, rngs=nnx.Rngs(1), impl=impl)
  # Non-zero biases so that they are exercised too.
  for name in ('bq_HxDh', 'bk_KxDh', 'bv_KxDh', 'bo_D'):
    var = getattr(attn, name)
    var[...] = jax.random.normal(jax.random.key(2), var[...].shape) * 0.1
  x = jax.random.normal(jax.random.key(3), (2, 12, 32))
  got = np.asarray(attn(x))
  for b in range(2):
    np.testing.assert_allclose(
      got[b], textbook_attention(attn, np.asarray(x[b], np.float64)), rtol=1e-4, atol=1e-5
    )


def test_gqa_with_all_kv_heads_is_mha_and_grouping_is_sharing():
  """kv_heads=heads is plain MHA; GQA equals MHA whose K/V heads are repeated per group."""
  gqa = MultiHeadAttention(32, 4, 2, 8, rngs=nnx.Rngs(0), impl='xla')
  mha = MultiHeadAttention(32, 4, 4, 8, rngs=nnx.Rngs(5), impl='xla')
  for name in ('wq_DxHxDh', 'bq_HxDh', 'wo_HxDhxD', 'bo_D'):
    getattr(mha, name)[...] = getattr(gqa, name)[...]
  mha.wk_DxKxDh[...] = jnp.repeat(gqa.wk_DxKxDh[...], 2, axis=1)
  mha.wv_DxKxDh[...] = jnp.repeat(gqa.wv_DxKxDh[...], 2, axis=1)
  x = jax.random.normal(jax.random.key(3), (2, 12, 32))
  np.testing.assert_allclose(gqa(x), mha(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('overrides', [{}, {'pos_emb': 'rope'}, {'num_kv_heads': 2}])
def test_reference_and_fast_attention_agree(overrides):
  ref = Transformer(model_cfg(attention_impl='reference', **overrides), rngs=nnx.Rngs(0))
  fast = Transformer(model_cfg(attention_impl='xla', **overrides), rngs=nnx.Rngs(0))
  seg = jnp.array([[1] * 6 + [2] * 10, [1] * 16])
  for s in (None, seg):
    np.testing.assert_allclose(ref(tokens(), s), fast(tokens(), s), rtol=1e-5, atol=1e-5)


def all_eqns(jaxpr):
  """The equations of a jaxpr and of every jaxpr nested in it (jit, scan, remat)."""
  for e in jaxpr.eqns:
    yield e
    for v in e.params.values():
      for sub in v if isinstance(v, tuple | list) else (v,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from all_eqns(inner)


def test_bfloat16_compute_close_to_float32():
  f32 = Transformer(model_cfg(), rngs=nnx.Rngs(0))
  bf16 = Transformer(model_cfg(dtype='bfloat16'), rngs=nnx.Rngs(0))
  a, b = f32(tokens()), bf16(tokens())
  assert b.dtype == jnp.float32  # logits and the loss stay float32
  assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())
  # ... and bf16 is really used: the logits differ, and the matmuls take bfloat16 operands.
  assert float(jnp.abs(a - b).max()) > 1e-4 * float(jnp.abs(a).max())
  dots = [
    e for e in all_eqns(jax.make_jaxpr(bf16)(tokens()).jaxpr) if e.primitive.name == 'dot_general'
  ]
  assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)


@pytest.mark.parametrize(
  'overrides, segments',
  [
    ({}, False),
    ({'attention_impl': 'reference'}, False),
    ({'attention_impl': 'xla'}, True),  # the explicit-mask path
    ({'pos_emb': 'rope', 'scan_layers': True}, False),
  ],
)
def test_causality(overrides, segments):
  """Outputs at position t do not depend on tokens after t (t+1 included), but later ones do."""
  model = Transformer(model_cfg(**overrides), rngs=nnx.Rngs(0))
  x = tokens(1, 16)
  t = 7
  seg = jnp.ones((1, 16), jnp.int32) if segments else None
  x2 = x.at[:, t + 1 :].set((x[:, t + 1 :] + 13) % 64)
  a, b = model(x, seg), model(x2, seg)
  np.testing.assert_array_equal(a[:, : t + 1], b[:, : t + 1])
  assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_segments_do_not_attend_across_documents():
  model = Transformer(model_cfg(pos_emb='rope'), rngs=nnx.Rngs(0))
  x = tokens(1, 16)
  seg = jnp.array([[1] * 8 + [2] * 8])
  x2 = x.at[:, :8].set((x[:, :8] + 5) % 64)  # change only the first document
  np.testing.assert_allclose(model(x, seg)[:, 8:], model(x2, seg)[:, 8:], atol=1e-6)


def test_attention_weights_are_causal_distributions():
  model = Transformer(model_cfg(), rngs=nnx.Rngs(0))
  w = model.attention_weights(tokens(1, 10))
  assert w.shape == (2, 1, 4, 10, 10)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
  assert float(jnp.triu(w, k=1).max()) == 0.0


def stack_layers(list_model, scan_model):
  """Copies a layer-list model's parameters into a scanned model (stacked on axis 0)."""
  src = nnx.state(list_model).to_pure_dict()
  blocks = [src['blocks'][i] for i in sorted(src['blocks'])]
  src['blocks'] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  nnx.update(scan_model, src)


@pytest.mark.parametrize('remat', ['none', 'full', 'dots'])
def test_scan_and_remat_compute_the_same_function_and_gradient(remat):
  base = Transformer(model_cfg(), rngs=nnx.Rngs(0))
  other = Transformer(model_cfg(scan_layers=True, remat=remat), rngs=nnx.Rngs(1))
  stack_layers(base, other)
  x = tokens()

  def loss(m):
    return m(x).mean()

  np.testing.assert_allclose(base(x), other(x), rtol=1e-5, atol=1e-5)
  g1 = nnx.state(nnx.grad(loss)(base)).to_pure_dict()
  g2 = nnx.state(nnx.grad(loss)(other)).to_pure_dict()
  np.testing.assert_allclose(
    g1['blocks'][1]['mlp']['w1_DxF'], g2['blocks']['mlp']['w1_DxF'][1], rtol=1e-4, atol=1e-6
  )


@pytest.mark.parametrize('name', list(gpt3.GPT3_TABLE))
def test_gpt3_parameter_counts_match_the_paper(name):
  m = ml_collections.ConfigDict(default.get_config().model.to_dict())
  m.update(gpt3.full(name))
  m.scan_layers = True  # abstract shapes only; scanning keeps eval_shape fast at 96 layers
  counts = accounting.param_counts(ModelConfig.from_config(m))
  assert abs(counts['total'] / gpt3.GPT3_TABLE[name].n_params - 1) < 0.03


def test_gpt3_reduced_keeps_layers_and_heads():
  for name, row in gpt3.GPT3_TABLE.items():
    r = gpt3.reduced(name, 8)
    assert r['num_layers'] == row.n_layers
    assert r['num_heads'] == (16 if name == 'XL' else row.n_heads)
    assert r['d_model'] == r['num_heads'] * r['head_dim'] < row.d_model
  assert gpt3.full('XL', as_printed=True)['num_heads'] == 24
  assert gpt3.full('13B')['d_model'] == 5120


def test_accounting_matches_concrete_model_and_formula():
  cfg = model_cfg(tie_embeddings=False)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  concrete = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
  counts = accounting.param_counts(cfg)
  assert counts['total'] == concrete
  d, L, f, v, T = 32, 2, 128, 64, 32
  per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # attention, MLP, two norms
  assert counts['nonembedding'] == L * per_layer + 2 * d  # + final norm
  assert counts['embedding'] == v * d + T * d + d * v  # token, position, untied unembedding
  n_matmul = counts['nonembedding'] + d * v
  assert accounting.flops_per_token(cfg, 16) == 6 * n_matmul + 12 * L * d * 16
  assert (
    accounting.flops_per_token(cfg, 16, 'kaplan') == 6 * counts['nonembedding'] + 6 * L * 16 * d
  )


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'num_heads': 5}, 'does not divide model.d_model'),
    ({'num_kv_heads': 3}, 'must divide model.num_heads'),
    ({'pos_emb': 'alibi'}, 'pos_emb'),
    ({'vocab_size': 100}, 'tokenizer has 64'),
  ],
)
def test_bad_model_shapes_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError, match=message) as e:
    model_cfg(**overrides)
  assert '\n' not in str(e.value)


def test_head_dim_may_be_set_on_its_own():
  cfg = model_cfg(num_heads=5, head_dim=8)  # 5 x 8 = 40 != d_model 32: allowed when explicit
  y = Transformer(cfg, rngs=nnx.Rngs(0))(tokens())
  assert y.shape == (2, 16, 64)
