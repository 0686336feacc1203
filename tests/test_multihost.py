"""Real multi-process training on one machine: processes x devices change across a resume.

2 processes x 4 CPU devices (gloo collectives over 127.0.0.1) train, checkpoint, and a
1 process x 8 devices run resumes them, and the other way round. The result must match an
uninterrupted run, and only process 0 may write metrics.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

FLAGS = [
  '--config=experiments/configs/default.py',
  '--config.model.d_model=32',
  '--config.model.num_layers=2',
  '--config.model.num_heads=4',
  '--config.model.max_seq_len=32',
  '--config.data.seq_len=32',
  '--config.train.steps=6',
  '--config.train.global_batch=8',
  '--config.train.warmup_steps=2',
  '--config.eval.every=3',
  '--config.eval.batches=2',
  '--config.eval.batch_size=8',
  '--config.checkpoint.every=3',
  '--config.checkpoint.async_save=false',
  '--config.log_every=1',
  '--config.peak_flops=1e12',
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir, processes: int, devices_each: int, extra=()) -> None:
  env = dict(
    os.environ,
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_each}',
    JAX_PLATFORMS='cpu',
  )
  base = [sys.executable, '-m', 'launch.train', f'--workdir={workdir}', *FLAGS, *extra]
  if processes == 1:
    cmds = [base]
  else:
    addr = f'127.0.0.1:{free_port()}'
    cmds = [
      base
      + [
        f'--coordinator_address={addr}',
        f'--num_processes={processes}',
        f'--process_id={i}',
        '--distributed_timeout_s=60',
      ]
      for i in range(processes)
    ]
  procs = [
    subprocess.Popen(
      c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for c in cmds
  ]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-3000:]


def params(workdir, step=6):
  """Parameters of a checkpoint, onto this process's first device whatever wrote them."""
  import jax

  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path).item_metadata
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
  return ckptr.restore(path, target)['params']


def leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def train_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['kind'] == 'train']


@pytest.mark.parametrize('first, second', [((2, 4), (1, 8)), ((1, 8), (2, 4))])
def test_resume_across_process_counts(tmp_path, first, second):
  straight = str(tmp_path / 'straight')
  launch(straight, 1, 8)
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
    '--config.train.steps=60',
    '--config.checkpoint.every=2',
    '--config.eval.every=60',
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
  for a, b in zip(leaves(params(straight, 60)), leaves(params(killed, 60)), strict=True):
    np.testing.assert_array_equal(a, b)
