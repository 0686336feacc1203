"""The benchmark tools: the profile's accounting, train_step's flags, the report, the reference's
device checks (without torch)."""

import collections
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import pytest
from absl.testing import flagsaver

from benchmarks import profile, report, train_step
from benchmarks import torch_reference as tr
from tests.cluster import REPO

# One device: the benchmark's own setting (the tests' 8 fake CPU devices would each repeat
# the replicated optimizer update and split the matmuls into slivers).
_ONE = dict(num_devices=1, torch=False, remat='none', scan_layers=False, dtype='float32')


def _run_profile(tmp_path, shape, **kw):
  # Compiled here, not taken from the persistent cache: its key leaves out source locations, so
  # a cached executable can carry the line numbers of an older models/attention.py, and the
  # profile classifies operations by the source lines of their Python frames.
  jax.config.update('jax_enable_compilation_cache', False)
  try:
    with flagsaver.flagsaver(**{**_ONE, **kw}):
      return profile.profile_shape(shape, steps=2, warmup=1, trace_dir=str(tmp_path))
  finally:
    jax.config.update('jax_enable_compilation_cache', True)


def _covered_ns(trace_dir, module) -> float:
  """Time covered by the module's operations, line by line (union of intervals)."""
  data = jax.profiler.ProfileData.from_file(profile.find_xspace(trace_dir))
  total = 0.0
  for plane in data.planes:
    for line in plane.lines:
      spans = sorted(
        (e.start_ns, e.end_ns)
        for e in line.events
        if dict(e.stats).get('hlo_module') == module and dict(e.stats).get('hlo_op')
      )
      end = float('-inf')
      for s, e in spans:
        if e > end:
          total += e - max(s, end)
          end = e
  return total


def test_profile_partitions_the_traced_time(tmp_path):
  # scan_layers: on CPU the layers' operations are traced inside the while loop's own event.
  r = _run_profile(tmp_path, 'd128.L2.H2', seq_len=32, batch=8, vocab=256, scan_layers=True)
  by_cat = r['by_category_ns']
  # Own times add up to exactly the time the operations cover: nothing counted twice
  # (a while loop and its body), nothing lost.
  assert sum(by_cat.values()) == pytest.approx(_covered_ns(str(tmp_path), r['module']), rel=1e-6)
  # Every traced operation was found in the compiled HLO.
  assert all(info.opcode != '?' for _, _, _, info in r['rows'])
  assert by_cat['optimizer'] > 0  # the AdamW update is found (optax frames)
  text = profile.format_report(by_cat, r['rows'], r['steps'], r['wall_s'], top=5)
  shares = [float(ln.split('|')[3].strip(' %')) for ln in text.splitlines()[4:11]]
  assert sum(shares) == pytest.approx(100, abs=0.5)


def test_profile_wide_model_is_matmul_bound(tmp_path):
  r = _run_profile(tmp_path, 'd768.L1.H4', seq_len=64, batch=8, vocab=256)
  # What the profile decides: every traced operation that multiplies matrices outside attention
  # is a matmul, and the projections of the forward and backward pass are all found.
  dots = [info for _, _, _, info in r['rows'] if 'dot' in (info.opcode, *info.detail.split('+'))]
  assert {i.category for i in dots} <= {'matmul', 'attention'}, dots
  assert sum(i.category == 'matmul' and not i.backward for i in dots) >= 5, dots
  assert sum(i.category == 'matmul' and i.backward for i in dots) >= 5, dots
  # What it measures: at d=768 the matmuls take the largest share of the time. This is a timing,
  # so it asks only for the largest share (the matmuls take about 2/3 here alone, and stay the
  # largest on a loaded 2-core machine), not for a threshold.
  by_cat = r['by_category_ns']
  assert max(by_cat, key=by_cat.get) == 'matmul', by_cat


@pytest.mark.parametrize('impl', ['xla', 'reference'])
def test_profile_long_narrow_model_is_attention_bound(tmp_path, impl):
  """L x L work dominates at L=1024, d=32: both attention paths are found as attention."""
  r = _run_profile(tmp_path, 'd32.L1.H1', seq_len=1024, batch=1, vocab=256, attention_impl=impl)
  by_cat = r['by_category_ns']
  assert max(by_cat, key=by_cat.get) == 'attention', by_cat


def _nested(x):
  return jnp.sin(x) * 2


def _outer(x):
  y = _nested(x)
  return y + jnp.exp(y)


def test_parse_hlo_recovers_the_python_call_stack():
  instrs = profile.parse_hlo(jax.jit(_outer).lower(jnp.ones(3)).compile().as_text())
  sines = [i for i in instrs.values() if i.opcode == 'sine']
  assert len(sines) == 1
  names = [f.function for f in sines[0].frames]
  assert names[:2] == ['_nested', '_outer'], names  # innermost first, then its caller
  exps = [i for i in instrs.values() if i.opcode == 'exponential']
  assert [f.function for f in exps[0].frames][:1] == ['_outer']


def test_bad_attention_impl_is_one_line_before_any_work(capsys):
  with flagsaver.flagsaver(shapes=['d64.L1.H1'], attention_impl='flash9'):
    with pytest.raises(SystemExit) as e:
      train_step.check_flags()
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and 'attention_impl' in err and 'flash9' in err


def test_mesh_is_checked_against_the_devices_the_benchmark_uses(capsys):
  """--num_devices=2 with a 2-device mesh is accepted on the tests' 8 devices; the same mesh
  over all 8 is refused in one line before any measuring."""
  assert jax.device_count() == 8
  with flagsaver.flagsaver(shapes=['d32.L1.H4'], num_devices=2, mesh='data=2'):
    train_step.check_machine()
  with flagsaver.flagsaver(shapes=['d32.L1.H4'], num_devices=0, mesh='data=2'):
    with pytest.raises(SystemExit) as e:
      train_step.check_machine()
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and 'has 2 devices but 8 are available' in err, err


def test_attention_impl_is_passed_through_or_left_to_the_config():
  from experiments.configs import default

  with flagsaver.flagsaver(attention_impl=''):
    assert (
      train_step.bench_config('d64.L1.H1').model.attention_impl
      == default.get_config().model.attention_impl
    )
  with flagsaver.flagsaver(attention_impl='reference'):
    assert train_step.bench_config('d64.L1.H1').model.attention_impl == 'reference'


def test_main_writes_a_row_that_the_report_reads(tmp_path, monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '')  # main appends the deterministic flag to it
  out = tmp_path / 'rows.jsonl'
  kw = dict(
    shapes=['d64.L1.H2'],
    seq_len=16,
    batch=2,
    vocab=64,
    steps=1,
    warmup=1,
    deterministic=True,
    label='tiny',
    rows_out=str(out),
    attention_impl='reference',
  )
  with flagsaver.flagsaver(**{**_ONE, **kw}):
    train_step.main(['train_step'])
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert row['label'] == 'tiny' and row['attention_impl'] == 'reference'
  assert row['deterministic'] and train_step.DETERMINISTIC_XLA_FLAG in row['xla_flags']
  assert row['num_devices'] == 1 and row['tokens_per_s'] > 0
  # A reference measured on the same shape gives the ratio; a failed run shows its reason.
  ref = dict(row, label='with ref', torch_tokens_per_s=row['tokens_per_s'] / 4)
  oom = report.failure_row('big', 1, 60, 'x\nRESOURCE_EXHAUSTED: Out of memory\n', ['--a'])
  late = report.failure_row('slow', 124, 60, '', ['--b'])
  lines = report.table([ref, row, oom, late]).splitlines()
  assert len(lines) == 2 + 4 + 1  # header, 4 runs, the reference once
  assert lines[2].endswith('| 4.00× |') and lines[4].endswith('| 4.00× |')
  assert 'PyTorch reference' in lines[3] and lines[3].endswith('| 1.00× |')
  assert 'out of memory' in lines[5] and 'did not finish in 60 s' in lines[6]
  assert '--rows_out=' not in lines[2] and '--label=' not in lines[2]


@pytest.fixture
def torch_without_gpu(monkeypatch):
  """A stand-in torch that has no CUDA device (the real one may be absent here)."""
  fake = types.ModuleType('torch')
  fake.__version__ = '0.0-fake'
  fake.cuda = types.SimpleNamespace(is_available=lambda: False, device_count=lambda: 0)
  monkeypatch.setitem(sys.modules, 'torch', fake)
  return fake


_SHAPE = dict(d_model=32, num_layers=1, num_heads=2, vocab_size=64)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(device='cuda'), 'sees no CUDA GPU'),
    (dict(device='cuda:1'), 'sees no CUDA GPU'),
    (dict(device='tpu'), "use 'cpu', 'cuda'"),
    (dict(dtype='float16'), 'dtype'),
  ],
)
def test_reference_device_errors_are_one_line(torch_without_gpu, kwargs, match):
  with pytest.raises(ValueError, match=match) as e:
    tr.benchmark(_SHAPE, batch=2, seq_len=8, steps=1, warmup=1, compile=False, **kwargs)
  assert '\n' not in str(e.value)


def test_reference_follows_jax_onto_the_gpu(torch_without_gpu, monkeypatch):
  assert not tr.cuda_available()
  with flagsaver.flagsaver(torch=True, compile_only=False):
    monkeypatch.setattr(jax, 'devices', lambda *a: [types.SimpleNamespace(platform='gpu')])
    assert train_step._torch_device() == 'cuda'
    monkeypatch.setattr(jax, 'devices', lambda *a: [types.SimpleNamespace(platform='cpu')])
    assert train_step._torch_device() == 'cpu'


def test_report_command_line(tmp_path, capsys):
  rows = tmp_path / 'rows.jsonl'
  report.main(['failure', str(rows), '--label=x', '--rc=137', '--timeout=5', '--', '--steps=1'])
  report.main(['table', str(rows)])
  text = capsys.readouterr().out
  assert 'did not finish in 5 s' in text and '--steps=1' in text
  assert collections.Counter(text)['\n'] == 3


@pytest.mark.parametrize(
  'module, extra',
  [('benchmarks.train_step', ['--compile_only']), ('benchmarks.profile', ['--steps=1'])],
)
def test_xla_flags_the_benchmark_sets_take_effect(tmp_path, module, extra):
  """XLA reads XLA_FLAGS once, when JAX starts its backend: the flag checks must not start it.

  A dump directory shows it: it fills only if the flag was in place in time (the deterministic
  and command-buffer flags, which the tools set the same way, are GPU-only and show nothing here).
  """
  dump = tmp_path / 'dump'
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  args = ['--shapes=d32.L1.H2', '--seq_len=16', '--batch=2', '--vocab=64', '--warmup=0']
  subprocess.run(
    [sys.executable, '-m', module, *args, '--notorch', f'--xla_flags=--xla_dump_to={dump}', *extra],
    cwd=REPO,
    env=env,
    check=True,
    capture_output=True,
    timeout=600,
  )
  assert any('jit_train_step' in p.name for p in dump.iterdir()), sorted(dump.iterdir())[:5]


GPU_CHECK_ORDER = ('default', 'remat=none', 'PyTorch', 'XL', 'compile', 'deterministic')


@pytest.mark.parametrize('dry', ['0', '1'])
def test_gpu_check_rows_fit_the_budget_most_informative_first(tmp_path, dry):
  """gpu_check.sh --list: its rows' limits (plus setup) fit BUDGET_S, in the issue's order,
  no two alike, every one a valid benchmarks.train_step command line, output under $OUT."""
  env = {**os.environ, 'OUT': str(tmp_path / 'out'), 'CHECK_CPU': dry}
  env.pop('BUDGET_S', None)
  out = subprocess.run(
    ['bash', 'benchmarks/gpu_check.sh', '--list'],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    check=True,
    timeout=60,
  ).stdout.splitlines()
  rows = [line.split('\t') for line in out[:-1]]
  _, budget, _, setup, _, rows_file = out[-1].split()
  assert sum(int(limit) for limit, _, _ in rows) + int(setup) <= int(budget), rows
  labels = [label for _, label, _ in rows]
  assert len(labels) == len(GPU_CHECK_ORDER)
  assert all(word in label for word, label in zip(GPU_CHECK_ORDER, labels, strict=True)), labels
  assert len({args for _, _, args in rows}) == len(rows)  # no duplicate rows
  assert rows_file == str(tmp_path / 'out' / 'rows.jsonl') and not (tmp_path / 'out').exists()
  for _, _, args in rows:
    with flagsaver.flagsaver():
      train_step.flags.FLAGS(['train_step', *args.split()])
      train_step.check_flags()  # exits 2 on a bad row


def test_report_pairs_a_reference_timed_in_its_own_process():
  shape = dict(d_model=64, layers=1, heads=2, seq_len=16, batch=2, vocab=64, dtype='bfloat16')
  ours = dict(shape, label='ours', tokens_per_s=300.0, mfu=0.5, command='python -m x --notorch')
  ref = dict(shape, label='ref', torch_only=True, torch_tokens_per_s=200.0, torch_version='2')
  lines = report.table([ours, ref]).splitlines()[2:]
  assert len(lines) == 2, lines  # our row, and the reference once (no empty row of its own)
  assert lines[0].startswith('| ours |') and lines[0].endswith('| 1.50× |')
  assert lines[1].startswith('| PyTorch reference') and lines[1].endswith('| 1.00× |')
