"""train/optim.py against closed forms: schedules, the decay mask, clipping, one update of each."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.configs import default
from models.transformer import ModelConfig, Transformer
from train import optim


def train_cfg(**overrides):
  t = default.get_config().train
  t.update(dict(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1, decay_fraction=0.2))
  t.update(overrides)
  return t


def closed_form(name, s, peak=1e-3, floor=1e-4, warmup=10, steps=100, decay=20):
  """The schedules as written in papers, one step at a time."""
  if s < warmup:
    return peak * s / warmup
  if name == 'constant':
    return peak
  if name == 'cosine':
    frac = min((s - warmup) / (steps - warmup), 1.0)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * frac))
  if name == 'wsd':
    if s <= steps - decay:
      return peak
    return peak + (floor - peak) * min((s - (steps - decay)) / decay, 1.0)
  raise AssertionError(name)


@pytest.mark.parametrize('name', ['cosine', 'wsd', 'constant'])
def test_schedule_matches_its_closed_form_everywhere(name):
  sched = optim.lr_schedule(train_cfg(schedule=name))
  got = np.array([float(sched(s)) for s in range(0, 101)])
  want = np.array([closed_form(name, s) for s in range(0, 101)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)
  assert got[0] == 0.0  # nothing is learned before warmup starts
  np.testing.assert_allclose(got[10], 1e-3, rtol=1e-6)  # the peak right after warmup
  np.testing.assert_allclose(got[100], 1e-4 if name != 'constant' else 1e-3, rtol=1e-5)


def test_wsd_is_flat_then_linear():
  sched = optim.lr_schedule(train_cfg(schedule='wsd'))
  lr = np.array([float(sched(s)) for s in range(101)])
  np.testing.assert_allclose(lr[10:81], 1e-3, rtol=1e-6)  # stable until the last 20% of steps
  np.testing.assert_allclose(np.diff(lr[80:]), (1e-4 - 1e-3) / 20, rtol=1e-4)  # then linear


def test_unknown_names_are_one_line_errors():
  for key, value in (('optimizer', 'sgdd'), ('schedule', 'linear')):
    with pytest.raises(ValueError, match=f'train.{key}=.*choose one of') as e:
      optim.check(train_cfg(**{key: value}))
    assert '\n' not in str(e.value)


def small_model(**overrides):
  m = default.get_config().model
  m.update(dict(d_model=16, num_layers=2, num_heads=2, max_seq_len=8, tie_embeddings=False))
  m.update(overrides)
  cfg = ModelConfig.from_config(m, vocab_size=32)
  return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


MATRICES = {'embed_VxD', 'unembed_DxV', 'wq_DxHxDh', 'wk_DxKxDh', 'wv_DxKxDh', 'wo_HxDhxD'}
MATRICES |= {'w1_DxF', 'w2_FxD'}


@pytest.mark.parametrize('scan', [False, True])
def test_decay_mask_is_the_weight_matrices(scan):
  """Matrices decay; biases, norm scales and the position table do not, scanned or not."""
  mask = optim.decay_mask(small_model(scan_layers=scan))
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  decayed = {k.split("'")[-2] for k, v in flat.items() if v}
  kept = {k.split("'")[-2] for k, v in flat.items() if not v}
  assert decayed == MATRICES
  assert 'pos_LxD' in kept and {'bq_HxDh', 'scale_D', 'bias_D', 'b1_F', 'bo_D'} <= kept


def test_decay_rule_reads_metadata_not_names():
  assert optim.decays(('embed', 'mlp'), {})
  assert optim.decays(('heads', 'head_dim', 'embed'), {})
  assert not optim.decays(('embed',), {})
  assert not optim.decays(('heads', 'head_dim'), {})  # a q/k/v bias is 2-D, still a bias
  assert not optim.decays((None, 'embed'), {})  # an unnamed (position) axis
  assert not optim.decays(('embed', 'mlp'), {'weight_decay': False})
  assert optim.decays(('embed',), {'weight_decay': True})


def numpy_adamw(grads, p, lr, b1, b2, eps, wd, decay, clip):
  """AdamW (Loshchilov & Hutter) on global-norm-clipped gradients, float64, all steps at lr."""
  m = v = np.zeros_like(p)
  for i, g in enumerate(grads, start=1):
    g = g * min(1.0, clip / np.linalg.norm(g))
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    mhat, vhat = m / (1 - b1**i), v / (1 - b2**i)
    p = p - lr * (mhat / (np.sqrt(vhat) + eps) + (wd * p if decay else 0))
  return p


@pytest.mark.parametrize('decay', [True, False])
def test_clipped_adamw_updates_equal_the_closed_form(decay):
  t = train_cfg(schedule='constant', warmup_steps=0, weight_decay=0.1, grad_clip=1.0)
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=(3, 4))
  # Norms 10 (clipped to 1), then 0.5 (kept): a run without clipping gives another answer.
  g1, g2 = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  grads = [g1 / np.linalg.norm(g1) * 10, g2 / np.linalg.norm(g2) * 0.5]
  tx = optim.make_optimizer(t, {'w': decay})
  params = {'w': jnp.asarray(p0, jnp.float32)}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
  want = numpy_adamw(grads, p0, 1e-3, t.b1, t.b2, t.eps, 0.1, decay, 1.0)
  np.testing.assert_allclose(np.asarray(params['w']), want, rtol=1e-5, atol=1e-7)


def test_lion_first_step_is_a_sign_step_and_adafactor_descends():
  t = train_cfg(schedule='constant', warmup_steps=0, weight_decay=0.0, grad_clip=0.0)
  g = np.array([[0.3, -2.0], [1e-3, -1e-4]], np.float32)
  tx = optim.make_optimizer(train_cfg(**{**t, 'optimizer': 'lion'}), {'w': True})
  p = {'w': jnp.ones((2, 2))}
  u, _ = tx.update({'w': jnp.asarray(g)}, tx.init(p), p)
  np.testing.assert_allclose(np.asarray(u['w']), -1e-3 * np.sign(g), rtol=1e-6)
  # Adafactor on a quadratic: the loss falls.
  tx = optim.make_optimizer(train_cfg(**{**t, 'optimizer': 'adafactor', 'lr': 0.1}), {'w': True})
  target = jnp.arange(6.0).reshape(2, 3)
  p = {'w': jnp.zeros((2, 3))}
  s = tx.init(p)
  loss = lambda q: jnp.sum((q['w'] - target) ** 2)  # noqa: E731
  first = float(loss(p))
  for _ in range(20):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    p = optax.apply_updates(p, u)
  assert float(loss(p)) < 0.5 * first


@pytest.mark.parametrize('name', sorted(optim.OPTIMIZERS))
def test_every_optimizer_decays_the_masked_leaves_by_lr_times_weight_decay(name):
  """Two leaves with the same values and gradients, one masked out: the updates differ by
  exactly the decoupled decay -lr(step) * weight_decay * p, at every step of the warmup."""
  t = train_cfg(optimizer=name, schedule='constant', warmup_steps=4, weight_decay=0.3)
  t.grad_clip = 0.0
  tx = optim.make_optimizer(t, {'w': True, 'b': False})
  rng = np.random.default_rng(0)
  p0 = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  params = {'w': p0, 'b': p0}
  state = tx.init(params)
  for step in range(4):
    g = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    updates, state = tx.update({'w': g, 'b': g}, state, params)
    lr = 1e-3 * step / 4  # the warmup's closed form
    diff = np.asarray(updates['w'] - updates['b'], np.float64)
    np.testing.assert_allclose(diff, -lr * 0.3 * np.asarray(p0), rtol=1e-4, atol=1e-9)
    if step:
      assert np.abs(np.asarray(updates['b'])).max() > 0  # and the gradient step itself moves
