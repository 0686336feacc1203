"""Properties with a closed form or an independent oracle: loss, z-loss, RoPE, sharding rules, eval
statistics, FLOPs, the reduced-width rule."""

import json
import math
import statistics
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from experiments.configs import default
from models import accounting, gpt3
from models.attention import rope
from models.transformer import ModelConfig, Transformer
from train import loop, metrics, sharding
from train.step import cross_entropy, make_trainer


def numpy_nll(logits, targets):
  """-log softmax(logits)[target], float64, written out."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 5, (3, 7, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (3, 7))
  nll, logz = cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(nll, numpy_nll(logits, targets), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logz, np.log(np.exp(logits.astype(np.float64)).sum(-1)), rtol=1e-5)


def tiny(**overrides):
  c = default.get_config()
  c.model.update(dict(d_model=32, num_layers=2, num_heads=4, max_seq_len=32))
  c.data.seq_len = 32
  c.train.update(dict(steps=8, global_batch=8, warmup_steps=2))
  for k, v in overrides.items():
    section, key = k.split('.')
    c[section][key] = v
  return c


def test_loss_at_initialization_is_ln_vocab():
  """Small initial weights give nearly uniform predictions: loss = ln V."""
  cfg = ModelConfig.from_config(tiny().model, vocab_size=257)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  x = jax.random.randint(jax.random.key(0), (4, 33), 0, 257)
  nll, _ = cross_entropy(model(x[:, :-1]), x[:, 1:])
  assert abs(float(nll.mean()) - math.log(257)) < 0.02


def test_z_loss_adds_its_closed_form_gradient():
  """With z_loss the step's gradient is that of nll + z * mean(log Z^2), computed here anew."""
  z = 0.5
  config = tiny(**{'train.z_loss': z})
  model_cfg = ModelConfig.from_config(config.model, vocab_size=256)
  mesh = sharding.make_mesh({}, jax.devices()[:1])
  x = np.random.default_rng(0).integers(0, 256, (8, 33)).astype(np.int32)
  batch = {'inputs': x[:, :-1], 'targets': x[:, 1:], 'segment_ids': np.ones((8, 32), np.int32)}
  norms = []
  for zl in (0.0, z):
    config.train.z_loss = zl
    trainer = make_trainer(config, model_cfg, mesh)
    state = trainer.init()
    params = jax.tree.map(np.asarray, state['params'])
    _, m = trainer.train_step(state, jax.device_put(batch, trainer.batch_sharding))
    norms.append(float(m['grad_norm']))

  def loss(p):
    logits = nnx.merge(trainer.graphdef, p)(jnp.asarray(batch['inputs']))
    top = logits.max(-1, keepdims=True)
    logz = jnp.log(jnp.exp(logits - top).sum(-1)) + top[..., 0]
    target = jnp.take_along_axis(logits, jnp.asarray(batch['targets'])[..., None], -1)[..., 0]
    return (logz - target).mean() + z * jnp.square(logz).mean()

  g = jax.jit(jax.grad(loss))(params)  # one compile, not hundreds of eager ops
  want = float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(g))))
  np.testing.assert_allclose(norms[1], want, rtol=1e-4)
  assert abs(norms[1] - norms[0]) > 1e-3 * norms[0]  # switched on, it changes the gradient


def test_rope_is_a_rotation_by_position_times_frequency():
  """Pair (i, i + Dh/2) at position m is rotated by m * base^(-i / (Dh/2)) (complex form)."""
  dh, half = 8, 4
  x = np.random.default_rng(0).normal(size=(1, 5, 1, dh)).astype(np.float32)
  got = np.asarray(rope(jnp.asarray(x), jnp.arange(5)))
  theta = 10000.0 ** (-np.arange(half) / half)
  c = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * np.arange(5)[None, :, None, None] * theta)
  np.testing.assert_allclose(got, np.concatenate([c.real, c.imag], -1), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_the_offset():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)

  def score(m, n):
    return float(jnp.sum(rope(q, jnp.array([m])) * rope(k, jnp.array([n]))))

  for offset in (0, 3, 17):
    same = [score(m + offset, m) for m in (0, 5, 40, 200)]
    np.testing.assert_allclose(same, same[0], rtol=1e-4, atol=1e-4)
  assert abs(score(3, 0) - score(0, 3)) > 1e-3  # ... and on its sign: the order is seen


MESH_RULES = default.get_config().sharding_rules


@pytest.mark.parametrize(
  'axes, shape, want',
  [
    (('embed', 'mlp'), (32, 128), P('fsdp', 'tensor')),  # Megatron: MLP in-projection
    (('mlp', 'embed'), (128, 32), P('tensor', 'fsdp')),
    (('vocab', 'embed'), (256, 32), P('tensor', 'fsdp')),
    (('embed', 'heads', 'head_dim'), (32, 4, 8), P('fsdp', 'tensor', None)),
    (('heads', 'head_dim', 'embed'), (4, 8, 32), P('tensor', None, 'fsdp')),
    (('embed', 'kv_heads', 'head_dim'), (32, 1, 8), P('fsdp', None, None)),  # MQA: 1 kv head
    (('embed', 'mlp'), (2, 7, 128), P(None, None, 'tensor')),  # stacked layers; 7 not split
    ((None, 'embed'), (32, 32), P(None, 'fsdp')),  # the position table
    (('embed',), (32,), P('fsdp')),
  ],
)
def test_spec_for_maps_logical_axes_to_mesh_axes(axes, shape, want):
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert sharding.spec_for(axes, shape, MESH_RULES, mesh) == want


def test_spec_for_uses_a_mesh_axis_once_and_skips_size_one_axes():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert sharding.spec_for(('mlp', 'heads'), (8, 8), MESH_RULES, mesh) == P('tensor', None)
  only_data = sharding.make_mesh({'data': 8})
  assert sharding.spec_for(('embed', 'mlp'), (32, 128), MESH_RULES, only_data) == P(None, None)
  assert sharding.batch_sharding(mesh, MESH_RULES).spec == P(('data', 'fsdp'))
  # A parameter name claims its mesh axes before an activation name does, wherever it stands:
  # the embedding lookup's rows keep the table's fsdp split, the batch takes what is left.
  lookup = ('batch', 'act_length', 'embed')
  assert sharding.spec_for(lookup, (8, 16, 32), MESH_RULES, mesh) == P('data', None, 'fsdp')
  assert sharding.spec_for(lookup[::-1], (32, 16, 8), MESH_RULES, mesh) == P('fsdp', None, 'data')


def test_evaluate_reports_mean_standard_error_and_bits_per_byte():
  per_seq = [np.array([2.0, 3.0, 2.5, 4.0]), np.array([1.0, 3.5, 2.0, 2.0])]
  fake = types.SimpleNamespace(eval_step=lambda params, batch: batch)
  got = loop.evaluate(fake, None, per_seq, bytes_per_token=3.0)
  values = [float(v) for b in per_seq for v in b]
  mean = statistics.fmean(values)
  assert got['eval_loss'] == pytest.approx(mean)
  assert got['eval_loss_sem'] == pytest.approx(statistics.stdev(values) / math.sqrt(8))
  assert got['eval_bpb'] == pytest.approx(mean / math.log(2) / 3.0)  # nats/token -> bits/byte


@pytest.mark.parametrize(
  'shape',
  [
    dict(num_heads=4),  # heads x head_dim = d_model
    dict(num_heads=4, head_dim=48),  # an attention wider than d_model (192 != 128)
    dict(num_heads=8, num_kv_heads=2, head_dim=8),  # GQA, narrower than d_model (64)
  ],
  ids=['square', 'wide-heads', 'gqa'],
)
def test_flops_per_token_matches_xla_cost_analysis(shape):
  """The PaLM count is the matmul FLOPs XLA counts in the compiled forward+backward, also where
  the attention's width heads x head_dim is not d_model and K/V have fewer heads than Q."""
  c = tiny()
  c.model.update(dict(d_model=128, num_layers=2, max_seq_len=256, **shape))
  cfg = ModelConfig.from_config(c.model, vocab_size=256)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  ratio = xla_flops_ratio(model, cfg, 1, 256)
  # At T 256 the attention term is a fifth of the total: an attention width of d_model instead
  # of heads x head_dim moves the ratio by 10% on the two shapes where they differ.
  assert 0.99 < ratio < 1.05, ratio  # the rest: softmax, norms, GELU, adds


def xla_flops_ratio(model, cfg, b: int, t: int) -> float:
  """XLA's FLOPs of the model's forward + backward on B x L tokens over accounting's count."""
  graphdef, params = nnx.split(model)
  x = jnp.zeros((b, t), jnp.int32)

  def loss(p):
    return nnx.merge(graphdef, p)(x).sum()

  cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost['flops'] / (accounting.flops_per_token(cfg, t) * b * t)


def test_reduced_width_divides_head_dim_and_keeps_depth_and_heads():
  # GPT-3 Small: d 768, 12 layers, 12 heads of 64 (Brown et al. 2020, Table 2.1).
  want = dict(d_model=96, num_layers=12, num_heads=12, num_kv_heads=0, head_dim=8, d_ff=384)
  assert gpt3.reduced('Small', 8) == {**want, 'pos_emb': 'learned'}
  assert gpt3.reduced('Small', 64)['head_dim'] == 4  # never below min_head_dim
  # 13B: d 5140 as printed, 40 heads of 128.
  r = gpt3.reduced('13B', 16)
  assert (r['num_layers'], r['num_heads'], r['head_dim'], r['d_model']) == (40, 40, 8, 320)


def test_metrics_writer_writes_plain_json_numbers(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path), total_steps=10)
  w.write({'kind': 'train', 'step': np.int64(3), 'loss': np.float32(1.5), 'mfu': None})
  w.close()
  line = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert json.loads(line[0]) == {'kind': 'train', 'step': 3, 'loss': 1.5, 'mfu': None}
  assert not (tmp_path / 'off').exists()
  metrics.MetricsWriter(str(tmp_path / 'off'), 10, enabled=False).write({'step': 1})
  assert not (tmp_path / 'off').exists()  # only process 0 writes


def test_gpt3_reduced_sweep_follows_the_paper_table():
  """The sweep's runs against Brown et al. 2020, Table 2.1, typed in here (not read from code):
  (layers, heads, head size, lr, batch in M tokens); XL built with 16 heads of 128 (= d 2048)."""
  from experiments.sweeps import gpt3_reduced as sweep

  paper = {
    'Small': (12, 12, 64, 6.0e-4, 0.5),
    'Medium': (24, 16, 64, 3.0e-4, 0.5),
    'Large': (24, 16, 96, 2.5e-4, 0.5),
    'XL': (24, 16, 128, 2.0e-4, 1.0),
  }
  runs = dict(sweep.get_sweep())
  assert len(runs) == len(sweep.ROWS)
  for name, run in runs.items():
    layers, heads, dh, lr, batch_m = paper[name.split('-')[1]]
    head_dim = max(4, round(dh / sweep.WIDTH_FACTOR))
    assert (run['model.num_layers'], run['model.num_heads']) == (layers, heads)
    assert (run['model.head_dim'], run['model.d_model']) == (head_dim, heads * head_dim)
    assert run['model.d_ff'] == 4 * heads * head_dim
    assert run['train.lr'] == pytest.approx(lr * sweep.LR_SCALE)
    assert run['train.global_batch'] == sweep.BATCH_SEQS * batch_m / 0.5
