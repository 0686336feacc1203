"""Sweep files and the sweep runner (launch/sweep.py), the runner driven by a fake trainer.

Sweep files: each loads, names are unique and path-safe, every override is a key of the base
config with the right type and parses back through config_flags from the exact command line;
fixed-N sweeps hold N, IsoFLOP runs spend their budget, the demo meets its spec; the closed-form
counts of experiments/sweeps/common.py equal models/accounting.py's.
Runner: a tiny fake trainer (written to tmp) that writes summary.json, fails on request, or
waits for a sibling's marker file: finished runs skipped, interrupted ones rerun, a failure
recorded while the others complete, exit status, concurrency, dry runs, bad names.
"""

import glob
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags
from ml_collections import config_flags

from experiments.sweeps import common
from launch import sweep
from models import accounting
from models.transformer import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_FILES = sorted(
  p
  for p in glob.glob(os.path.join(REPO, 'experiments', 'sweeps', '*.py'))
  if os.path.basename(p) not in ('__init__.py', 'common.py')
)
EXPECTED = {'demo', 'size_ladder', 'heads', 'aspect', 'token_budget', 'isoflop', 'gpt3_reduced',
            'shape'}  # fmt: skip


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _runs(stem: str) -> list[sweep.Run]:
  return sweep.expand(os.path.join(REPO, 'experiments', 'sweeps', f'{stem}.py'))


def _config_of(run: sweep.Run):
  """The run's full config: base config with its overrides applied (as the trainer gets it)."""
  c = sweep.load_config(run.config)
  for key, value in run.overrides.items():
    *path, last = key.split('.')
    node = c
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _model(run: sweep.Run) -> tuple[ModelConfig, object]:
  c = _config_of(run)
  return ModelConfig.from_config(c.model, vocab_size=common.BYTE_VOCAB), c


# -- Sweep files ------------------------------------------------------------------------------


def test_all_sweeps_present():
  assert {_stem(p) for p in SWEEP_FILES} >= EXPECTED


@pytest.mark.parametrize('path', SWEEP_FILES, ids=_stem)
def test_sweep_expands_to_valid_runs(path):
  runs = sweep.expand(path)  # names path-safe and unique, keys and types checked
  names = [r.name for r in runs]
  assert len(names) == len(set(names)) >= 4
  for run in runs:
    model, c = _model(run)  # raises on an invalid shape
    t = c.train
    assert c.data.seq_len <= c.model.max_seq_len
    assert 0 < t.warmup_steps < t.steps, run.name
    assert t.global_batch >= 8 and 1e-5 < t.lr < 3e-2
    assert c.eval.every <= t.steps and c.checkpoint.every <= t.steps
    assert c.tags.tokens == t.steps * t.global_batch * c.data.seq_len
    assert c.tags.sweep == _stem(path) and model.num_layers == run.overrides['model.num_layers']


@pytest.mark.parametrize('path', SWEEP_FILES, ids=_stem)
def test_commands_parse_back_through_config_flags(path):
  """The exact trainer command of every run gives the trainer the intended config."""
  for run in sweep.expand(path):
    argv = run.argv('/tmp/unused', train_cmd=('prog',))
    argv = [a.replace(run.config, os.path.join(REPO, run.config)) for a in argv]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=argv)
    flags.DEFINE_string('workdir', None, '', flag_values=fv)
    fv(argv)
    got = fv.config
    for key, value in run.overrides.items():
      node = got
      for part in key.split('.'):
        node = node[part]
      assert node == value and type(node) is type(value), (run.name, key, node, value)


def test_counts_match_model_accounting():
  shapes = [common.Shape(2, 64, 4), common.Shape(3, 128, 2), common.Shape(4, 96, 3)]
  shapes.append(common.Shape(12, 48, 12, head_dim=4))  # GPT-3 Small / 16
  shapes.append(common.Shape(2, 64, 2, head_dim=48, d_ff=96))  # attention width != d_model
  for s in shapes:
    cfg = ModelConfig(
      vocab_size=common.BYTE_VOCAB, d_model=s.d_model, num_layers=s.num_layers,
      num_heads=s.num_heads, num_kv_heads=s.num_heads, head_dim=s.dh, d_ff=s.ff, max_seq_len=128,
    )  # fmt: skip
    assert common.nonembed_params(s) == accounting.param_counts(cfg)['nonembedding'], s
    want = accounting.flops_per_token(cfg, 128)
    assert common.flops_per_token(s, 128) == pytest.approx(want, rel=1e-12), s
    if s.dh * s.num_heads == s.d_model and s.ff == 4 * s.d_model:  # 12 L d^2 + small terms
      assert common.nonembed_params(s) == pytest.approx(12 * s.num_layers * s.d_model**2, rel=0.05)


def test_kaplan_lr_rule():
  # Kaplan et al. 2020, eq. D.1 at 1e6 and 1e9 (their Fig. 22 range).
  assert common.kaplan_lr(1e6) == pytest.approx(0.003239 - 0.0001395 * math.log(1e6))
  assert common.kaplan_lr(1e6) == pytest.approx(1.3117e-3, rel=1e-4)
  assert common.kaplan_lr(1e9) == pytest.approx(3.48e-4, rel=1e-2)
  assert common.kaplan_lr(1e5) > common.kaplan_lr(1e6) > common.kaplan_lr(1e7)
  with pytest.raises(ValueError, match='undefined'):
    common.kaplan_lr(1e11)


def test_ladder_lr_follows_rule():
  for stem in ('size_ladder', 'token_budget', 'isoflop'):  # demo: its own rule, measured
    for run in _runs(stem):
      model, c = _model(run)
      n = accounting.param_counts(model)['nonembedding']
      assert c.train.lr == pytest.approx(common.kaplan_lr(n), rel=1e-3), run.name


@pytest.mark.parametrize('stem', ['heads', 'aspect', 'shape'])
def test_fixed_n_sweeps_hold_nonembedding_params(stem):
  runs = _runs(stem)
  shapes = set()
  for run in runs:
    model, c = _model(run)
    n = accounting.param_counts(model)['nonembedding']
    assert n == pytest.approx(c.tags.target_nonembed, rel=0.03), run.name
    shapes.add((model.num_layers, model.d_model, model.num_heads))
  assert len(shapes) == len(runs)  # every run a different shape
  if stem == 'heads':
    assert sorted(s[2] for s in shapes) == [1, 2, 4, 8, 16]
    assert len({_model(r)[1].tags.target_nonembed for r in runs}) == 1
  if stem in ('aspect', 'shape'):
    aspects = [d / layers for layers, d, _ in shapes]
    assert max(aspects) / min(aspects) >= 20  # Kaplan et al. Fig. 5: a wide range of shapes


def test_isoflop_runs_spend_their_budget():
  by_budget = {}
  for run in _runs('isoflop'):
    model, c = _model(run)
    t = c.train
    spent = accounting.flops_per_token(model, c.data.seq_len) * t.steps * t.global_batch * 128
    assert spent == pytest.approx(c.tags.budget_flops, rel=0.03), run.name
    by_budget.setdefault(c.tags.budget_flops, []).append(model)
  assert len(by_budget) >= 3
  for models in by_budget.values():
    assert len(models) >= 4
    n = [accounting.param_counts(m)['nonembedding'] for m in models]
    assert max(n) / min(n) >= 4  # each budget spans a parabola's worth of sizes


def test_demo_spec():
  """>= 5 GPT-3-shaped sizes over >= 1.5 decades of N, all on the same tokens."""
  runs = _runs('demo')
  models = [_model(r) for r in runs]
  n = [accounting.param_counts(m)['nonembedding'] for m, _ in models]
  assert len(set(n)) >= 5
  assert math.log10(max(n) / min(n)) >= 1.5
  assert len({c.train.steps * c.train.global_batch * c.data.seq_len for _, c in models}) == 1
  for m, _ in models:
    assert 16 <= m.head_dim <= 64 and m.num_heads * m.head_dim == m.d_model
    assert 16 <= m.d_model / m.num_layers <= 128 and m.d_ff == 4 * m.d_model
  assert n == sorted(n, reverse=True)  # largest first: the greedy parallel order balances


def test_gpt3_reduced_keeps_layers_heads_and_table_hyperparameters():
  from experiments.sweeps import gpt3_reduced
  from models import gpt3

  for run in _runs('gpt3_reduced'):
    row = gpt3.GPT3_TABLE[run.name.split('-')[1]]
    model, c = _model(run)
    assert model.num_layers == row.n_layers
    assert model.num_heads == gpt3.reduced(row.name, gpt3_reduced.WIDTH_FACTOR)['num_heads']
    assert c.train.lr == pytest.approx(row.lr * gpt3_reduced.LR_SCALE)
    assert c.train.global_batch / gpt3_reduced.BATCH_SEQS == pytest.approx(
      row.batch_tokens / 0.5e6, rel=0.15
    )


# -- Checking input ---------------------------------------------------------------------------


def _write_sweep(tmp_path, body: str, base: str = 'experiments/configs/scaling_cpu.py') -> str:
  path = tmp_path / 'my_sweep.py'
  path.write_text(f'BASE_CONFIG = {base!r}\n' + textwrap.dedent(body))
  return str(path)


@pytest.mark.parametrize(
  'runs,match',
  [
    ("[('a', {'model.d_modle': 64})]", "unknown config key 'model.d_modle'"),
    ("[('a', {'tags.newtag': 1})]", "unknown config key 'tags.newtag'"),
    ("[('a', {'model.d_model': 64.0})]", 'holds an int'),
    ("[('a', {'model': 3})]", 'group of keys'),
    ("[('a/b', {})]", 'not path-safe'),
    ("[('a b', {})]", 'not path-safe'),
    ("[('..', {})]", 'not path-safe'),
    ("[('a', {}), ('b', {}), ('a', {})]", "duplicate run name 'a'"),
    ('[]', 'no runs'),
    (None, 'no get_sweep'),
  ],
)
def test_bad_sweeps_are_one_line_errors(tmp_path, runs, match):
  body = 'X = 1' if runs is None else f'def get_sweep():\n  return {runs}'
  with pytest.raises(ValueError, match=match) as e:
    sweep.expand(_write_sweep(tmp_path, body))
  assert '\n' not in str(e.value)


def test_missing_files_are_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='sweep file'):
    sweep.expand('experiments/sweeps/no_such_sweep.py')
  body = "def get_sweep():\n  return [('a', {})]"
  with pytest.raises(FileNotFoundError, match='config file'):
    sweep.expand(_write_sweep(tmp_path, body, base='experiments/configs/nope.py'))


def test_overrides_are_typed_and_win(tmp_path):
  path = _write_sweep(tmp_path, "def get_sweep():\n  return [('a', {'train.steps': 9})]")
  (run,) = sweep.expand(path, sweep.parse_overrides(['train.steps=5', 'config.train.lr=1']))
  assert run.overrides == {'train.steps': 5, 'train.lr': 1.0}
  assert '--config.train.lr=1.0' in run.argv('w') and '--config.train.steps=5' in run.argv('w')
  with pytest.raises(ValueError, match='not an int'):
    sweep.expand(path, sweep.parse_overrides(['train.steps=many']))
  with pytest.raises(ValueError, match='KEY=VALUE'):
    sweep.parse_overrides(['train.steps'])
  with pytest.raises(ValueError, match='not in the sweep'):
    sweep.select(sweep.expand(path), ['b'])


# -- The runner, with a fake trainer ----------------------------------------------------------

FAKE_TRAINER = """
import json, os, sys, time
args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
workdir = args['workdir']
opts = {k[len('config.'):]: v for k, v in args.items() if k.startswith('config.')}
name = os.path.basename(workdir)
sweep_dir = os.path.dirname(os.path.dirname(workdir))
with open(os.path.join(sweep_dir, 'invocations.txt'), 'a') as f:
  f.write(name + '\\n')
resumed = os.path.exists(os.path.join(workdir, 'partial'))
open(os.path.join(workdir, 'partial'), 'w').close()
print('fake trainer', name, 'starting')
if opts.get('fake.fail') == 'true':
  print('Traceback (most recent call last):', file=sys.stderr)
  print('ValueError: deliberate failure of ' + name, file=sys.stderr)
  sys.exit(3)
saw_other = None
if opts.get('fake.wait_for'):
  markers = os.path.join(sweep_dir, 'markers')
  os.makedirs(markers, exist_ok=True)
  open(os.path.join(markers, name), 'w').close()
  other = os.path.join(markers, opts['fake.wait_for'])
  deadline = time.time() + float(opts.get('fake.timeout', 60))
  while not os.path.exists(other) and time.time() < deadline:
    time.sleep(0.05)
  saw_other = os.path.exists(other)
summary = {'n_params_nonembed': int(opts.get('model.n', 1000)), 'final_train_loss': 2.5,
           'final_eval_loss': 2.25, 'final_eval_loss_sem': 0.01, 'wall_time_s': 1.5,
           'resumed': resumed, 'saw_other': saw_other, 'opts': opts}
with open(os.path.join(workdir, 'summary.json'), 'w') as f:
  json.dump(summary, f)
"""


@pytest.fixture
def fake_cmd(tmp_path):
  path = tmp_path / 'fake_trainer.py'
  path.write_text(FAKE_TRAINER)
  return (sys.executable, str(path))


def _summary(workdir, name):
  with open(os.path.join(workdir, 'runs', name, 'summary.json')) as f:
    return json.load(f)


def _invocations(workdir):
  path = os.path.join(workdir, 'invocations.txt')
  return open(path).read().split() if os.path.exists(path) else []


def test_runner_skips_reruns_and_records_failures(tmp_path, fake_cmd):
  wd = str(tmp_path / 'sw')
  runs = [
    sweep.Run('finished', 'cfg.py', {}),
    sweep.Run('interrupted', 'cfg.py', {'model.n': 20}),
    sweep.Run('broken', 'cfg.py', {'fake.fail': True}),
    sweep.Run('fresh', 'cfg.py', {'model.n': 30}),
  ]
  os.makedirs(os.path.join(wd, 'runs', 'finished'))
  with open(os.path.join(wd, 'runs', 'finished', 'summary.json'), 'w') as f:
    json.dump({'n_params_nonembed': 10, 'final_train_loss': 3.0, 'final_eval_loss': 3.5,
               'final_eval_loss_sem': 0.1, 'wall_time_s': 77.0}, f)  # fmt: skip
  os.makedirs(os.path.join(wd, 'runs', 'interrupted'))
  open(os.path.join(wd, 'runs', 'interrupted', 'partial'), 'w').close()  # a checkpoint, say
  lines = []
  status = sweep.run_sweep(runs, wd, parallel=1, train_cmd=fake_cmd, echo=lines.append)

  assert {k: v['status'] for k, v in status.items()} == {
    'finished': 'skipped', 'interrupted': 'done', 'broken': 'failed', 'fresh': 'done'
  }  # fmt: skip
  assert _invocations(wd) == ['interrupted', 'broken', 'fresh']  # in order; 'finished' not run
  assert _summary(wd, 'interrupted')['resumed'] is True
  assert _summary(wd, 'fresh')['resumed'] is False
  assert status['broken']['returncode'] == 3
  assert status['broken']['last_line'] == 'ValueError: deliberate failure of broken'
  log = open(os.path.join(wd, 'runs', 'broken', 'log.txt')).read()
  assert 'fake trainer broken starting' in log and '--config.fake.fail=true' in log
  on_disk = json.load(open(os.path.join(wd, 'status.json')))['runs']
  assert {k: v['status'] for k, v in on_disk.items()} == {k: v['status'] for k, v in status.items()}
  assert any('FAILED  broken' in ln for ln in lines)

  table = sweep.format_table(sweep.table_rows(runs, wd, status))
  rows = {ln.split()[0]: ln for ln in table.splitlines()[2:6]}
  assert rows['finished'].split()[1:4] == ['skipped', '10', '3.0000']
  assert '3.5000 ± 0.1000' in rows['finished'] and rows['finished'].endswith('77')
  assert rows['fresh'].split()[1:3] == ['done', '30'] and '2.2500 ± 0.0100' in rows['fresh']
  assert rows['broken'].split()[1:3] == ['failed', '-']
  assert 'broken failed: ValueError: deliberate failure of broken' in table

  # A second invocation runs only what has no summary: the failed run.
  status = sweep.run_sweep(runs, wd, parallel=2, train_cmd=fake_cmd, echo=lines.append)
  assert _invocations(wd) == ['interrupted', 'broken', 'fresh', 'broken']
  assert [status[r.name]['status'] for r in runs] == ['skipped', 'skipped', 'failed', 'skipped']


def test_parallel_runs_overlap(tmp_path, fake_cmd):
  """Each fake run waits for the other's marker file: only concurrent runs can both see it."""
  wd = str(tmp_path / 'sw')
  runs = [
    sweep.Run('a', 'cfg.py', {'fake.wait_for': 'b'}),
    sweep.Run('b', 'cfg.py', {'fake.wait_for': 'a'}),
  ]
  status = sweep.run_sweep(runs, wd, parallel=2, train_cmd=fake_cmd, echo=lambda s: None)
  assert [status[n]['status'] for n in 'ab'] == ['done', 'done']
  assert _summary(wd, 'a')['saw_other'] is True and _summary(wd, 'b')['saw_other'] is True

  # One at a time, the first cannot see the second (it gives up after its timeout).
  wd = str(tmp_path / 'serial')
  runs = [
    sweep.Run('a', 'cfg.py', {'fake.wait_for': 'b', 'fake.timeout': 0.3}),
    sweep.Run('b', 'cfg.py', {'fake.wait_for': 'a', 'fake.timeout': 0.3}),
  ]
  sweep.run_sweep(runs, wd, parallel=1, train_cmd=fake_cmd, echo=lambda s: None)
  assert _summary(wd, 'a')['saw_other'] is False and _summary(wd, 'b')['saw_other'] is True


FAKE_BASE = """
import ml_collections
def get_config():
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({'n': 0})
  c.fake = ml_collections.ConfigDict({'fail': False, 'wait_for': '', 'timeout': 60.0})
  return c
"""


def _fake_sweep(tmp_path, fail: bool) -> str:
  (tmp_path / 'fake_base.py').write_text(FAKE_BASE)
  body = f"""
  def get_sweep():
    return [('small', {{'model.n': 100}}), ('big', {{'model.n': 1000, 'fake.fail': {fail}}})]
  """
  return _write_sweep(tmp_path, body, base=str(tmp_path / 'fake_base.py'))


@pytest.mark.parametrize('fail', [False, True])
def test_launch_exit_status_table_and_sweep_json(tmp_path, fake_cmd, fail):
  path = _fake_sweep(tmp_path, fail)
  wd = str(tmp_path / 'sw')
  out = []
  code = sweep.launch(path, wd, parallel=2, train_cmd=fake_cmd, echo=out.append)
  assert code == (1 if fail else 0)
  text = '\n'.join(out)
  assert 'N non-emb' in text and 'small  done' in text
  assert ('big    failed' in text) == fail
  records = json.load(open(os.path.join(wd, 'sweep.json')))
  assert [(r['name'], r['overrides']) for r in records] == [
    ('small', {'model.n': 100}), ('big', {'model.n': 1000, 'fake.fail': fail})
  ]  # fmt: skip


def test_dry_run_and_only_run_nothing_else(tmp_path, fake_cmd):
  path = _fake_sweep(tmp_path, fail=False)
  wd = str(tmp_path / 'sw')
  out = []
  assert sweep.launch(path, wd, dry_run=True, overrides=['model.n=7'], train_cmd=fake_cmd,
                      echo=out.append) == 0  # fmt: skip
  assert not os.path.exists(wd)
  text = '\n'.join(out)
  assert 'small (to run)' in text and 'model.n = 7' in text and '--config.model.n=7' in text
  assert sweep.launch(path, wd, only=['big'], train_cmd=fake_cmd, echo=out.append) == 0
  assert _invocations(wd) == ['big']
  assert _summary(wd, 'big')['opts'] == {'model.n': '1000', 'fake.fail': 'false'}


def test_cli_one_line_errors_and_dry_run(tmp_path):
  path = _write_sweep(tmp_path, "def get_sweep():\n  return [('bad name', {})]")
  env = {**os.environ, 'PYTHONPATH': REPO}
  cmd = [sys.executable, '-m', 'launch.sweep', f'--workdir={tmp_path / "w"}']
  bad = subprocess.run([*cmd, f'--sweep={path}'], capture_output=True, text=True, env=env,
                       cwd=REPO)  # fmt: skip
  assert bad.returncode == 2
  assert bad.stderr.strip().count('\n') == 0 and 'not path-safe' in bad.stderr
  ok = subprocess.run([*cmd, '--sweep=experiments/sweeps/demo.py', '--dry_run'],
                      capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.count('-m launch.train --config=experiments/configs/scaling_cpu.py') == len(
    _runs('demo')
  )
  assert not os.path.exists(tmp_path / 'w')


def test_trainer_that_cannot_start_fails_only_its_run(tmp_path, fake_cmd):
  wd = str(tmp_path / 'sw')
  runs = [sweep.Run('a', 'cfg.py', {}), sweep.Run('b', 'cfg.py', {})]
  status = sweep.run_sweep(runs, wd, train_cmd=(str(tmp_path / 'no_such_python'),), echo=print)
  assert [status[n]['status'] for n in 'ab'] == ['failed', 'failed']
  assert 'cannot start' in status['a']['last_line']
  status = sweep.run_sweep(runs, wd, train_cmd=fake_cmd, echo=print)  # the rerun completes
  assert [status[n]['status'] for n in 'ab'] == ['done', 'done']
