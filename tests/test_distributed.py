"""train/distributed.py: flag validation, cluster detection, clear failures, real 2-process runs.

The multi-process tests start real JAX processes on 127.0.0.1 (2 CPU devices each, gloo
collectives), once with explicit flags and once with a SLURM-like environment that JAX's own
cluster detection reads.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.cluster import BIND_ERRORS, REPO, free_port
from train import distributed

CLUSTER_VARS = (
  'SLURM_JOB_ID',
  'SLURM_NTASKS',
  'SLURM_PROCID',
  'SLURM_LOCALID',
  'SLURM_STEP_NODELIST',
  'OMPI_COMM_WORLD_SIZE',
  'TPU_WORKER_HOSTNAMES',
  'TPU_PROCESS_ADDRESSES',
  'MEGASCALE_NUM_SLICES',
  'MEGASCALE_COORDINATOR_ADDRESS',
  'JAX_COORDINATOR_PORT',
  'JAX_COORDINATOR_ADDRESS',
)

# One process of a 2-process job: initialize (twice), then collectives across processes.
CHILD = r"""
import json, sys
import jax
jax.config.update('jax_num_cpu_devices', 2)
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from train import distributed

args = json.loads(sys.argv[1])
distributed.initialize(**args)
distributed.initialize(**args)  # a second call is a no-op
pid = jax.process_index()
gathered = multihost_utils.process_allgather(np.array([pid * 10 + 1]))
mesh = Mesh(np.array(jax.devices()), ('data',))
# Each process owns 2 rows of a 4-row global array: rows are (process id + 1) * ones.
local = np.full((2, 3), pid + 1.0, np.float32)
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P('data')), local, (4, 3))
total = float(jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x))
print('RESULT ' + json.dumps({
  'process_count': jax.process_count(), 'device_count': jax.device_count(),
  'local_device_count': jax.local_device_count(), 'process_index': pid,
  'primary': distributed.is_primary(), 'gathered': gathered.ravel().tolist(), 'total': total,
}))
jax.distributed.shutdown()
"""


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  # This machine has no TPU; make sure no test depends on the metadata server either.
  monkeypatch.setattr(distributed, '_on_tpu_vm', lambda: False)


def child_env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS and k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=REPO, **extra)
  return env


def run_pair(tmp_path, pair, tries: int = 3) -> list[dict]:
  """The two children's results; `pair(port)` gives their (args, envs) for a fresh free port.

  A port can be taken between free_port() and the coordinator's bind: that try is retried."""
  script = tmp_path / 'child.py'
  script.write_text(CHILD)
  for attempt in range(tries):
    args_per_process, envs = pair(free_port())
    procs = [
      subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
      for args, env in zip(args_per_process, envs, strict=True)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    taken = any(m in out for m in BIND_ERRORS for out in outs)
    if attempt + 1 < tries and taken and any(p.returncode for p in procs):
      continue
    for p, out in zip(procs, outs, strict=True):
      assert p.returncode == 0, out[-3000:]
    lines = [[ln for ln in out.splitlines() if ln.startswith('RESULT ')][-1] for out in outs]
    results = [json.loads(line[len('RESULT ') :]) for line in lines]
    return sorted(results, key=lambda r: r['process_index'])
  raise AssertionError('unreachable')


def check_pair(results):
  for r in results:
    assert r['process_count'] == 2 and r['device_count'] == 4 and r['local_device_count'] == 2
    assert r['gathered'] == [1, 11]  # each process's value, in process order, on both
    assert r['total'] == 2 * 3 * 1.0 + 2 * 3 * 2.0  # the global sum, seen by both
  assert [r['primary'] for r in results] == [True, False]


def test_two_processes_with_explicit_flags(tmp_path):
  def pair(port):
    addr = f'127.0.0.1:{port}'
    args = [
      dict(coordinator_address=addr, num_processes=2, process_id=i, timeout_s=60) for i in range(2)
    ]
    return args, [child_env(), child_env()]

  check_pair(run_pair(tmp_path, pair))


def test_two_processes_detected_from_slurm_environment(tmp_path):
  # What srun sets for a 2-task step on one node; JAX_COORDINATOR_PORT replaces the port JAX
  # would derive from the job id, so the test cannot collide with a busy port.
  def pair(port):
    common = dict(
      SLURM_JOB_ID='4242',
      SLURM_STEP_NODELIST='localhost',
      SLURM_NTASKS='2',
      JAX_COORDINATOR_PORT=str(port),
    )
    envs = [child_env(SLURM_PROCID=str(i), SLURM_LOCALID=str(i), **common) for i in range(2)]
    return [dict(timeout_s=60)] * 2, envs

  check_pair(run_pair(tmp_path, pair))


def test_unreachable_coordinator_is_a_clear_error_within_the_timeout():
  port = free_port()  # nobody listens there
  start = time.monotonic()
  with pytest.raises(RuntimeError) as e:
    distributed.initialize(f'127.0.0.1:{port}', 2, 1, 2)
  elapsed = time.monotonic() - start
  assert str(e.value) == (
    f'could not reach coordinator 127.0.0.1:{port} within 2s '
    '(is process 0 running? is the port open?)'
  )
  # The timeout is the property: at least its 2 s, and nowhere near a hang (the default is
  # 300 s); the upper bound leaves a starved 2-core machine 58 s of slack.
  assert 1.5 < elapsed < 60


def test_process_zero_alone_exits_with_one_line_at_the_deadline():
  # Without the watchdog, jaxlib kills this process with SIGABRT and a C++ stack trace.
  # The child stamps the system-wide monotonic clock just before initialize(), so the time
  # measured is the 3 s deadline and the exit, not how long a loaded machine takes to import.
  code = (
    'import time; from train import distributed; '
    "print('START', time.monotonic(), flush=True); "
    f"distributed.initialize('127.0.0.1:{free_port()}', 2, 0, 3)"
  )
  proc = subprocess.run(
    [sys.executable, '-c', code],
    cwd=REPO,
    env=child_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  elapsed = time.monotonic() - float(proc.stdout.split('START')[1].split()[0])
  assert proc.returncode == distributed.WATCHDOG_EXIT_CODE, proc.stderr[-2000:]
  assert 'process 0: not all 2 processes joined coordinator 127.0.0.1:' in proc.stderr
  assert 'within 3s' in proc.stderr
  assert 'Check failure' not in proc.stderr  # our line, not jaxlib's abort
  assert 3 <= elapsed < 60  # the deadline, with a starved machine's slack


def test_taken_coordinator_port_is_a_clear_error():
  with socket.socket() as s:
    s.bind(('', 0))
    s.listen()
    port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match=f'coordinator port {port} is already in use'):
      distributed.initialize(f'127.0.0.1:{port}', 2, 0, 5)


@pytest.mark.parametrize(
  'args, message',
  [
    (('h:1', 2, 2), r'--process_id=2 is out of range for --num_processes=2 \(valid: 0..1\)'),
    (('h:1', 2, -3), r'--process_id=-3 is out of range'),
    (('h:1', -1, 0), r'--num_processes must be >= 1'),
    (('h:1', 0, -1), r'--coordinator_address needs --num_processes'),
    (('h:1', 2, -1), r'--process_id is required with --coordinator_address'),
    (('10.0.0.1', 2, 0), r'--coordinator_address must be HOST:PORT'),
    (('10.0.0.1:http', 2, 0), r'--coordinator_address must be HOST:PORT'),
    (('10.0.0.1:70000', 2, 0), r'--coordinator_address must be HOST:PORT'),
    (('', 2, 0), r'--num_processes=2 needs --coordinator_address'),
    (('', 0, 1), r'--process_id needs --num_processes'),
    (('h:1', 2, 0, 0), r'--distributed_timeout_s must be positive'),
  ],
)
def test_bad_flags_are_one_line_value_errors(args, message):
  with pytest.raises(ValueError, match=message) as e:
    distributed.initialize(*args)
  assert '\n' not in str(e.value)


def test_single_process_does_nothing():
  import jax

  distributed.initialize()
  distributed.initialize('', 1, 0)  # "one process" spelled out is still nothing to start
  assert not jax.distributed.is_initialized()


def test_address_parsing():
  assert distributed.parse_address('10.0.0.1:1234') == ('10.0.0.1', 1234)
  assert distributed.parse_address('node-7.cluster:8476') == ('node-7.cluster', 8476)
  assert distributed.parse_address('[::1]:80') == ('::1', 80)
  for bad in (':80', 'host:', 'host:0', '[]:80'):
    with pytest.raises(ValueError):
      distributed.parse_address(bad)


def test_cluster_detection_from_environment(monkeypatch):
  assert distributed.detect_cluster() is None
  monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '4')
  assert distributed.detect_cluster().num_processes == 4
  monkeypatch.delenv('OMPI_COMM_WORLD_SIZE')
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w0,w1,w2,w3')
  monkeypatch.setenv('MEGASCALE_NUM_SLICES', '2')
  cluster = distributed.detect_cluster()
  assert (cluster.kind, cluster.num_processes) == ('Cloud TPU', 8)
  monkeypatch.setenv('MEGASCALE_NUM_SLICES', '1')
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w0')
  assert distributed.detect_cluster() is None  # a single-host TPU VM: nothing to start
  for var, value in dict(
    SLURM_JOB_ID='7',
    SLURM_NTASKS='8',
    SLURM_PROCID='3',
    SLURM_LOCALID='3',
    SLURM_STEP_NODELIST='gpu[01-02]',
  ).items():
    monkeypatch.setenv(var, value)
  assert distributed.detect_cluster() == distributed.Cluster('SLURM', 8, 'SLURM_NTASKS=8')


def test_flags_that_contradict_the_launcher_are_rejected(monkeypatch):
  for var, value in dict(
    SLURM_JOB_ID='7',
    SLURM_NTASKS='4',
    SLURM_PROCID='0',
    SLURM_LOCALID='0',
    SLURM_STEP_NODELIST='n1',
  ).items():
    monkeypatch.setenv(var, value)
  with pytest.raises(ValueError, match=r'--num_processes=2 contradicts the SLURM environment'):
    distributed.initialize('h:1', 2, 0)
  with pytest.raises(ValueError, match=r'--num_processes=8 contradicts the SLURM'):
    distributed.initialize('', 8, -1)
  for var in ('SLURM_JOB_ID', 'SLURM_NTASKS'):
    monkeypatch.delenv(var)
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'a,b,c,d')
  with pytest.raises(ValueError, match=r'contradicts the Cloud TPU environment \(4 host'):
    distributed.initialize('', 2, -1)


def test_slurm_job_started_without_srun_is_explained(monkeypatch):
  monkeypatch.setenv('SLURM_JOB_ID', '7')
  monkeypatch.setenv('SLURM_NTASKS', '4')
  with pytest.raises(RuntimeError, match=r'start each process with srun'):
    distributed.initialize()


def test_local_workdir_access(tmp_path):
  distributed.check_workdir_access(str(tmp_path))
  distributed.check_workdir_access(str(tmp_path / 'not' / 'yet' / 'there'))
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(ValueError, match='exists and is not a directory'):
    distributed.check_workdir_access(str(blocker / 'run'))
  with pytest.raises(ValueError, match='only local paths and gs://'):
    distributed.check_workdir_access('s3://bucket/run')


READ_ONLY_CHILD = """
import sys
from train import distributed
for workdir in sys.argv[1:]:
  try:
    distributed.check_workdir_access(workdir)
  except ValueError as e:
    print('ERROR', e)
  else:
    print('OK', workdir)
"""


def test_read_only_workdir_is_rejected(tmp_path):
  """A workdir on a read-only mount is a one-line error, for root too (CI runs as root).

  chmod does not stop root, so the folder is bind-mounted read-only in a private mount
  namespace (`unshare --user --map-root-user --mount`: no privilege needed, nothing changes
  outside the child); the check runs there, on the workdir itself and on a new one inside it.
  """
  ro = tmp_path / 'ro'
  ro.mkdir()
  (ro / 'keep').write_text('x')
  script = (
    f'mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && '
    f'exec "$0" -c "$1" {ro} {ro}/run {tmp_path}/free'
  )
  proc = subprocess.run(
    [
      'unshare',
      '--user',
      '--map-root-user',
      '--mount',
      'sh',
      '-c',
      script,
      sys.executable,
      READ_ONLY_CHILD,
    ],
    cwd=REPO,
    env=child_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert len(lines) == 3, proc.stdout
  for line, workdir in zip(lines[:2], (ro, ro / 'run'), strict=True):
    assert line.startswith(f"ERROR --workdir='{workdir}': {ro} is not writable from here"), line
    assert 'Read-only file system' in line
  assert lines[2] == f'OK {tmp_path}/free'  # the same check in the same namespace, writable
  assert sorted(os.listdir(ro)) == ['keep'] and (ro / 'keep').read_text() == 'x'


def test_workdir_is_checked_by_writing_to_it(tmp_path):
  # Even root cannot create a file in /proc: the probe write fails, in one line.
  with pytest.raises(ValueError, match=r"--workdir='/proc/run': /proc is not writable") as e:
    distributed.check_workdir_access('/proc/run')
  assert '\n' not in str(e.value)
  # A writable place: the probe leaves nothing behind, and no empty workdir either.
  distributed.check_workdir_access(str(tmp_path / 'new' / 'run'))
  distributed.check_workdir_access(str(tmp_path))
  assert os.listdir(tmp_path) == []
  with pytest.raises(ValueError, match='has no bucket name'):
    distributed.check_workdir_access('gs:///x')


def test_tpu_chip_group_is_a_single_process(monkeypatch):
  monkeypatch.setattr(distributed, '_on_tpu_vm', lambda: True)
  assert distributed.detect_cluster().kind == 'Cloud TPU'  # JAX reads the slice's metadata
  monkeypatch.setenv('TPU_PROCESS_BOUNDS', '1,1,1')  # launch.sweep --devices_per_run
  assert distributed.detect_cluster() is None


def test_initialize_after_jax_started_is_a_clear_error():
  import jax

  jax.devices()  # the backend is up: too late for a multi-process start
  with pytest.raises(RuntimeError, match=r'^jax.distributed.initialize failed: .*must be called '):
    distributed.initialize(f'127.0.0.1:{free_port()}', 2, 0, 5)
  assert not jax.distributed.is_initialized()
