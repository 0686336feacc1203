"""Branching a run from another run's checkpoint (train.init_from / train.init_step).

A WSD cooldown branched from a constant-lr run at step s is the same computation as a WSD run
trained from scratch whose decay starts at s: parameters, optimizer state (Adam moments and
count) and data-iterator state must all carry over for the two to agree bit for bit.
"""

import json
import os

import jax
import numpy as np
import pytest

from tests.test_train import assert_trees_equal, final_params, tiny_config, train
from train import loop

STEPS, BRANCH_AT = 8, 4


def wsd(steps, decay_from):
  """WSD overrides whose linear decay starts exactly at step `decay_from`."""
  return {'train.schedule': 'wsd', 'train.decay_fraction': (steps - decay_from + 0.5) / steps}


def parent_config(**extra):
  keep = {'train.schedule': 'constant', 'checkpoint.max_to_keep': 10}
  return tiny_config(**{'train.steps': STEPS, **keep, **extra})


def test_cooldown_branch_equals_the_same_schedule_from_scratch(tmp_path):
  train(parent_config(), tmp_path / 'stable')
  branch = tiny_config(
    **{
      'train.steps': STEPS,
      **wsd(STEPS, BRANCH_AT),
      'train.init_from': str(tmp_path / 'stable'),
      'train.init_step': BRANCH_AT,
    }
  )
  summary = train(branch, tmp_path / 'cooldown')
  train(tiny_config(**{'train.steps': STEPS, **wsd(STEPS, BRANCH_AT)}), tmp_path / 'scratch')
  assert_trees_equal(
    final_params(tmp_path / 'cooldown', STEPS), final_params(tmp_path / 'scratch', STEPS)
  )
  # and the stable run itself went elsewhere after the branch point (the schedules differ)
  stable = jax.tree.leaves(final_params(tmp_path / 'stable', STEPS))
  cooled = jax.tree.leaves(final_params(tmp_path / 'cooldown', STEPS))
  assert any(not np.array_equal(a, b) for a, b in zip(stable, cooled, strict=True))
  records = [json.loads(line) for line in open(tmp_path / 'cooldown' / 'metrics.jsonl')]
  assert min(r['step'] for r in records) > BRANCH_AT  # the branch records only its own steps
  assert summary.tokens_seen == STEPS * 8 * 32  # D counts the parent's tokens too


def test_branch_refuses_another_shape_or_a_missing_step(tmp_path):
  train(parent_config(**{'train.steps': 4}), tmp_path / 'stable')
  base = {'train.steps': STEPS, 'train.init_from': str(tmp_path / 'stable')}
  wide = tiny_config(**base, **{'train.init_step': 2, 'model.d_model': 64})
  with pytest.raises(
    ValueError, match=r'is a model of another shape \(model.d_model: 32 there vs 64 here\)'
  ):
    loop.prepare(wide, str(tmp_path / 'wide'))
  missing = tiny_config(**base, **{'train.init_step': 3})
  with pytest.raises(ValueError, match=r'has no checkpoint at step 3 \(it has \[2, 4\]\)'):
    loop.prepare(missing, str(tmp_path / 'missing'))
  assert not os.path.exists(tmp_path / 'wide') and not os.path.exists(tmp_path / 'missing')


TINY_RUN = {
  'model.d_model': 32,
  'model.num_layers': 2,
  'model.num_heads': 4,
  'model.max_seq_len': 32,
  'data.seq_len': 32,
  'train.global_batch': 8,
  'train.warmup_steps': 1,
  'eval.every': 4,
  'eval.batches': 1,
  'eval.batch_size': 8,
  'checkpoint.every': 2,
  'checkpoint.async_save': False,
  'peak_flops': 1e12,
  'train.steps': STEPS,
}


def write_sweep(path, stable: dict, branch: dict) -> str:
  """A sweep file listing the branch before its parent (the reader must reorder them)."""
  body = f"""
BASE_CONFIG = 'experiments/configs/default.py'
TINY = {TINY_RUN!r}


def get_sweep():
  cool = {{**TINY, 'train.init_from': 'stable', 'train.init_step': {BRANCH_AT}, **{branch!r}}}
  return [('cool', cool), ('stable', {{**TINY, **{stable!r}}})]
"""
  path.write_text(body)
  return str(path)


STABLE = {'train.schedule': 'constant', 'checkpoint.max_to_keep': 10}


def test_sweep_orders_branches_after_parents_and_checks_them(tmp_path):
  from experiments import sweep_spec

  sweep = sweep_spec.expand(write_sweep(tmp_path / 's.py', STABLE, wsd(STEPS, BRANCH_AT)))
  assert [r.name for r in sweep.runs] == ['stable', 'cool']
  assert sweep.runs[1].parent == 'stable'
  argv = sweep.runs[1].argv('/w/runs/cool', ['train'])
  assert '--config.train.init_from=/w/runs/stable' in argv
  assert '--config.train.init_step=4' in argv
  bad = [
    ({**STABLE}, {'model.d_model': 64}, r'a model of another shape \(model.d_model: 32 there'),
    ({**STABLE}, {'train.init_step': 3}, 'at step 3, where it saves no checkpoint'),
    (
      {'train.schedule': 'constant'},
      {},
      r'keeps only its last 2 checkpoints \(2 come after that step\).*max_to_keep >= 3',
    ),
    ({**STABLE}, {'train.global_batch': 16}, 'another train.global_batch'),
  ]
  for stable, branch, match in bad:
    with pytest.raises(ValueError, match=match) as e:
      sweep_spec.expand(write_sweep(tmp_path / 'bad.py', stable, branch))
    assert '\n' not in str(e.value)


def test_sweep_runs_the_branch_after_its_parent(tmp_path):
  from launch import sweep

  path = write_sweep(tmp_path / 's.py', STABLE, wsd(STEPS, BRANCH_AT))
  lines = []
  code = sweep.launch(path, str(tmp_path / 'wd'), parallel=2, echo=lines.append)
  assert code == 0, lines
  starts = [line.split()[1] for line in lines if line.startswith('start')]
  assert starts == ['stable', 'cool']  # two slots, but the branch waited for its parent
  done = [line.split()[1] for line in lines if line.startswith('done')]
  assert done == ['stable', 'cool']
  with open(tmp_path / 'wd' / 'runs' / 'cool' / 'summary.json') as f:
    assert json.load(f)['config']['train']['init_from'] == str(tmp_path / 'wd' / 'runs' / 'stable')
  # The same sweep again on the same folder (a sweep extended with more runs is relaunched so):
  # both finished runs are reused, the branch included, whose config.json records its parent
  # as a folder where the sweep file names a run.
  lines.clear()
  assert sweep.launch(path, str(tmp_path / 'wd'), parallel=2, echo=lines.append) == 0, lines
  assert not [line for line in lines if line.startswith(('start', 'set aside'))], lines
