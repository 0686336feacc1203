"""muP (models/mup.py): the rules by logical axes, SP as its m = 1 case, the coordinate check,
every optimizer, accounting unchanged, and what `seed` changes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments import coord_check
from experiments.configs import default
from experiments.sweeps import common
from models import accounting, mup
from models.transformer import ModelConfig, Transformer
from train import optim

SHAPE = dict(vocab_size=17, num_layers=2, max_seq_len=16, attention_impl='xla')


def _cfg(d, heads, parametrization='sp', base=None, **kw):
  return ModelConfig(
    d_model=d,
    num_heads=heads,
    num_kv_heads=heads,
    head_dim=d // heads,
    d_ff=4 * d,
    parametrization=parametrization,
    mup_base_width=base or d,
    **{**SHAPE, **kw},
  )


def _model(cfg, seed=0):
  with nnx.use_eager_sharding(False):
    return Transformer(cfg, rngs=nnx.Rngs(seed))


def _params(model):
  return nnx.state(model).to_pure_dict()


def _train_cfg(name='adamw', lr=1e-2):
  t = default.get_config().train
  t.optimizer, t.lr, t.warmup_steps, t.schedule, t.steps = name, lr, 0, 'constant', 10
  return t


def _hidden(model):
  """{parameter path: whether its logical axes make it a hidden matrix}."""
  tree = jax.tree.map(
    lambda v: mup.is_hidden(v.get_metadata()['logical_axes']),
    nnx.state(model),
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )
  return _flat(tree)


def _flat(tree):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_roles_by_logical_axes():
  assert mup.is_hidden(('embed', 'mlp')) and mup.is_hidden(('mlp', 'embed'))
  assert mup.is_hidden(('embed', 'heads', 'head_dim')) and mup.is_hidden(
    ('heads', 'head_dim', 'embed')
  )
  assert mup.is_hidden(('embed', 'kv_heads', 'head_dim'))
  for vector_like in [
    ('vocab', 'embed'),
    ('embed', 'vocab'),
    (None, 'embed'),
    ('embed',),
    ('mlp',),
    ('heads', 'head_dim'),
    None,
  ]:
    assert not mup.is_hidden(vector_like), vector_like


@pytest.mark.parametrize('tie', [True, False])
def test_mup_at_base_width_and_unit_head_dim_is_sp_bitwise(tie):
  """m = 1 and Dh = 1 make every muP rule the identity: same logits, same steps, bit for bit."""
  tokens = jnp.arange(24).reshape(2, 12) % 17
  sp, mu = (_model(_cfg(8, 8, p, tie_embeddings=tie)) for p in ('sp', 'mup'))
  np.testing.assert_array_equal(sp(tokens), mu(tokens))
  t = _train_cfg()
  mask = optim.decay_mask(sp)
  tx_sp = optim.make_optimizer(t, mask)
  tx_mu = optim.make_optimizer(t, mask, mup.lr_multipliers(mu, 1.0))
  p_sp, p_mu = _params(sp), _params(mu)
  s_sp, s_mu = tx_sp.init(p_sp), tx_mu.init(p_mu)
  graph = nnx.graphdef(sp)

  def loss(p):
    logits = nnx.merge(graph, p)(tokens)
    return jax.nn.logsumexp(logits, -1).mean() - logits[..., 0].mean()

  for _ in range(2):
    u, s_sp = tx_sp.update(jax.grad(loss)(p_sp), s_sp, p_sp)
    p_sp = jax.tree.map(jnp.add, p_sp, u)
    u, s_mu = tx_mu.update(jax.grad(loss)(p_mu), s_mu, p_mu)
    p_mu = jax.tree.map(jnp.add, p_mu, u)
  jax.tree.map(np.testing.assert_array_equal, p_sp, p_mu)


def test_hidden_init_is_sp_over_sqrt_m_and_the_rest_is_sp():
  sp = _flat(_params(_model(_cfg(64, 4))))
  mu = _flat(_params(_model(_cfg(64, 4, 'mup', base=16))))  # m = 4
  hidden = _hidden(_model(_cfg(64, 4)))
  assert sum(hidden.values()) == 2 * 6  # Q, K, V, O, MLP in and out, in each of 2 blocks
  for k in sp:
    want = sp[k] * np.float32(0.5) if hidden[k] else sp[k]
    np.testing.assert_array_equal(mu[k], want, err_msg=k)


@pytest.mark.parametrize('name', sorted(optim.OPTIMIZERS))
def test_every_optimizer_scales_each_update_by_its_multiplier(name):
  """The muP update of a hidden matrix is the SP update / m; every other update is SP's."""
  model = _model(_cfg(32, 4, 'mup', base=8))  # m = 4
  params = _params(model)
  mult = mup.lr_multipliers(model, 4.0)
  grads = jax.tree.map(
    lambda p: jnp.cos(jnp.arange(p.size, dtype=jnp.float32)).reshape(p.shape), params
  )
  t, mask = _train_cfg(name), optim.decay_mask(model)
  outs = []
  for lr_mult in (None, mult):
    tx = optim.make_optimizer(t, mask, lr_mult)
    state = tx.init(params)
    for _ in range(2):
      u, state = tx.update(grads, state, params)
    outs.append(_flat(u))
  fm = _flat(mult)
  assert sorted(set(fm.values())) == [0.25, 1.0]
  for k, u_sp in outs[0].items():
    np.testing.assert_allclose(outs[1][k], u_sp * fm[k], rtol=1e-6, err_msg=k)
    assert np.abs(u_sp).max() > 0, k


def test_first_adam_step_moves_hidden_matrices_by_lr_over_m():
  """AdamW's first step is ~lr per coordinate: lr / m on hidden matrices, lr elsewhere."""
  model = _model(_cfg(64, 4, 'mup', base=16))  # m = 4
  params = _params(model)
  t = _train_cfg(lr=1e-2)
  t.weight_decay = 0.0
  tx = optim.make_optimizer(t, optim.decay_mask(model), mup.lr_multipliers(model, 4.0))
  grads = jax.tree.map(jnp.ones_like, params)
  u, _ = tx.update(grads, tx.init(params), params)
  hidden = _hidden(model)
  for k, v in _flat(u).items():
    want = 1e-2 / 4 if hidden[k] else 1e-2
    np.testing.assert_allclose(np.abs(v), want, rtol=1e-4, err_msg=k)


def test_accounting_does_not_change():
  for tie in (True, False):
    sp, mu = _cfg(64, 4, tie_embeddings=tie), _cfg(64, 4, 'mup', base=16, tie_embeddings=tie)
    assert accounting.param_counts(sp) == accounting.param_counts(mu)
    assert accounting.flops_per_token(sp, 16) == accounting.flops_per_token(mu, 16)


def test_coordinate_check_flat_under_mup_and_growing_under_sp():
  """Widths 32 and 512 (16x), 3 AdamW steps at lr 1e-2, after the last step:

  muP: every layer's mean |x| at the two widths within coord_check.FLAT = 4x of each other
  (measured <= 2.9x with widths 32/128/512; `python -m experiments.coord_check`);
  SP: the updated layers grow with width, the hidden ones by more than SP_GROWTH.
  """
  mup_bound, sp_growth = coord_check.FLAT, 10.0
  r = coord_check.coord_check(widths=(32, 512))
  mu, sp = r['runs']['mup'], r['runs']['sp']
  assert mu['flat'] and max(mu['spread'].values()) < mup_bound, mu['spread']
  for k, s in sp['spread'].items():
    if k.startswith('block'):
      assert s > sp_growth, (k, sp['spread'])
  assert sp['spread']['logits'] > mup_bound, sp['spread']
  widths = r['widths']
  for k in sp['spread']:  # SP's scales grow, not shrink, with width
    if k.startswith('block'):
      assert sp['scales'][widths[-1]][-1][k] > sp['scales'][widths[0]][-1][k]


def test_seed_changes_initialisation_and_data_order():
  from data.pipeline import DataPipeline

  a, b = (_flat(_params(_model(_cfg(32, 4), seed=s))) for s in (0, 1))
  assert all(not np.array_equal(a[k], b[k]) for k in a if 'w' in k.split("'")[-2][:2])
  d = default.get_config().data
  first = [next(DataPipeline(d, 8, 64, s, 0, 1).train_iterator())['inputs'] for s in (0, 1, 0)]
  assert not np.array_equal(first[0], first[1])
  np.testing.assert_array_equal(first[0], first[2])


def test_grid_runs_tag_size_lr_and_seed():
  s = common.Shape(2, 64, 2)
  lrs = common.lr_grid(4e-3, points=5)
  assert lrs[2] == 4e-3 and lrs[3] / lrs[2] == pytest.approx(2**0.5, rel=1e-3)
  runs = common.grid_runs(s.name, lambda lr: common.train_overrides(100, lr), lrs, seeds=(0, 1))
  assert len(runs) == 10 and len({n for n, _ in runs}) == 10
  for name, o in runs:
    assert o['seed'] == o['tags.seed'] and o['tags.size'] == s.name
    assert o['tags.lr'] == o['train.lr'] and name.endswith(f'-s{o["seed"]}')
  with pytest.raises(ValueError, match='distinct seeds'):
    common.grid_runs('x', lambda lr: common.train_overrides(100, lr), lrs, seeds=(0, 0))


def test_bad_parametrization_is_one_error():
  m = default.get_config().model
  m.parametrization = 'ntk'
  with pytest.raises(ValueError, match="parametrization='ntk'"):
    ModelConfig.from_config(m, vocab_size=257)
  m.parametrization, m.mup_base_width = 'mup', 0
  with pytest.raises(ValueError, match='mup_base_width'):
    ModelConfig.from_config(m, vocab_size=257)


def test_an_optimizer_that_refuses_mup_says_so(monkeypatch):
  monkeypatch.setitem(optim.NO_MUP, 'lion', 'its update is not per-coordinate O(lr)')
  t = ml_collections.ConfigDict(dict(_train_cfg('lion')))
  optim.check(t)  # SP: fine
  with pytest.raises(ValueError, match='does not support model.parametrization=mup'):
    optim.check(t, mup=True)


def test_mup_scores_are_qk_over_head_dim():
  """At m = 1 muP differs from SP only in the scores: QK^T / Dh, i.e. SP with W_q / sqrt(Dh)."""
  tokens = jnp.arange(24).reshape(2, 12) % 17
  sp, mu = _model(_cfg(16, 4)), _model(_cfg(16, 4, 'mup'))  # Dh = 4: 1 / sqrt(Dh) = 0.5 exactly
  assert not np.allclose(sp(tokens), mu(tokens), atol=1e-6)
  for block in sp.blocks:
    block.attn.wq_DxHxDh[...] = block.attn.wq_DxHxDh[...] * 0.5
  np.testing.assert_allclose(sp(tokens), mu(tokens), rtol=1e-6, atol=1e-7)


def test_checkpoints_written_before_mup_resume_as_sp_only():
  from train import checkpoint

  now = default.get_config().to_dict()
  saved = default.get_config().to_dict()
  del saved['model']['parametrization'], saved['model']['mup_base_width']
  checkpoint.check_compatible(saved, now, 'w')  # an older SP run resumes
  now['model']['parametrization'] = 'mup'
  with pytest.raises(ValueError, match="model.parametrization: saved 'sp' vs now 'mup'"):
    checkpoint.check_compatible(saved, now, 'w')
