"""Sweep files and the sweep runner (launch/sweep*.py, launch/pool.py), driven by a fake trainer.

Sweep files: each loads, names are unique and path-safe, every override is a key of the base
config with the right type and parses back through config_flags from the exact command line;
fixed-N sweeps hold N, IsoFLOP runs spend their budget, the demo meets its spec; the closed-form
counts of models/shapes.py equal the ones models/accounting.py reads off the model's shapes.
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

from experiments import sweep_spec
from experiments.sweeps import common
from launch import pool, sweep, sweep_report
from models import accounting, shapes
from models.transformer import ModelConfig
from tests.cluster import REPO

SWEEP_FILES = sorted(
  p
  for p in glob.glob(os.path.join(REPO, 'experiments', 'sweeps', '*.py'))
  if os.path.basename(p) not in ('__init__.py', 'common.py')
)
EXPECTED = {
  'demo',
  'size_ladder',
  'heads',
  'aspect',
  'token_budget',
  'isoflop',
  'gpt3_reduced',
  'shape',
}


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _runs(stem: str) -> list[sweep_spec.Run]:
  return sweep_spec.expand(os.path.join(REPO, 'experiments', 'sweeps', f'{stem}.py')).runs


def _config_of(run: sweep_spec.Run):
  """The run's full config: base config with its overrides applied (as the trainer gets it)."""
  c = sweep_spec.load_config(run.config)
  for key, value in run.overrides.items():
    *path, last = key.split('.')
    node = c
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _model(run: sweep_spec.Run) -> tuple[ModelConfig, object]:
  c = _config_of(run)
  return ModelConfig.from_config(c.model, vocab_size=common.BYTE_VOCAB), c


_DIMS = ('d_model', 'num_layers', 'num_heads', 'head_dim')


def _nonembed(m: ModelConfig) -> int:
  """Closed form (equal to accounting's eval_shape count: test_closed_form_counts_...)."""
  dims = {k: getattr(m, k) for k in (*_DIMS, 'd_ff', 'num_kv_heads', 'vocab_size')}
  return shapes.param_counts(**dims)['nonembedding']


def _flops(m: ModelConfig, seq_len: int) -> float:
  dims = {k: getattr(m, k) for k in (*_DIMS, 'vocab_size')}
  return shapes.flops_per_token(_nonembed(m), seq_len=seq_len, **dims)


# -- Sweep files ------------------------------------------------------------------------------


def test_all_sweeps_present():
  assert {_stem(p) for p in SWEEP_FILES} >= EXPECTED


@pytest.mark.parametrize('path', SWEEP_FILES, ids=_stem)
def test_sweep_expands_to_valid_runs(path):
  runs = sweep_spec.expand(path).runs  # names path-safe and unique, keys and types checked
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
  for run in sweep_spec.expand(path).runs:
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
      if key == 'train.init_from' and run.parent:  # a branch gets its parent's run directory
        value = os.path.join('/tmp', run.parent)
      assert node == value and type(node) is type(value), (run.name, key, node, value)


@pytest.mark.parametrize(
  'dims',
  [
    dict(d_model=64, num_layers=2, num_heads=4, head_dim=16, d_ff=256),
    dict(d_model=48, num_layers=12, num_heads=12, head_dim=4, d_ff=192),  # GPT-3 Small / 16
    dict(d_model=64, num_layers=2, num_heads=2, head_dim=48, d_ff=96),  # attention width != d
    dict(d_model=48, num_layers=3, num_heads=6, num_kv_heads=2, head_dim=8, d_ff=96),  # GQA
    dict(
      d_model=32,
      num_layers=1,
      num_heads=2,
      num_kv_heads=1,
      head_dim=16,
      d_ff=64,
      pos_emb='rope',
      tie_embeddings=False,
    ),
  ],
)
def test_closed_form_counts_equal_the_models_own(dims):
  """models/shapes.py's closed forms against the parameters the model actually builds."""
  dims = {'num_kv_heads': dims['num_heads'], **dims}
  cfg = ModelConfig(vocab_size=common.BYTE_VOCAB, max_seq_len=128, **dims)
  want = accounting.param_counts(cfg)  # read off the model's abstract shapes
  got = shapes.param_counts(vocab_size=common.BYTE_VOCAB, max_seq_len=128, **dims)
  assert got == want
  if dims['num_kv_heads'] == dims['num_heads'] and dims.get('pos_emb', 'learned') == 'learned':
    keys = ('num_layers', 'd_model', 'num_heads', 'head_dim', 'd_ff')
    s = common.Shape(*(dims[k] for k in keys))
    assert common.nonembed_params(s) == want['nonembedding']
    assert common.flops_per_token(s, 128) == accounting.flops_per_token(cfg, 128)


def test_kaplan_lr_rule():
  # Kaplan et al. 2020, eq. D.1 at 1e6 and 1e9 (their Fig. 22 range).
  assert common.kaplan_lr(1e6) == pytest.approx(0.003239 - 0.0001395 * math.log(1e6))
  assert common.kaplan_lr(1e6) == pytest.approx(1.3117e-3, rel=1e-4)
  assert common.kaplan_lr(1e9) == pytest.approx(3.48e-4, rel=1e-2)
  assert common.kaplan_lr(1e5) > common.kaplan_lr(1e6) > common.kaplan_lr(1e7)
  with pytest.raises(ValueError, match='undefined'):
    common.kaplan_lr(1e11)


def test_ladder_lr_follows_rule():
  # The measured 1/sqrt(width) rule (docs/SWEEPS.md), not Kaplan's eq. D.1 (measured too small).
  for stem in ('size_ladder', 'token_budget', 'isoflop', 'demo', 'accel_ladder', 'accel_isoflop'):
    for run in _runs(stem):
      model, c = _model(run)
      want = 3e-3 * (192 / model.d_model) ** 0.5
      assert c.train.lr == pytest.approx(want, rel=1e-3), run.name


@pytest.mark.parametrize('stem', ['heads', 'aspect', 'shape'])
def test_fixed_n_sweeps_hold_nonembedding_params(stem):
  runs = _runs(stem)
  shapes = set()
  for run in runs:
    model, c = _model(run)
    n = _nonembed(model)
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
    spent = _flops(model, c.data.seq_len) * t.steps * t.global_batch * 128
    assert spent == pytest.approx(c.tags.budget_flops, rel=0.03), run.name
    by_budget.setdefault(c.tags.budget_flops, []).append(model)
  assert len(by_budget) >= 3
  for models in by_budget.values():
    assert len(models) >= 4
    n = [_nonembed(m) for m in models]
    assert max(n) / min(n) >= 4  # each budget spans a parabola's worth of sizes


def test_demo_spec():
  """>= 5 GPT-3-shaped sizes over >= 1.5 decades of N, all on the same tokens."""
  runs = _runs('demo')
  models = [_model(r) for r in runs]
  n = [_nonembed(m) for m, _ in models]
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
    ("[('a', {'model.d_modle': 64})]", 'cannot set model.d_modle=64: .*Did you mean "d_model"'),
    ("[('a', {'tags.newtag': 1})]", 'cannot set tags.newtag=1'),
    ("[('a', {'model.d_model': 64.0})]", 'cannot set model.d_model=64.0: .*cannot be cast'),
    ("[('a', {'model': 3})]", 'cannot set model=3'),
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
    sweep_spec.expand(_write_sweep(tmp_path, body))
  assert '\n' not in str(e.value)


def test_missing_files_are_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='sweep file'):
    sweep_spec.expand('experiments/sweeps/no_such_sweep.py')
  body = "def get_sweep():\n  return [('a', {})]"
  with pytest.raises(FileNotFoundError, match='config file'):
    sweep_spec.expand(_write_sweep(tmp_path, body, base='experiments/configs/nope.py'))


def test_overrides_are_typed_and_win(tmp_path):
  path = _write_sweep(tmp_path, "def get_sweep():\n  return [('a', {'train.steps': 9})]")
  overrides = sweep_spec.parse_overrides(['train.steps=5', 'config.train.lr=1'])
  (run,) = sweep_spec.expand(path, overrides).runs
  assert run.overrides == {'train.steps': 5, 'train.lr': 1.0}
  argv = run.argv('w', ('prog',))
  assert '--config.train.lr=1.0' in argv and '--config.train.steps=5' in argv
  with pytest.raises(ValueError, match="train.steps='many' is not int"):
    sweep_spec.expand(path, sweep_spec.parse_overrides(['train.steps=many']))
  with pytest.raises(ValueError, match='KEY=VALUE'):
    sweep_spec.parse_overrides(['train.steps'])
  with pytest.raises(ValueError, match='not in the sweep'):
    sweep_spec.select(sweep_spec.expand(path).runs, ['b'])


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
if opts.get('fake.jax') == 'true':
  import jax
  opts['jax_devices'] = jax.device_count()
opts['env'] = {k: os.environ.get(k) for k in ('XLA_FLAGS', 'CUDA_VISIBLE_DEVICES')}
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
    sweep_spec.Run('finished', 'cfg.py', {}),
    sweep_spec.Run('interrupted', 'cfg.py', {'model.n': 20}),
    sweep_spec.Run('broken', 'cfg.py', {'fake.fail': True}),
    sweep_spec.Run('fresh', 'cfg.py', {'model.n': 30}),
  ]
  os.makedirs(os.path.join(wd, 'runs', 'finished'))
  with open(os.path.join(wd, 'runs', 'finished', 'summary.json'), 'w') as f:
    json.dump(
      {
        'n_params_nonembed': 10,
        'final_train_loss': 3.0,
        'final_eval_loss': 3.5,
        'final_eval_loss_sem': 0.1,
        'wall_time_s': 77.0,
      },
      f,
    )
  os.makedirs(os.path.join(wd, 'runs', 'interrupted'))
  open(os.path.join(wd, 'runs', 'interrupted', 'partial'), 'w').close()  # a checkpoint, say
  lines = []
  status = pool.run_sweep(runs, wd, parallel=1, train_cmd=fake_cmd, echo=lines.append)

  assert {k: v['status'] for k, v in status.items()} == {
    'finished': 'skipped',
    'interrupted': 'done',
    'broken': 'failed',
    'fresh': 'done',
  }
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

  table = sweep_report.format_table(sweep_report.table_rows(runs, wd, status))
  rows = {ln.split()[0]: ln for ln in table.splitlines()[2:6]}
  assert rows['finished'].split()[1:4] == ['skipped', '10', '3.0000']
  assert '3.5000 ± 0.1000' in rows['finished'] and rows['finished'].endswith('77')
  assert rows['fresh'].split()[1:3] == ['done', '30'] and '2.2500 ± 0.0100' in rows['fresh']
  assert rows['broken'].split()[1:3] == ['failed', '-']
  assert 'broken failed: ValueError: deliberate failure of broken' in table

  # A second invocation runs only what has no summary: the failed run.
  status = pool.run_sweep(runs, wd, parallel=2, train_cmd=fake_cmd, echo=lines.append)
  assert _invocations(wd) == ['interrupted', 'broken', 'fresh', 'broken']
  assert [status[r.name]['status'] for r in runs] == ['skipped', 'skipped', 'failed', 'skipped']


def test_parallel_runs_overlap(tmp_path, fake_cmd):
  """Each fake run waits for the other's marker file: only concurrent runs can both see it."""
  wd = str(tmp_path / 'sw')
  runs = [
    sweep_spec.Run('a', 'cfg.py', {'fake.wait_for': 'b'}),
    sweep_spec.Run('b', 'cfg.py', {'fake.wait_for': 'a'}),
  ]
  status = pool.run_sweep(runs, wd, parallel=2, train_cmd=fake_cmd, echo=lambda s: None)
  assert [status[n]['status'] for n in 'ab'] == ['done', 'done']
  assert _summary(wd, 'a')['saw_other'] is True and _summary(wd, 'b')['saw_other'] is True

  # One at a time, the first cannot see the second (it gives up after its timeout).
  wd = str(tmp_path / 'serial')
  runs = [
    sweep_spec.Run('a', 'cfg.py', {'fake.wait_for': 'b', 'fake.timeout': 0.3}),
    sweep_spec.Run('b', 'cfg.py', {'fake.wait_for': 'a', 'fake.timeout': 0.3}),
  ]
  pool.run_sweep(runs, wd, parallel=1, train_cmd=fake_cmd, echo=lambda s: None)
  assert _summary(wd, 'a')['saw_other'] is False and _summary(wd, 'b')['saw_other'] is True


FAKE_BASE = """
import ml_collections
from experiments.configs import default
def get_config():
  c = default.get_config()  # a real config: the sweep checks it as launch.train would
  c.model.n = 0  # the fake trainer's model size
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
    ('small', {'model.n': 100}),
    ('big', {'model.n': 1000, 'fake.fail': fail}),
  ]


def test_dry_run_and_only_run_nothing_else(tmp_path, fake_cmd):
  path = _fake_sweep(tmp_path, fail=False)
  wd = str(tmp_path / 'sw')
  out = []
  assert (
    sweep.launch(
      path, wd, dry_run=True, overrides=['model.n=7'], train_cmd=fake_cmd, echo=out.append
    )
    == 0
  )
  assert not os.path.exists(wd)
  text = '\n'.join(out)
  assert 'small (to run)' in text and 'model.n = 7' in text and '--config.model.n=7' in text
  assert sweep.launch(path, wd, only=['big'], train_cmd=fake_cmd, echo=out.append) == 0
  assert _invocations(wd) == ['big']
  opts = _summary(wd, 'big')['opts']
  assert {k: opts[k] for k in ('model.n', 'fake.fail')} == {'model.n': '1000', 'fake.fail': 'false'}


def test_cli_one_line_errors_and_dry_run(tmp_path):
  path = _write_sweep(tmp_path, "def get_sweep():\n  return [('bad name', {})]")
  env = {**os.environ, 'PYTHONPATH': REPO}
  cmd = [sys.executable, '-m', 'launch.sweep', f'--workdir={tmp_path / "w"}']
  bad = subprocess.run([*cmd, f'--sweep={path}'], capture_output=True, text=True, env=env, cwd=REPO)
  assert bad.returncode == 2
  assert bad.stderr.strip().count('\n') == 0 and 'not path-safe' in bad.stderr
  ok = subprocess.run(
    [*cmd, '--sweep=experiments/sweeps/demo.py', '--dry_run'],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
  )
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.count('-m launch.train --config=experiments/configs/scaling_cpu.py') == len(
    _runs('demo')
  )
  assert not os.path.exists(tmp_path / 'w')


def test_trainer_that_cannot_start_fails_only_its_run(tmp_path, fake_cmd):
  wd = str(tmp_path / 'sw')
  runs = [sweep_spec.Run('a', 'cfg.py', {}), sweep_spec.Run('b', 'cfg.py', {})]
  status = pool.run_sweep(runs, wd, train_cmd=(str(tmp_path / 'no_such_python'),), echo=print)
  assert [status[n]['status'] for n in 'ab'] == ['failed', 'failed']
  assert 'cannot start' in status['a']['last_line']
  status = pool.run_sweep(runs, wd, train_cmd=fake_cmd, echo=print)  # the rerun completes
  assert [status[n]['status'] for n in 'ab'] == ['done', 'done']


def test_sixteen_concurrent_writers_of_the_shared_files(tmp_path):
  """sweep.json and status.json written by 16 writers at once: no errors, valid JSON, no loss."""
  import threading

  wd = str(tmp_path / 'sw')
  os.makedirs(wd)
  runs = [sweep_spec.Run(f'r{i}', 'cfg.py', {'model.n': i}) for i in range(16)]
  errors = []

  def writer(i):
    try:
      for k in range(25):
        sweep_report.write_sweep_json(runs, wd, 'sweep.py')
        pool.StatusFile(wd).update({f'r{i}': {'status': 'running', 'k': k}})
    except Exception as e:  # noqa: BLE001 - collected and reported below
      errors.append(repr(e))

  threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert errors == []
  assert len(json.load(open(os.path.join(wd, 'sweep.json')))) == 16
  status = json.load(open(os.path.join(wd, 'status.json')))['runs']
  assert {name: e['k'] for name, e in status.items()} == {f'r{i}': 24 for i in range(16)}
  assert not glob.glob(os.path.join(wd, '*.tmp'))


def test_devices_per_run_gives_concurrent_runs_disjoint_devices(tmp_path, fake_cmd):
  """4 fake CPU devices, 2 per run: a and b run at once (each waits to see the other) on
  different halves, c reuses a freed half; a real JAX process sees exactly its 2 devices."""
  wd = str(tmp_path / 'sw')
  runs = [
    sweep_spec.Run('a', 'cfg.py', {'fake.wait_for': 'b'}),
    sweep_spec.Run('b', 'cfg.py', {'fake.wait_for': 'a'}),
    sweep_spec.Run('c', 'cfg.py', {'fake.jax': True}),
  ]
  groups = pool.device_groups(2, 'cpu', devices=[0, 1, 2, 3])
  env = {
    **pool.child_env(),
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': '--xla_cpu_multi_thread_eigen=false',
  }
  quiet = dict(echo=lambda s: None, groups=groups)
  status = pool.run_sweep(runs, wd, parallel=8, train_cmd=fake_cmd, env=env, **quiet)
  assert [status[n]['status'] for n in 'abc'] == ['done'] * 3
  assert _summary(wd, 'a')['saw_other'] is True and _summary(wd, 'b')['saw_other'] is True
  assert {status['a']['devices'], status['b']['devices']} == {'cpu:0,1', 'cpu:2,3'}
  assert status['c']['devices'] in ('cpu:0,1', 'cpu:2,3')
  for name in 'abc':
    flags_ = _summary(wd, name)['opts']['env']['XLA_FLAGS'].split()
    assert flags_ == [
      '--xla_cpu_multi_thread_eigen=false',
      '--xla_force_host_platform_device_count=2',
    ]
  assert _summary(wd, 'c')['opts']['jax_devices'] == 2
  table = sweep_report.format_table(sweep_report.table_rows(runs, wd, status))
  assert table.splitlines()[0].split()[:3] == ['run', 'status', 'devices']
  assert 'a    done    cpu:' in table


def test_device_groups_env_and_bad_requests():
  gpu = pool.device_groups(2, 'gpu', devices=[4, 5, 6, 7, 8])
  assert [g.ids for g in gpu] == [(4, 5), (6, 7)]  # the odd one out stays idle
  assert gpu[1].env({'A': '1'}) == {'A': '1', 'CUDA_VISIBLE_DEVICES': '6,7'}
  tpu = pool.device_groups(2, 'tpu', devices=[0, 1, 2, 3])[1].env({})
  assert tpu['TPU_VISIBLE_CHIPS'] == '2,3' and tpu['TPU_CHIPS_PER_PROCESS_BOUNDS'] == '1,2,1'
  assert tpu['TPU_PROCESS_BOUNDS'] == '1,1,1' and tpu['TPU_PROCESS_ADDRESSES'].endswith(':8477')
  with pytest.raises(ValueError, match='this host has 2 gpu devices'):
    pool.device_groups(4, 'gpu', devices=[0, 1])
  with pytest.raises(ValueError, match='on TPU: one of'):
    pool.device_groups(3, 'tpu', devices=[0, 1, 2, 3])


def test_other_hosts_of_a_multi_host_sweep_write_no_shared_file(tmp_path, fake_cmd, monkeypatch):
  """Every worker of a TPU slice runs the sweep; only worker 0 writes sweep.json, status.json."""
  path = _fake_sweep(tmp_path, fail=False)
  monkeypatch.setenv('SWEEP_WORKER_ID', '1')
  wd = tmp_path / 'w1'
  assert sweep.launch(path, str(wd), only=['small'], train_cmd=fake_cmd, echo=lambda s: None) == 0
  assert sorted(os.listdir(wd)) == ['invocations.txt', 'runs']  # the run itself still happens
  monkeypatch.setenv('SWEEP_WORKER_ID', '0')
  wd = tmp_path / 'w0'
  assert sweep.launch(path, str(wd), only=['small'], train_cmd=fake_cmd, echo=lambda s: None) == 0
  assert {'sweep.json', 'status.json'} <= set(os.listdir(wd))


# -- Runs reused only when their recorded config is what the sweep asks for ---------------------


def _record_config(wd: str, run: sweep_spec.Run, **changes) -> None:
  """Writes run's config.json as launch.train would, with some keys changed."""
  config, _ = sweep_spec.apply_overrides(sweep_spec.load_config(run.config), run.overrides, 'x')
  tree = json.loads(json.dumps(config.to_dict()))
  for key, value in changes.items():
    *path, last = key.split('.')
    node = tree
    for part in path:
      node = node[part]
    if value is None:
      del node[last]
    else:
      node[last] = value
  with open(os.path.join(wd, 'runs', run.name, 'config.json'), 'w') as f:
    json.dump(tree, f)


def test_changed_runs_are_refused_or_rerun_and_sweep_json_stays_true(tmp_path, fake_cmd):
  path = _fake_sweep(tmp_path, fail=False)
  wd = str(tmp_path / 'sw')
  assert sweep.launch(path, wd, train_cmd=fake_cmd, echo=print) == 0
  small, big = sweep_spec.expand(path).runs
  for run in (small, big):
    _record_config(wd, run)
  # Unchanged: both reused. A key added to the config files since (absent from the record)
  # is no change unless the run sets it.
  _record_config(wd, small, **{'train.b1': None})
  assert sweep.launch(path, wd, train_cmd=fake_cmd, echo=print) == 0
  assert _invocations(wd) == ['small', 'big']
  # A base-config key the sweep does not override changed since big ran: refused, nothing
  # started or written.
  _record_config(wd, big, **{'train.b2': 0.5})
  sweep_json = os.path.join(wd, 'sweep.json')
  before = (open(sweep_json).read(), os.stat(sweep_json).st_mtime_ns)
  with pytest.raises(ValueError, match=r"^run 'big' in .*runs/big was trained with another") as e:
    sweep.launch(path, wd, train_cmd=fake_cmd, echo=print)
  assert 'train.b2 0.5 -> 0.95' in str(e.value) and '\n' not in str(e.value)
  # The docs' trap: a short --only run with an override, then the full sweep.
  with pytest.raises(ValueError, match=r"run 'small' .*model.n 100 -> 7"):
    sweep.launch(path, wd, only=['small'], overrides=['model.n=7'], train_cmd=fake_cmd)
  assert (open(sweep_json).read(), os.stat(sweep_json).st_mtime_ns) == before
  assert _invocations(wd) == ['small', 'big']
  out = []
  assert sweep.launch(path, wd, dry_run=True, train_cmd=fake_cmd, echo=out.append) == 0
  assert any(ln.startswith('changed: big (train.b2 0.5 -> 0.95)') for ln in out)
  # --rerun_changed: big is set aside (kept) and trained again; small is reused.
  out = []
  code = sweep.launch(path, wd, train_cmd=fake_cmd, echo=out.append, rerun_changed=True)
  assert code == 0 and _invocations(wd) == ['small', 'big', 'big']
  (aside,) = glob.glob(os.path.join(wd, 'stale', 'big-*'))
  assert json.load(open(os.path.join(aside, 'config.json')))['train']['b2'] == 0.5
  assert os.path.exists(os.path.join(aside, 'summary.json'))
  assert not os.path.exists(os.path.join(wd, 'runs', 'big', 'config.json'))  # a fresh folder
  assert _summary(wd, 'big')['resumed'] is False


def test_a_real_short_run_is_reused_then_refused_when_its_steps_change(tmp_path):
  """Through the real trainer: config.json as launch.train writes it equals what the sweep
  computes (no false alarm), and a changed --override is caught."""
  demo = os.path.join(REPO, 'experiments', 'sweeps', 'demo.py')
  wd = str(tmp_path / 'sw')
  args = ['train.steps=2', 'train.warmup_steps=1', 'eval.every=2', 'checkpoint.every=2']
  out = []
  assert sweep.launch(demo, wd, only=['L2-d32-h2'], overrides=args, echo=out.append) == 0
  assert any(ln.startswith('done    L2-d32-h2 [1/1]') for ln in out), out
  out = []
  assert sweep.launch(demo, wd, only=['L2-d32-h2'], overrides=args, echo=out.append) == 0
  assert '1 of 1 runs already finished (skipped)' in out
  changed = [a if a != 'train.steps=2' else 'train.steps=3' for a in args]
  with pytest.raises(ValueError, match=r"run 'L2-d32-h2' .*: train.steps 2 -> 3;"):
    sweep.launch(demo, wd, only=['L2-d32-h2'], overrides=changed)


def test_progress_lines_show_an_eta(tmp_path, fake_cmd):
  assert pool.eta_text([10.0, 20.0], 4, 2) == ', eta 30 s'
  assert pool.eta_text([600.0], 3, 1) == ', eta 30 min'
  assert pool.eta_text([3600.0], 3, 2) == ', eta 2.0 h'
  assert pool.eta_text([5.0], 0, 1) == pool.eta_text([], 3, 1) == ''
  runs = [sweep_spec.Run(n, 'cfg.py', {}) for n in 'abc']
  lines = []
  pool.run_sweep(runs, str(tmp_path / 'sw'), train_cmd=fake_cmd, echo=lines.append)
  done = [ln for ln in lines if ln.startswith('done')]
  assert [', eta ' in ln for ln in done] == [True, True, False], done
