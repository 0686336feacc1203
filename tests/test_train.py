"""The sharded training loop: learning, sharding equivalence, exact resume, bad input."""

import glob
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from experiments.configs import default
from models import accounting
from models.transformer import ModelConfig
from tests.cluster import REPO
from train import loop, metrics, sharding
from train.step import make_trainer


def tiny_config(**overrides):
  c = default.get_config()
  c.model.update(dict(d_model=32, num_layers=2, num_heads=4, max_seq_len=32))
  c.data.seq_len = 32
  c.train.update(dict(steps=8, global_batch=8, warmup_steps=2, lr=3e-3))
  c.eval.update(dict(every=4, batches=2, batch_size=8))
  c.checkpoint.update(dict(every=2, max_to_keep=3, async_save=False))
  c.log_every = 2
  c.peak_flops = 1e12  # skip the CPU measurement in tests
  for key, value in overrides.items():
    target = c
    *path, last = key.split('.')
    for p in path:
      target = target[p]
    target[last] = value
  return c


def train(config, workdir, stop_at=None):
  return loop.run(loop.prepare(config, str(workdir)), stop_at=stop_at)


def final_params(workdir, step):
  ckpt = ocp.StandardCheckpointer()
  state = ckpt.restore(os.path.join(str(workdir), 'checkpoints', str(step), 'state'))
  return jax.tree.map(np.asarray, state['params'])


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_loss_falls_on_shakespeare(tmp_path):
  summary = train(tiny_config(**{'train.steps': 40, 'eval.every': 40}), tmp_path)
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train_losses = [r['loss'] for r in records if r['kind'] == 'train']
  assert train_losses[0] > 4.5 and train_losses[-1] < train_losses[0] - 1.5
  assert all(v is not None for v in summary.to_dict().values())  # the whole contract filled
  assert summary.final_eval_loss < 4.0  # uniform over 257 tokens would be 5.55
  assert summary.final_eval_loss_sem > 0
  bpt = loop.prepare(tiny_config(), str(tmp_path / 'other')).pipe.bytes_per_token
  np.testing.assert_allclose(
    summary.final_eval_bpb, summary.final_eval_loss / np.log(2) / bpt, rtol=1e-6
  )
  assert {'tokens_per_s', 'mfu', 'grad_norm', 'lr', 'step_time_s'} <= set(records[-1])


def random_batches(n, seed, rows=8, length=32):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    x = rng.integers(0, 256, (rows, length + 1)).astype(np.int32)
    out.append({'inputs': x[:, :-1], 'targets': x[:, 1:], 'segment_ids': np.ones_like(x[:, 1:])})
  return out


def run_steps(config, mesh, batches):
  """Steps through `batches`; returns per-step (loss, grad_norm, lr) and the final params."""
  model_cfg = ModelConfig.from_config(config.model, vocab_size=256)
  trainer = make_trainer(config, model_cfg, mesh)
  state, history = trainer.init(), []
  for b in batches:
    state, m = trainer.train_step(state, jax.device_put(b, trainer.batch_sharding))
    history.append([float(m['loss']), float(m['grad_norm']), float(m['lr'])])
  return np.array(history), jax.tree.map(np.asarray, state['params'])


def assert_same_training(a, b, rtol=1e-4):
  (hist_a, params_a), (hist_b, params_b) = a, b
  assert (hist_a[1:, 2] > 0).all()  # the comparison covers steps that moved the weights
  np.testing.assert_allclose(hist_a, hist_b, rtol=rtol)  # loss, grad_norm and lr per step
  for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=2e-5)  # lr 3e-3: one step moves ~1e-3


def test_records_hold_windowed_loss_tokens_rate_and_mfu(tmp_path):
  """A record every 3 steps holds the mean of those steps' losses (as logged one by one by the
  same run logged every step), tokens = step * B * T, MFU = tokens/s * FLOPs per token / peak."""
  every = {n: tiny_config(**{'train.steps': 6, 'eval.every': 6, 'log_every': n}) for n in (1, 3)}
  for n, config in every.items():
    train(config, tmp_path / str(n))
  one = {r['step']: r for r in records(tmp_path / '1') if r['kind'] == 'train'}
  three = {r['step']: r for r in records(tmp_path / '3') if r['kind'] == 'train'}
  window = np.mean([one[s]['loss'] for s in (4, 5, 6)])
  np.testing.assert_allclose(three[6]['loss'], window, rtol=1e-6)
  model_cfg = ModelConfig.from_config(every[3].model, vocab_size=257)
  fpt = accounting.flops_per_token(model_cfg, 32)
  for r in three.values():
    assert r['tokens'] == r['step'] * 8 * 32 and r['flops'] == pytest.approx(fpt * r['tokens'])
    if r['tokens_per_s'] is not None:
      assert r['tokens_per_s'] == pytest.approx(8 * 32 / r['step_time_s'])
      assert r['mfu'] == pytest.approx(r['tokens_per_s'] * fpt / 1e12)


def test_sharded_steps_equal_single_device_steps():
  """Three steps (two at a non-zero learning rate) on data x fsdp x tensor = 2x2x2 and on 1 CPU."""
  config = tiny_config(**{'train.warmup_steps': 1})
  batches = random_batches(3, seed=0)
  sharded = run_steps(config, sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}), batches)
  single = run_steps(config, sharding.make_mesh({}, jax.devices()[:1]), batches)
  assert_same_training(sharded, single)


def test_grad_accumulation_matches_the_full_batch():
  """Two microbatches give the full batch's loss, gradient norm and updates, step after step."""
  config = tiny_config(**{'train.warmup_steps': 1})
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  batches = random_batches(3, seed=1)
  full = run_steps(config, mesh, batches)
  config.train.grad_accum = 2
  assert_same_training(full, run_steps(config, mesh, batches))


def test_training_with_segment_ids_masks_each_document():
  """With data.segment_ids the step's loss is that of each document run on its own (RoPE)."""
  config = tiny_config(**{'data.segment_ids': True, 'model.pos_emb': 'rope'})
  model_cfg = ModelConfig.from_config(config.model, vocab_size=256)
  mesh = sharding.make_mesh({}, jax.devices()[:1])
  trainer = make_trainer(config, model_cfg, mesh)
  state = trainer.init()
  model = nnx.merge(trainer.graphdef, state['params'])
  x = np.random.default_rng(2).integers(0, 255, (8, 33)).astype(np.int32)
  cut = 1 + np.arange(8) * 3  # row r: document 1 is tokens [0, cut], document 2 the rest
  seg = (np.arange(32)[None, :] > cut[:, None]).astype(np.int32) + 1
  batch = {'inputs': x[:, :-1], 'targets': x[:, 1:], 'segment_ids': seg}
  # Each document alone, as the prefix of its own row: in a causal model a prefix's outputs
  # do not depend on what follows it (test_models checks causality), so one call serves all.
  alone = np.zeros((16, 33), np.int32)
  for r in range(8):
    alone[2 * r] = x[r]
    alone[2 * r + 1, : 32 - cut[r]] = x[r, cut[r] + 1 :]
  logits = np.asarray(jax.jit(lambda t: model(t))(jnp.asarray(alone[:, :-1])), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  nll = []
  for r in range(8):
    for row, lo, hi in ((2 * r, 0, cut[r] + 1), (2 * r + 1, cut[r] + 1, 32)):
      n = hi - lo  # predictions of this document's tokens 1.. from its own tokens only
      nll.extend(-logp[row, np.arange(n), alone[row, 1 : n + 1]])
  _, m = trainer.train_step(state, jax.device_put(batch, trainer.batch_sharding))
  np.testing.assert_allclose(float(m['loss']), np.mean(nll), rtol=1e-5)
  unmasked = tiny_config(**{'model.pos_emb': 'rope'})
  t2 = make_trainer(unmasked, model_cfg, mesh)
  _, m2 = t2.train_step(t2.init(), jax.device_put(batch, t2.batch_sharding))
  assert abs(float(m2['loss']) - float(m['loss'])) > 1e-4  # the mask did change the loss


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """tiny_config() trained 8 steps without interruption: the reference of the resume tests."""
  workdir = tmp_path_factory.mktemp('straight')
  train(tiny_config(), workdir)
  return workdir


def test_resume_is_bitwise_exact_and_survives_a_corrupted_checkpoint(tmp_path, straight, caplog):
  config = tiny_config()
  # Preempted at step 4, resumed to 8.
  assert train(config, tmp_path / 'resumed', stop_at=4) is None
  assert not (tmp_path / 'resumed' / 'summary.json').exists()
  first_part = len(records(tmp_path / 'resumed'))
  train(config, tmp_path / 'resumed')
  assert_trees_equal(final_params(straight, 8), final_params(tmp_path / 'resumed', 8))
  # The second invocation started at the checkpoint (step 4): no step is recorded twice or lost.
  second = records(tmp_path / 'resumed')[first_part:]
  assert min(r['step'] for r in second) == 5
  assert_records_cover_the_run(tmp_path / 'resumed', straight)
  # Stopped at 6; the step-6 checkpoint is then damaged: resume falls back to step 4.
  train(config, tmp_path / 'damaged', stop_at=6)
  for f in glob.glob(str(tmp_path / 'damaged/checkpoints/6/state/**/*'), recursive=True):
    if os.path.isfile(f) and 'metadata' not in os.path.basename(f).lower():
      with open(f, 'r+b') as fh:
        fh.truncate(max(os.path.getsize(f) // 3, 1))
  caplog.set_level('WARNING')
  train(config, tmp_path / 'damaged')
  assert any('unreadable' in r.getMessage() for r in caplog.records)
  assert_trees_equal(final_params(straight, 8), final_params(tmp_path / 'damaged', 8))
  # The records the first invocation wrote past step 4 were dropped and redone, each step once
  # (log_every=2, plus the first step of each invocation, which has no rate yet: the second
  # invocation began at step 5), and the last step forced.
  train_records = [r for r in records(tmp_path / 'damaged') if r['kind'] == 'train']
  assert [r['step'] for r in train_records] == [1, 2, 4, 5, 6, 8]
  assert [r['step'] for r in train_records if r['tokens_per_s'] is None] == [1, 5]


def records(workdir):
  return [json.loads(line) for line in open(os.path.join(str(workdir), 'metrics.jsonl'))]


def assert_records_cover_the_run(resumed, straight):
  """Steps only increase (a restart from 0 would repeat them), the eval record of every eval
  step exists and equals the uninterrupted run's, log steps are all there."""
  got, want = records(resumed), records(straight)
  for kind in ('train', 'eval'):
    steps = [r['step'] for r in got if r['kind'] == kind]
    assert steps == sorted(set(steps)), (kind, steps)
  evals = {r['step']: r['eval_loss'] for r in got if r['kind'] == 'eval'}
  assert evals == {r['step']: r['eval_loss'] for r in want if r['kind'] == 'eval'}
  log_steps = {r['step'] for r in want if r['kind'] == 'train' and r['step'] % 2 == 0}
  assert log_steps <= {r['step'] for r in got if r['kind'] == 'train'}


def test_checkpoint_restores_onto_another_mesh(tmp_path, straight):
  config = tiny_config()
  train(config, tmp_path / 'moved', stop_at=4)  # mesh data=8
  moved = tiny_config(**{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2})
  train(moved, tmp_path / 'moved')
  a, b = final_params(straight, 8), final_params(tmp_path / 'moved', 8)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'mesh.data': 3}, 'has 3 devices but 8 are available'),
    ({'mesh.data': -1, 'mesh.tensor': 3}, 'cannot fill 8 devices'),
    ({'train.global_batch': 12}, 'does not split over the 8 data-parallel devices'),
    ({'train.grad_accum': 3}, 'must divide train.global_batch'),
    ({'data.seq_len': 64}, 'exceeds the position table'),
    ({'model.num_heads': 5}, 'does not divide model.d_model'),
    ({'model.num_kv_heads': 3}, 'must divide model.num_heads'),
    ({'model.vocab_size': 1000}, 'tokenizer has'),
  ],
)
def test_bad_input_is_one_line_error_before_anything_is_written(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message) as e:
    loop.prepare(tiny_config(**overrides), str(tmp_path / 'run'))
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'run').exists()


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path):
  train(tiny_config(), tmp_path, stop_at=2)
  before = {f: os.path.getmtime(f) for f in glob.glob(str(tmp_path / '**'), recursive=True)}
  with pytest.raises(ValueError, match='checkpoint of a different model.*d_model'):
    loop.prepare(tiny_config(**{'model.d_model': 64}), str(tmp_path))
  with pytest.raises(ValueError, match='train.global_batch=8, now 16') as e:
    loop.prepare(tiny_config(**{'train.global_batch': 16}), str(tmp_path))
  assert '\n' not in str(e.value)
  after = {f: os.path.getmtime(f) for f in glob.glob(str(tmp_path / '**'), recursive=True)}
  assert before == after


def test_cli_rejects_unknown_config_key(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'launch.train',
      f'--workdir={tmp_path}/run',
      '--config=experiments/configs/default.py',
      '--config.model.num_head=4',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode != 0
  assert 'num_head' in proc.stderr
  assert not (tmp_path / 'run').exists()


def test_attention_maps_of_a_trained_run(tmp_path):
  train(tiny_config(**{'train.steps': 4}), tmp_path / 'run')
  out = tmp_path / 'attn.png'
  proc = subprocess.run(
    [sys.executable, '-m', 'launch.attention', f'--workdir={tmp_path}/run', f'--out={out}'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.stat().st_size > 10_000
  proc = subprocess.run(
    [sys.executable, '-m', 'launch.attention', f'--workdir={tmp_path}/nothing'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 2 and 'not a training run' in proc.stderr


def test_tokens_per_s_and_mfu_follow_a_clock_the_test_controls(tmp_path, monkeypatch):
  """The rate comes from the clock between records, per step since the previous record: with
  the clock set by the test, tokens/s and MFU have exact values (B 8 x L 32 = 256 tokens/step)."""
  clock = {'now': 0.0}
  monkeypatch.setattr(metrics, 'time', types.SimpleNamespace(time=lambda: clock['now']))
  config = tiny_config(**{'log_every': 2, 'train.nan_patience': 1})
  writer = metrics.MetricsWriter(str(tmp_path), total_steps=10)
  rec = metrics.Recorder(writer, config, flops_tok=1e6, peak=1e10, seq_len=32)
  good = types.SimpleNamespace(path=lambda: 'none')
  # (step, clock at its fetch): steps 1, 2, 4 and 5 are recorded (the first of an invocation,
  # every 2nd, and a forced one); step 3's time counts into step 4's rate.
  for step, now in ((1, 100.0), (2, 100.5), (3, 101.0), (4, 102.0), (5, 102.1)):
    clock['now'] = now
    rec.record(step, {'loss': np.float32(2.0), 'grad_norm': np.float32(1.0)}, good, step == 5)
  writer.close()
  got = {r['step']: r for r in records(tmp_path)}
  assert sorted(got) == [1, 2, 4, 5]
  assert got[1]['tokens_per_s'] is None and got[1]['mfu'] is None
  want = {2: 0.5, 4: (102.0 - 100.5) / 2, 5: 0.1}  # seconds per step
  for step, dt in want.items():
    assert got[step]['step_time_s'] == pytest.approx(dt, rel=1e-9)
    assert got[step]['tokens_per_s'] == pytest.approx(256 / dt, rel=1e-9)
    assert got[step]['mfu'] == pytest.approx(256 / dt * 1e6 / 1e10, rel=1e-9)


# Per-chip dense bf16 peaks as published (Cloud TPU system architecture pages, NVIDIA data
# sheets), under the device_kind JAX reports for each.
PUBLISHED_PEAKS = {
  'TPU v4': 275e12,
  'TPU v5 lite': 197e12,  # v5e
  'TPU v5': 459e12,  # v5p
  'TPU v6 lite': 918e12,  # v6e
  'NVIDIA A100-SXM4-80GB': 312e12,
  'NVIDIA H100 80GB HBM3': 989e12,
}


@pytest.mark.parametrize('kind', sorted(PUBLISHED_PEAKS))
def test_peak_flops_is_the_published_chip_peak_times_the_devices(kind, monkeypatch):
  """MFU's denominator: the whole job's peak, from the device JAX reports (8 devices here)."""
  from train import metrics

  fake = [types.SimpleNamespace(platform='tpu' if 'TPU' in kind else 'gpu', device_kind=kind)]
  monkeypatch.setattr(metrics.jax, 'devices', lambda: fake * 8)
  assert metrics.jax.device_count() == 8
  peak, source = metrics.peak_flops()
  assert peak == PUBLISHED_PEAKS[kind] * 8 and source == f'{kind} table'
  assert metrics.peak_flops(3e12) == (3e12, 'config')  # a configured peak wins
