"""4 real processes x 2 CPU devices on a mixed mesh, resumed onto 2 processes x 4 devices.

The mesh is data=2 x fsdp=2 x tensor=2 in both runs, so every device holds the same shard of
every array before and after the move; only the process boundaries change (gloo collectives
over 127.0.0.1 between processes, in-process ones within). Training 3 steps on 4 processes and
3 more on 2 must give the bits of 6 uninterrupted steps on 4 processes.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.test_multihost import FLAGS, REPO, free_port, leaves, params, train_records

pytestmark = pytest.mark.slow

MIXED = ['--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.tensor=2']
# Failures of the environment, not of the code, after which the launch is retried from the
# workdir as it was: a coordinator port taken between free_port() and the bind, and gloo's
# fixed 30 s rendezvous for a new group of devices when one process reaches its first
# collective much later than the others (a starved CPU: one compile took 234 s here).
_RETRY = (
  'Address already in use',
  'address already in use',
  'Failed to bind',
  'Gloo context initialization failed',
)


def launch(workdir, processes: int, devices_each: int, extra=(), tries: int = 3) -> None:
  env = dict(
    os.environ,
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_each}',
    JAX_PLATFORMS='cpu',
  )
  base = [sys.executable, '-m', 'launch.train', f'--workdir={workdir}', *FLAGS, *MIXED, *extra]
  before = workdir + '.before'
  shutil.rmtree(before, ignore_errors=True)
  if os.path.isdir(workdir):
    shutil.copytree(workdir, before)
  for attempt in range(tries):
    if attempt:  # back to the workdir as it was before the failed try
      shutil.rmtree(workdir, ignore_errors=True)
      if os.path.isdir(before):
        shutil.copytree(before, workdir)
    addr = f'127.0.0.1:{free_port()}'
    cmds = [
      base
      + [
        f'--coordinator_address={addr}',
        f'--num_processes={processes}',
        f'--process_id={i}',
        '--distributed_timeout_s=300',
      ]
      for i in range(processes)
    ]
    procs = [
      subprocess.Popen(
        c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
      )
      for c in cmds
    ]
    try:
      outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
      for p in procs:  # a hung run must not outlive the test
        if p.poll() is None:
          p.kill()
          p.wait()
    if all(p.returncode == 0 for p in procs):
      return
    if attempt + 1 < tries and any(m in out for m in _RETRY for out in outs):
      continue
    bad = next(i for i, p in enumerate(procs) if p.returncode != 0)
    raise AssertionError(f'process {bad} of {processes} failed:\n{outs[bad][-3000:]}')


def test_four_processes_mixed_mesh_resume_onto_two_bitwise(tmp_path):
  straight = str(tmp_path / 'straight')
  launch(straight, 4, 2)
  moved = str(tmp_path / 'moved')
  launch(moved, 4, 2, extra=['--stop_after_step=3'])
  launch(moved, 2, 4)
  for a, b in zip(leaves(params(straight)), leaves(params(moved)), strict=True):
    np.testing.assert_array_equal(a, b)
  ref = {r['step']: r['loss'] for r in train_records(straight)}
  moved_records = train_records(moved)
  # Only process 0 writes: one record per step, and every loss equals the straight run's.
  assert sorted(r['step'] for r in moved_records) == sorted(ref) == list(range(1, 7))
  for r in moved_records:
    assert r['loss'] == ref[r['step']], (r['step'], r['loss'], ref[r['step']])
