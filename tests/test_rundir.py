"""The run-folder contract (core/rundir.py): one place names every file and says when a run is
done, and every reader and writer goes through it."""

import ast
import json
import os

import pytest

from core import rundir
from experiments import scaling
from experiments.sweep_spec import Run
from launch import pool, sweep_report
from tests.cluster import REPO

NAMES = (
  rundir.CONFIG,
  rundir.METRICS,
  rundir.SUMMARY,
  rundir.LOG,
  rundir.SWEEP,
  rundir.STATUS,
  'checkpoints',
  'verbose_log',
)


def _docstrings(tree) -> set[int]:
  """ids of the docstring nodes (prose may name the files; code may not)."""
  out = set()
  for node in ast.walk(tree):
    body = getattr(node, 'body', None)
    if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
      if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        out.add(id(body[0].value))
  return out


def test_run_and_sweep_file_names_are_spelled_only_in_the_contract():
  """No string in the code outside core/rundir.py (docstrings aside) is one of the run folder's
  file names or a path ending in one: a new reader or writer must ask RunDir / SweepDir."""
  found = []
  for top in ('core', 'models', 'data', 'train', 'experiments', 'launch', 'benchmarks'):
    for root, _, names in os.walk(os.path.join(REPO, top)):
      for name in names:
        path = os.path.join(root, name)
        if not name.endswith('.py') or path.endswith(os.path.join('core', 'rundir.py')):
          continue
        tree = ast.parse(open(path).read())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
          if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
          if id(node) in skip:
            continue
          text = node.value.strip().strip('\'"')
          for n in NAMES:
            if text == n or text.endswith('/' + n) or text.startswith(n + '/'):
              found.append(f'{os.path.relpath(path, REPO)}:{node.lineno} {node.value!r}')
  assert not found, 'run-folder names spelled outside core/rundir.py:\n' + '\n'.join(found)


def _summary(**kw) -> rundir.Summary:
  base = dict(
    n_params=1000,
    n_params_embed=200,
    n_params_nonembed=800,
    flops_per_token=6e3,
    final_step=10,
    tokens_seen=2560,
    final_train_loss=2.5,
    final_eval_loss=2.4,
    final_eval_loss_sem=0.01,
    final_eval_bpb=3.4,
    wall_time_s=1.5,
    compile_time_s=0.5,
    peak_flops=1e12,
    peak_flops_source='config',
    config={'tags': {'size': 's'}},
  )
  return rundir.Summary(**{**base, **kw})


def test_a_run_is_done_exactly_when_its_summary_is_written_and_every_reader_agrees(tmp_path):
  sweep = rundir.SweepDir(str(tmp_path / 'sweep'))
  run = sweep.run('a')
  assert sweep.run_names() == [] and not run.done() and run.read_summary() is None
  run.write_config({'model': {}, 'tags': {}})  # started, not finished
  assert sweep.run_names() == ['a'] and not run.done()
  runs, unfinished = scaling.load_sweep(sweep.path)
  assert runs == [] and unfinished == ['a']
  with open(run.metrics_path, 'w') as f:
    f.write(json.dumps({'kind': 'eval', 'step': 10, 'tokens': 2560, 'flops': 1.5e7,
                        'eval_loss': 2.4, 'eval_loss_sem': 0.01}) + '\n')  # fmt: skip
  written = _summary()
  run.write_summary(written)
  assert run.done() and run.read_summary() == written  # every field survives the file
  assert rundir.Summary.from_dict(written.to_dict()) == written
  (loaded,), unfinished = scaling.load_sweep(sweep.path)
  assert unfinished == [] and loaded.n_nonembed == 800 and loaded.tags == {'size': 's'}
  assert loaded.curve['eval']['loss'].tolist() == [2.4]
  status = {'a': {'status': pool.SKIPPED}}
  (row,) = sweep_report.table_rows([Run('a', 'c.py', {})], sweep.path, status)
  assert row['eval_loss'] == 2.4 and row['wall_time_s'] == 1.5
  assert 'finished, would skip' in sweep_report.dry_run_text([Run('a', 'c.py', {})], sweep.path)


def test_a_summary_without_what_a_fit_needs_is_named_not_fitted(tmp_path):
  sweep = rundir.SweepDir(str(tmp_path))
  d = _summary().to_dict()
  del d['final_eval_loss_sem']
  d['a_field_from_a_newer_trainer'] = 1  # unknown keys are ignored, not an error
  os.makedirs(sweep.run('b').path)
  with open(sweep.run('b').summary_path, 'w') as f:
    json.dump(d, f)
  with pytest.raises(ValueError, match=r"summary.json: missing key 'final_eval_loss_sem'"):
    scaling.load_sweep(sweep.path)
  assert rundir.Summary.from_dict(d).final_eval_loss_sem is None  # the table still shows it


def test_remote_paths_stay_remote_and_a_branch_parent_is_a_sibling():
  run = rundir.SweepDir('gs://bucket/sw').run('cool')
  assert run.path == 'gs://bucket/sw/runs/cool'
  assert run.checkpoints == 'gs://bucket/sw/runs/cool/checkpoints'  # never made absolute
  assert run.sibling('stable').path == 'gs://bucket/sw/runs/stable'
  local = rundir.SweepDir('/x/sw').run('cool')
  assert local.sibling('stable').path == '/x/sw/runs/stable'
  assert Run('cool', 'c.py', {}, parent='stable').argv(local.path, ['t'])[-1] == (
    '--config.train.init_from=/x/sw/runs/stable'
  )
