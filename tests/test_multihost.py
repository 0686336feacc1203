"""Real multi-process training on one machine: processes x devices change across a resume.

2 processes x 4 CPU devices (gloo collectives over 127.0.0.1) train, checkpoint, and a
1 process x 8 devices run resumes them, and the other way round. The result must match an
uninterrupted run, and only process 0 may write metrics.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.cluster import FLAGS, REPO, launch, leaves, params
from tests.cluster import records as train_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """The uninterrupted reference: 1 process x 8 devices, 6 steps."""
  workdir = str(tmp_path_factory.mktemp('straight') / 'run')
  launch(workdir, 1, 8)
  return workdir


@pytest.mark.parametrize('first, second', [((2, 4), (1, 8)), ((1, 8), (2, 4))])
def test_resume_across_process_counts(tmp_path, straight, first, second):
  moved = str(tmp_path / 'moved')
  launch(moved, *first, extra=['--stop_after_step=3'])
  launch(moved, *second)
  for a, b in zip(leaves(params(straight)), leaves(params(moved)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # One record per step: a second writer (process 1) would have duplicated them.
  steps = [r['step'] for r in train_records(moved)]
  assert sorted(steps) == sorted(set(steps))
  ref = {r['step']: r['loss'] for r in train_records(straight)}
  for r in train_records(moved):  # the loss continues where it stopped
    np.testing.assert_allclose(r['loss'], ref[r['step']], rtol=1e-4)


def test_sigkill_mid_run_then_rerun_matches_uninterrupted(tmp_path):
  """A run killed with SIGKILL (no chance to clean up) resumes to the same parameters."""
  extra = [
    '--config.train.steps=20',  # the kill lands at step 4: 16 steps to spare
    '--config.checkpoint.every=2',
    '--config.eval.every=20',
    '--config.checkpoint.async_save=true',
  ]
  straight = str(tmp_path / 'straight')
  launch(straight, 1, 1, extra)
  killed = str(tmp_path / 'killed')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.Popen(
    [sys.executable, '-m', 'launch.train', f'--workdir={killed}', *FLAGS, *extra],
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  ckpt = os.path.join(killed, 'checkpoints', '4')
  while not os.path.isdir(ckpt) and proc.poll() is None:
    time.sleep(0.01)
  proc.kill()  # SIGKILL
  proc.wait()
  assert not os.path.exists(os.path.join(killed, 'summary.json')), 'finished before the kill'
  launch(killed, 1, 1, extra)
  for a, b in zip(leaves(params(straight, 20)), leaves(params(killed, 20)), strict=True):
    np.testing.assert_array_equal(a, b)
