"""Preemption by real signals: SIGTERM/SIGINT save at one agreed step; the rerun resumes bitwise.

The signal is sent once metrics.jsonl shows a known step (an event, not a timer). The property:
the interrupted-then-rerun run ends with a checkpoint bit-identical to an uninterrupted run's,
the rerun started at the saved step, and metrics.jsonl holds every step exactly once.
"""

import json
import os
import signal
import time

import numpy as np
import pytest

from tests import cluster
from tests.cluster import finish, leaves, records

pytestmark = pytest.mark.slow
STEPS = 60
EXTRA = [
  f'--config.train.steps={STEPS}',
  '--config.eval.every=1000',
  '--config.checkpoint.every=1000',
  '--config.checkpoint.async_save=true',
]
SIGNAL_AFTER = 3  # steps recorded before the signal is sent


def start(workdir, processes):
  return cluster.start(workdir, processes, 1, EXTRA, timeout_s=60)


def wait_for_step(workdir, step, procs):
  path = os.path.join(workdir, 'metrics.jsonl')
  while all(p.poll() is None for p in procs):
    if os.path.exists(path):
      with open(path) as f:
        if any(line.endswith('\n') and json.loads(line)['step'] >= step for line in f):
          return
    time.sleep(0.005)
  raise AssertionError(f'a process ended before step {step}: {finish(procs)}')


def saved_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """Uninterrupted runs, one per process count, each made when a test first asks for it."""
  out = {}

  def get(processes):
    if processes not in out:
      workdir = str(tmp_path_factory.mktemp('straight') / str(processes))
      for rc, err in finish(start(workdir, processes)):
        assert rc == 0, err[-3000:]
      out[processes] = workdir
    return out[processes]

  return get


def interrupt_and_rerun(workdir, processes, sig, target):
  procs = start(workdir, processes)
  wait_for_step(workdir, SIGNAL_AFTER, procs)
  os.kill(procs[target].pid, sig)
  results = finish(procs)
  saved = saved_steps(workdir)
  assert saved and max(saved) < STEPS, f'finished before the signal: {saved}'
  stopped_at = max(saved)
  for rc, err in results:
    lines = err.strip().splitlines()
    assert rc == 75, err[-3000:]
    assert lines[-1].startswith('preempted by ') and f'saved step {stopped_at}' in lines[-1]
    assert sum('preempted by' in line for line in lines) == 1
    assert 'Traceback' not in err
  assert max(r['step'] for r in records(workdir)) == stopped_at
  for rc, err in finish(start(workdir, processes)):
    assert rc == 0, err[-3000:]
  return stopped_at


def check_same_as_straight(workdir, reference, stopped_at):
  for a, b in zip(
    leaves(cluster.state(reference, STEPS)), leaves(cluster.state(workdir, STEPS)), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  steps = [r['step'] for r in records(workdir)]
  assert steps == list(range(1, STEPS + 1))  # nothing repeated, nothing missing
  # The rerun started at the saved step: its first record has no rate (first of an invocation).
  first_of_rerun = records(workdir)[stopped_at]
  assert first_of_rerun['step'] == stopped_at + 1 and first_of_rerun['tokens_per_s'] is None
  ref = records(reference)
  assert [r['loss'] for r in records(workdir)] == [r['loss'] for r in ref]


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_one_process_signal_saves_and_rerun_resumes_bitwise(tmp_path, straight, sig):
  workdir = str(tmp_path / 'run')
  stopped_at = interrupt_and_rerun(workdir, 1, sig, target=0)
  check_same_as_straight(workdir, straight(1), stopped_at)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_two_processes_save_the_same_step_when_one_gets_a_signal(tmp_path, straight, sig):
  """SIGTERM goes to JAX's preemption service; SIGINT (Ctrl-C, some schedulers) is forwarded to
  it, so the other process saves the same step too."""
  workdir = str(tmp_path / 'run')
  stopped_at = interrupt_and_rerun(workdir, 2, sig, target=1)  # not the writer
  check_same_as_straight(workdir, straight(2), stopped_at)
