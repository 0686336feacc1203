"""4 real processes x 2 CPU devices on a mixed mesh, resumed onto 2 processes x 4 devices.

The mesh is data=2 x fsdp=2 x tensor=2 in both runs, so every device holds the same shard of
every array before and after the move; only the process boundaries change (gloo collectives
over 127.0.0.1 between processes, in-process ones within). Training 3 steps on 4 processes and
3 more on 2 must give the bits of 6 uninterrupted steps on 4 processes.
"""

import numpy as np
import pytest

from tests.cluster import launch, leaves, params
from tests.cluster import records as train_records

pytestmark = pytest.mark.slow
MIXED = ['--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.tensor=2']


def test_four_processes_mixed_mesh_resume_onto_two_bitwise(tmp_path):
  straight = str(tmp_path / 'straight')
  launch(straight, 4, 2, MIXED)
  moved = str(tmp_path / 'moved')
  launch(moved, 4, 2, [*MIXED, '--stop_after_step=3'])
  launch(moved, 2, 4, MIXED)
  for a, b in zip(leaves(params(straight)), leaves(params(moved)), strict=True):
    np.testing.assert_array_equal(a, b)
  ref = {r['step']: r['loss'] for r in train_records(straight)}
  moved_records = train_records(moved)
  # Only process 0 writes: one record per step, and every loss equals the straight run's.
  assert sorted(r['step'] for r in moved_records) == sorted(ref) == list(range(1, 7))
  for r in moved_records:
    assert r['loss'] == ref[r['step']], (r['step'], r['loss'], ref[r['step']])
