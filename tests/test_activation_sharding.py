"""Activation sharding on 8 fake CPU devices: the sharded model computes what the unsharded one
does, and inside the compiled program its activations carry the shardings the rules ask for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.configs import default
from models import attention, layers, transformer
from models.transformer import Transformer
from tests.test_models import model_cfg
from train import sharding
from train.step import make_trainer

DF = ('data', 'fsdp')
# (mesh, rule overrides, expected spec per activation kind). H = 4 query heads, K = 2 kv heads.
CASES = {
  'data': (
    {'data': 8},
    {},
    {
      'residual': P('data', None, None),
      'lookup': P('data', None, None),
      'heads': P('data', None, None, None),
      'kv_heads': P('data', None, None, None),
      'mlp': P('data', None, None),
      'logits': P('data', None, None),
    },
  ),
  'data_fsdp_tensor': (
    {'data': 2, 'fsdp': 2, 'tensor': 2},
    {},
    {
      'residual': P(DF, None, None),
      'lookup': P('data', None, 'fsdp'),  # the table's column split; batch over what is left
      'heads': P(DF, None, 'tensor', None),
      'kv_heads': P(DF, None, 'tensor', None),
      'mlp': P(DF, None, 'tensor'),
      'logits': P(DF, None, 'tensor'),
    },
  ),
  # Megatron sequence parallelism: the residual stream split along L over 'tensor'; K = 2
  # kv heads cannot be split 4 ways and stay whole.
  'fsdp_tensor_sequence': (
    {'data': 1, 'fsdp': 2, 'tensor': 4},
    {'act_length': 'tensor'},
    {
      'residual': P('fsdp', 'tensor', None),
      'lookup': P(None, 'tensor', 'fsdp'),
      'heads': P('fsdp', None, 'tensor', None),
      'kv_heads': P('fsdp', None, None, None),
      'mlp': P('fsdp', None, 'tensor'),
      'logits': P('fsdp', 'tensor', None),
    },
  ),
}
KINDS = {
  layers.RESIDUAL: 'residual',
  layers.LOOKUP: 'lookup',
  ('batch', None, 'act_heads', None): 'heads',
  ('batch', None, 'act_kv_heads', None): 'kv_heads',
  ('batch', None, 'act_mlp'): 'mlp',
  ('batch', 'act_length', 'act_vocab'): 'logits',
}


def setup(case, **overrides):
  mesh_cfg, rule_overrides, expected = CASES[case]
  config = default.get_config()
  config.sharding_rules.update(rule_overrides)
  mesh = sharding.make_mesh(mesh_cfg)
  cfg = model_cfg(num_kv_heads=2, **overrides)
  return config, mesh, cfg, expected


@pytest.mark.parametrize('case', list(CASES))
def test_sharded_forward_equals_unsharded_and_activations_are_sharded(case, monkeypatch):
  config, mesh, cfg, expected = setup(case)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  toks = jax.random.randint(jax.random.key(0), (8, 16), 0, 64)
  want = model(toks)  # no mesh: one device, constraints are no-ops

  seen = []  # (logical axes, sharding the compiled program gave the constrained array)

  real = layers.constrain

  def recording(x, axes):
    y = real(x, axes)
    jax.debug.inspect_array_sharding(y, callback=lambda s: seen.append((tuple(axes), s)))
    return y

  for module in (attention, transformer, layers):  # layers: the MLP's own constrain
    monkeypatch.setattr(module, 'constrain', recording)

  graph, params = nnx.split(model)
  param_sh = sharding.param_shardings(model, config.sharding_rules, mesh)
  params = jax.device_put(params.to_pure_dict(), param_sh)
  toks_sh = jax.device_put(toks, sharding.batch_sharding(mesh, config.sharding_rules))

  @jax.jit
  def forward(params, toks):
    with sharding.activation_sharding(config.sharding_rules, mesh):
      return nnx.merge(graph, params)(toks)

  got = forward(params, toks_sh)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  kinds = {KINDS[axes] for axes, _ in seen}
  assert kinds == set(expected), kinds
  for axes, s in seen:
    spec = expected[KINDS[axes]]
    assert s.is_equivalent_to(NamedSharding(mesh, spec), len(spec)), (axes, s, spec)


def test_no_mesh_no_constraints():
  """Outside activation_sharding (one device, tests, inspection) constrain is the identity."""
  x = jnp.ones((2, 3, 4))
  assert layers.constrain(x, layers.RESIDUAL) is x
  assert layers.current_sharding(layers.RESIDUAL, x.shape) is None
  with sharding.activation_sharding(
    default.get_config().sharding_rules, sharding.make_mesh({'data': 1}, jax.devices()[:1])
  ):
    assert layers.current_sharding(layers.RESIDUAL, x.shape) is None


def test_train_step_on_a_mixed_sequence_parallel_mesh_equals_one_device():
  """One train step (scanned layers, remat) on fsdp=2 x tensor=4 with the residual stream split
  along L equals the same step on one device."""
  config, mesh, cfg, _ = setup('fsdp_tensor_sequence', scan_layers=True, remat='dots')
  config.train.global_batch = 8
  one = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  x = np.random.default_rng(0).integers(0, 64, (8, 17)).astype(np.int32)
  batch = {'inputs': x[:, :-1], 'targets': x[:, 1:], 'segment_ids': np.ones((8, 16), np.int32)}
  results = []
  for m in (one, mesh):
    trainer = make_trainer(config, cfg, m)
    state, metrics = trainer.train_step(
      trainer.init(), jax.device_put(batch, trainer.batch_sharding)
    )
    results.append((jax.device_get(state['params']), float(metrics['loss'])))
  (p1, loss1), (p8, loss8) = results
  assert abs(loss1 - loss8) < 1e-5
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)


def test_splash_kernel_under_shard_map_on_a_tensor_mesh():
  """The Pallas kernel runs per device (shard_map over batch and heads); with 2 kv heads for 4
  query heads on tensor = 4, each device gets the kv head its query head reads. Interpreted."""
  rules = default.get_config().sharding_rules
  mesh = sharding.make_mesh({'data': 2, 'tensor': 4})
  splash = attention.MultiHeadAttention(16, 4, 2, 8, rngs=nnx.Rngs(1), impl='splash')
  graph, params = nnx.split(splash)
  x = jax.random.normal(jax.random.key(3), (2, 128, 16))
  seg = jnp.array([[1] * 50 + [2] * 78, [1] * 128])

  @jax.jit
  def forward(params, x, seg):
    with sharding.activation_sharding(rules, mesh):
      return nnx.merge(graph, params)(x, seg)

  assert 'sdy.manual_computation' in forward.lower(params, x, seg).as_text()
  splash.impl = 'reference'
  np.testing.assert_allclose(forward(params, x, seg), splash(x, seg), rtol=1e-5, atol=1e-6)
