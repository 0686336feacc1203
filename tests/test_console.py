"""The console stays readable: library INFO goes to the run's verbose log, not to stderr."""

import glob
import os
import subprocess
import sys

import pytest

from tests.cluster import FLAGS, REPO
from tests.test_train import tiny_config, train


@pytest.mark.xfail(
  reason='known, open: after a damaged step fails to restore, TensorStore reads still in flight '
  "call back into Orbax's closed event loop. train/checkpoint.py drops the 'Event loop is closed' "
  'tracebacks that reach sys.excepthook (measured 2026-11-26: 121 lines down to ~20); the rest '
  'are printed from C++ threads without passing through it. The one warning line is right.',
  strict=False,
)
def test_corrupt_checkpoint_fallback_prints_at_most_three_lines(tmp_path):
  workdir = tmp_path / 'run'
  train(tiny_config(**{'train.steps': 6}), workdir, stop_at=4)  # checkpoints 2 and 4
  for f in glob.glob(str(workdir / 'checkpoints/4/state/**/*'), recursive=True):
    if os.path.isfile(f) and 'metadata' not in os.path.basename(f).lower():
      with open(f, 'r+b') as fh:
        fh.truncate(max(os.path.getsize(f) // 3, 1))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'launch.train',
      f'--workdir={workdir}',
      *FLAGS,
      '--config.train.steps=6',
      '--config.checkpoint.every=2',
      '--config.eval.every=4',
      '--config.train.deterministic=true',  # harmless on CPU
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'resumed from step 2' in proc.stderr
  lines = proc.stderr.splitlines()
  # What the restore printed: the lines between the model summary and 'resumed from step'.
  start = next(i for i, line in enumerate(lines) if 'model:' in line)
  end = next(i for i, line in enumerate(lines) if 'resumed from step' in line)
  fallback = lines[start + 1 : end]
  assert any('unreadable' in line for line in fallback)
  assert len(fallback) <= 3, '\n'.join(fallback)
  with open(workdir / 'verbose_log.txt') as f:
    verbose = f.read()
  assert 'CheckpointManager' in verbose and 'unreadable' in verbose  # Orbax's INFO


def test_only_the_closed_loop_tracebacks_are_dropped(monkeypatch, capsys):
  from train import checkpoint

  monkeypatch.setattr(sys, 'excepthook', sys.__excepthook__)
  checkpoint._quiet_late_tensorstore_callbacks()
  checkpoint._quiet_late_tensorstore_callbacks()  # installed once, not stacked
  assert sys.excepthook._drops_late_tensorstore
  late = RuntimeError('Event loop is closed')
  sys.excepthook(RuntimeError, late, None)
  assert capsys.readouterr().err == ''
  for other in (RuntimeError('something else'), ValueError('Event loop is closed')):
    sys.excepthook(type(other), other, None)
    assert str(other) in capsys.readouterr().err
