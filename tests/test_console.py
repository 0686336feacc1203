"""The console stays readable: library INFO goes to the run's verbose log, not to stderr."""

import glob
import logging
import os
import subprocess
import sys

from tests.cluster import FLAGS, REPO
from tests.test_train import tiny_config, train


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

  class Raises:  # an exception in __del__ is reported as unraisable, like TensorStore's
    def __init__(self, exc):
      self.exc = exc

    def __del__(self):
      raise self.exc

  monkeypatch.setattr(sys, 'unraisablehook', sys.__unraisablehook__)
  checkpoint._quiet_failed_restore_stragglers()
  checkpoint._quiet_failed_restore_stragglers()  # installed once, not stacked
  assert sys.unraisablehook._drops_late_tensorstore
  Raises(RuntimeError('Event loop is closed'))
  assert capsys.readouterr().err == ''
  for other in (RuntimeError('something else'), ValueError('Event loop is closed')):
    Raises(other)
    assert str(other) in capsys.readouterr().err


def test_only_orbaxs_orphaned_tasks_are_dropped_from_the_asyncio_log(monkeypatch, caplog):
  from train import checkpoint

  asyncio_log = logging.getLogger('asyncio')
  monkeypatch.setattr(asyncio_log, 'filters', [])
  monkeypatch.setattr(sys, 'unraisablehook', sys.__unraisablehook__)
  checkpoint._quiet_failed_restore_stragglers()
  orphan = 'Task exception was never retrieved\nfuture: <Task coro=<Store.read() defined at {}>>'
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    asyncio_log.error(orphan.format('.../orbax/checkpoint/_src/metadata/array_metadata_store.py'))
    asyncio_log.error(orphan.format('.../my_project/reader.py'))
    asyncio_log.error('Unclosed client session (orbax)')
  assert [r.getMessage().split(chr(10))[0] for r in caplog.records] == [
    'Task exception was never retrieved',
    'Unclosed client session (orbax)',
  ]
