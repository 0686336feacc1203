"""Divergence guard: non-finite steps stop the run (or are skipped); nothing non-finite is saved."""

import json
import os
import types

import jax
import numpy as np
import pytest

from models.transformer import ModelConfig
from tests.test_train import assert_trees_equal, final_params, tiny_config, train
from train import metrics, sharding, stops
from train.step import make_trainer


def strict_records(workdir):
  def refuse(token):
    raise ValueError(f'non-JSON constant {token}')

  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line, parse_constant=refuse) for line in f]


def saved_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def all_finite(tree):
  return all(np.isfinite(x).all() for x in jax.tree.leaves(tree))


# lr 1e30: warmup gives lr 0 at step 1 and 5e29 at step 2, whose update makes step 3 non-finite.
EXPLODE = {'train.lr': 1e30, 'train.steps': 8, 'checkpoint.every': 1, 'log_every': 1}


def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
  with pytest.raises(stops.Diverged) as e:
    train(tiny_config(**EXPLODE), tmp_path)
  assert e.value.exit_code == stops.EXIT_DIVERGED
  msg = str(e.value)
  assert '\n' not in msg and 'at step 3' in msg
  assert msg.endswith(os.path.join(str(tmp_path), 'checkpoints', '2'))
  assert saved_steps(tmp_path) == [1, 2]
  for step in saved_steps(tmp_path):
    assert all_finite(final_params(tmp_path, step))
  records = strict_records(tmp_path)  # strict JSON: null, never NaN
  bad = [r for r in records if r['kind'] == 'train' and r['loss'] is None]
  assert [r['step'] for r in bad] == [3]
  assert not os.path.exists(tmp_path / 'summary.json')


def test_patience_without_skipping_still_never_saves_nonfinite_parameters(tmp_path):
  with pytest.raises(stops.Diverged, match='non-finite parameters at step 3, not saved') as e:
    train(tiny_config(**EXPLODE, **{'train.nan_patience': 3}), tmp_path)
  assert str(e.value).endswith(os.path.join(str(tmp_path), 'checkpoints', '2'))
  assert saved_steps(tmp_path) == [1, 2]


def test_skipping_runs_on_with_finite_checkpoints_until_patience_runs_out(tmp_path):
  config = tiny_config(**EXPLODE, **{'train.nan_patience': 2, 'train.skip_nonfinite': True})
  with pytest.raises(stops.Diverged, match=r'at step 4 \(2 consecutive') as e:
    train(config, tmp_path)
  assert str(e.value).endswith(os.path.join(str(tmp_path), 'checkpoints', '3'))
  assert saved_steps(tmp_path) == [1, 2, 3]
  # Step 3 was skipped: its checkpoint holds step 2's parameters.
  assert_trees_equal(final_params(tmp_path, 2), final_params(tmp_path, 3))


def test_a_skipped_update_leaves_parameters_and_optimizer_state_untouched():
  """skip(bad batch) then a good batch == the good batch alone, bit for bit (but the step)."""
  config = tiny_config(**{'train.skip_nonfinite': True})
  model_cfg = ModelConfig.from_config(config.model, vocab_size=256)
  trainer = make_trainer(config, model_cfg, sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}))
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (8, 33)).astype(np.int32)
  good = {'inputs': x[:, :-1], 'targets': x[:, 1:], 'segment_ids': np.ones((8, 32), np.int32)}
  bad = dict(good, targets=np.full_like(good['targets'], 10_000))  # out of vocab: NaN loss
  put = lambda b: jax.device_put(b, trainer.batch_sharding)  # noqa: E731

  direct, _ = trainer.train_step(trainer.init(), put(good))
  skipped, m = trainer.train_step(trainer.init(), put(bad))
  assert not np.isfinite(float(m['loss']))
  assert_trees_equal(jax.device_get(skipped['params']), jax.device_get(trainer.init()['params']))
  assert int(skipped['step']) == 1
  after, _ = trainer.train_step(skipped, put(good))
  assert int(after['step']) == 2
  assert_trees_equal(jax.device_get(after['params']), jax.device_get(direct['params']))
  assert_trees_equal(jax.device_get(after['opt']), jax.device_get(direct['opt']))


def overflowing(trainer):
  """Initial state whose final LayerNorm scale is 1e25: the loss is finite (~1e24) but the
  gradients' squares overflow float32, so the gradient norm is inf."""
  params = jax.device_get(trainer.init()['params'])
  params['ln_f']['scale_D'] = np.full_like(params['ln_f']['scale_D'], 1e25)
  state = trainer.init()
  return dict(state, params=jax.device_put(params, trainer.state_shardings['params']))


def test_a_finite_loss_with_a_nonfinite_gradient_norm_is_skipped():
  config = tiny_config(**{'train.skip_nonfinite': True})
  model_cfg = ModelConfig.from_config(config.model, vocab_size=256)
  trainer = make_trainer(config, model_cfg, sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}))
  x = np.random.default_rng(0).integers(0, 256, (8, 33)).astype(np.int32)
  batch = {'inputs': x[:, :-1], 'targets': x[:, 1:], 'segment_ids': np.ones((8, 32), np.int32)}
  before = jax.device_get(overflowing(trainer))
  after, m = trainer.train_step(overflowing(trainer), jax.device_put(batch, trainer.batch_sharding))
  assert np.isfinite(float(m['loss'])) and not np.isfinite(float(m['grad_norm']))
  assert_trees_equal(jax.device_get(after['params']), before['params'])
  assert_trees_equal(jax.device_get(after['opt']), before['opt'])  # its step count too
  assert int(after['step']) == 1


def test_a_finite_loss_with_a_nonfinite_gradient_norm_stops_the_run(tmp_path):
  """Without skipping, the divergence rule reads every metric, not only the loss."""
  writer = metrics.MetricsWriter(str(tmp_path), total_steps=10)
  rec = metrics.Recorder(writer, tiny_config(**{'train.nan_patience': 2}), 1e6, 0.0, 32)
  good = types.SimpleNamespace(path=lambda: 'CKPT')
  rec.record(1, {'loss': 2.0, 'grad_norm': 1.0}, good)
  rec.record(2, {'loss': 2.0, 'grad_norm': float('inf')}, good)  # patience 2: runs on
  with pytest.raises(stops.Diverged) as e:
    rec.record(3, {'loss': 1.9, 'grad_norm': float('inf')}, good)
  writer.close()
  assert str(e.value) == (
    'diverged: non-finite grad_norm at step 3 (2 consecutive step(s), train.nan_patience=2); '
    'last good checkpoint: CKPT'
  )
  got = [(r['step'], r['loss'], r['grad_norm']) for r in strict_records(tmp_path)]
  assert got == [(1, 2.0, 1.0), (2, 2.0, None), (3, 1.9, None)]  # the last step is written too
