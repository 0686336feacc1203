"""Multi-process start-up: JAX's distributed runtime, and a check that the workdir is writable.

`initialize()` is the one call the trainer makes before it touches any device:

- explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`): validated, then
  handed to `jax.distributed.initialize`;
- otherwise, under a launcher that starts several processes (SLURM with several tasks, Open
  MPI, a Cloud TPU VM), `jax.distributed.initialize()` with no arguments: JAX's own cluster
  detection finds the coordinator, the process count and this process's rank;
- a single process does nothing.

Only the launcher's environment variables are read here, to know whether there is anything to
start and to catch the common mistakes in one line (a SLURM batch script that forgot `srun`,
flags that contradict the launcher); the detection itself is JAX's.

Why the extra care: in jaxlib 0.10.2 a process that cannot reach the coordinator, or a process 0
whose peers never arrive, is killed by a C++ CHECK (SIGABRT, a stack trace, no Python exception)
some seconds *after* `initialization_timeout`, and a process 0 whose port is taken segfaults.
So before calling JAX we probe the coordinator port (process 0: can we bind it; others: can we
connect to it, retrying until the deadline) and raise a one-line RuntimeError; while JAX waits
for the other processes, a watchdog prints one line and exits with status 1 at the deadline.
"""

import errno
import glob
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

import jax

# Exit status of a process the watchdog ends (jax's own failure would be SIGABRT, 134).
WATCHDOG_EXIT_CODE = 1
# jax aborts the process a few seconds after its initialization_timeout; the watchdog must be
# first so that the user sees our message, not a C++ stack trace.
_JAX_TIMEOUT_GRACE_S = 30


@dataclass(frozen=True)
class Cluster:
  """A launcher environment that runs several processes of one job."""

  kind: str  # 'SLURM' | 'Open MPI' | 'Cloud TPU'
  num_processes: int
  detail: str  # where the count came from, for error messages.


def _int_env(name: str) -> int | None:
  value = os.environ.get(name, '').strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError as e:
    raise ValueError(f'environment variable {name}={value!r} is not an integer') from e


def _tpu_host_list() -> list[str]:
  hosts = os.environ.get('TPU_PROCESS_ADDRESSES') or os.environ.get('TPU_WORKER_HOSTNAMES') or ''
  return [h for h in hosts.split(',') if h.strip()]


def _on_tpu_vm() -> bool:
  """True on a machine with TPU chips (a Cloud TPU VM): their device files, nothing else."""
  return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def detect_cluster() -> Cluster | None:
  """The multi-process launcher this process runs under, or None for a single process.

  Only environment variables and /dev are read: nothing here initializes a JAX backend or
  touches the network.
  """
  ntasks = _int_env('SLURM_NTASKS')
  if os.environ.get('SLURM_JOB_ID') and ntasks is not None and ntasks > 1:
    # JAX's SLURM detection needs the step variables that only `srun` sets.
    missing = [
      v for v in ('SLURM_PROCID', 'SLURM_LOCALID', 'SLURM_STEP_NODELIST') if v not in os.environ
    ]
    if missing:
      raise RuntimeError(
        f'SLURM job with SLURM_NTASKS={ntasks} but {", ".join(missing)} unset: start each '
        'process with srun (srun python -m launch.train ...), not directly in the batch script'
      )
    return Cluster('SLURM', ntasks, f'SLURM_NTASKS={ntasks}')
  world = _int_env('OMPI_COMM_WORLD_SIZE')
  if world is not None and world > 1:
    return Cluster('Open MPI', world, f'OMPI_COMM_WORLD_SIZE={world}')
  hosts = _tpu_host_list()
  slices = _int_env('MEGASCALE_NUM_SLICES') or 1
  if len(hosts) > 1 or slices > 1 or os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
    n = max(len(hosts), 1) * slices
    return Cluster('Cloud TPU', n, f'{max(len(hosts), 1)} host(s) x {slices} slice(s)')
  if os.environ.get('TPU_PROCESS_BOUNDS', '').replace(' ', '') == '1,1,1':
    return None  # told to be a single process (launch.sweep --devices_per_run: a chip group)
  if _on_tpu_vm():
    # How many hosts the slice has is in the instance metadata, which JAX reads; one host
    # or many, jax.distributed.initialize() is right there.
    return Cluster('Cloud TPU', 0, 'the TPU VM metadata')
  return None


def parse_address(address: str) -> tuple[str, int]:
  """'host:port' or '[v6addr]:port' -> (host, port); ValueError naming the fix otherwise."""
  hint = f'--coordinator_address must be HOST:PORT (e.g. 10.0.0.1:1234), got {address!r}'
  host, sep, port_s = address.rpartition(':')
  if not sep or not host or not port_s.isdigit():
    raise ValueError(hint)
  if host.startswith('[') and host.endswith(']'):
    host = host[1:-1]
  port = int(port_s)
  if not host or not 0 < port < 65536:
    raise ValueError(hint)
  return host, port


def _check_port_free(port: int) -> None:
  """Process 0 binds the coordinator port; a taken port would crash jaxlib (segfault)."""
  s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  try:
    # Same as the gRPC server: TIME_WAIT leftovers do not count as taken, listeners do.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('', port))
  except OSError as e:
    if e.errno == errno.EADDRINUSE:
      raise RuntimeError(
        f'coordinator port {port} is already in use on this host (another run?); '
        'choose a free port in --coordinator_address'
      ) from None
    raise RuntimeError(f'cannot bind coordinator port {port} on this host: {e}') from None
  finally:
    s.close()


def _wait_for_coordinator(host: str, port: int, deadline: float, timeout_s: float) -> None:
  """Retries a TCP connect until the deadline; one-line RuntimeError if it never succeeds."""
  while (left := deadline - time.monotonic()) > 0:
    try:
      with socket.create_connection((host, port), timeout=min(1.0, left)):
        return
    except OSError:  # refused, unreachable, or the name does not resolve yet: retry.
      time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
  raise RuntimeError(
    f'could not reach coordinator {host}:{port} within {timeout_s:g}s '
    '(is process 0 running? is the port open?)'
  )


def _watchdog(seconds: float, message: str) -> threading.Timer:
  """Ends the process with one clear line if JAX has not finished joining by then."""

  def fire() -> None:
    sys.stderr.write(f'error: {message}\n')
    sys.stderr.flush()
    os._exit(WATCHDOG_EXIT_CODE)  # the main thread is stuck in C++; nothing else can stop it.

  timer = threading.Timer(max(0.0, seconds), fire)
  timer.daemon = True
  timer.start()
  return timer


def _jax_initialize(watchdog_s: float, watchdog_msg: str, **kwargs) -> None:
  timer = _watchdog(watchdog_s, watchdog_msg)
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise RuntimeError(f'jax.distributed.initialize failed: {first}') from e
  finally:
    timer.cancel()


def initialize(
  coordinator_address: str = '',
  num_processes: int = 0,
  process_id: int = -1,
  timeout_s: int = 300,
) -> None:
  """Starts JAX's distributed runtime when this is one process of several; see module doc.

  Safe to call more than once: later calls check consistency and return.
  """
  if timeout_s <= 0:
    raise ValueError(f'--distributed_timeout_s must be positive, got {timeout_s}')
  if jax.distributed.is_initialized():
    if num_processes > 0 and num_processes != jax.process_count():
      raise ValueError(
        f'already initialized with {jax.process_count()} processes, asked for {num_processes}'
      )
    return
  if num_processes < 0:
    raise ValueError(f'--num_processes must be >= 1 (or 0: auto-detect), got {num_processes}')
  if num_processes > 0 and not 0 <= process_id < num_processes and process_id != -1:
    raise ValueError(
      f'--process_id={process_id} is out of range for --num_processes={num_processes} '
      f'(valid: 0..{num_processes - 1})'
    )

  cluster = detect_cluster()
  known = cluster is not None and cluster.num_processes > 0
  if known and num_processes > 0 and num_processes != cluster.num_processes:
    raise ValueError(
      f'--num_processes={num_processes} contradicts the {cluster.kind} environment '
      f'({cluster.detail}); drop the flag or fix the launch'
    )

  if coordinator_address:
    if num_processes < 1:
      raise ValueError('--coordinator_address needs --num_processes >= 1 and --process_id')
    if process_id < 0:
      raise ValueError(
        f'--process_id is required with --coordinator_address (0..{num_processes - 1})'
      )
    host, port = parse_address(coordinator_address)
    deadline = time.monotonic() + timeout_s
    if process_id == 0:
      _check_port_free(port)
    else:
      _wait_for_coordinator(host, port, deadline, timeout_s)
    _jax_initialize(
      deadline - time.monotonic(),
      f'process {process_id}: not all {num_processes} processes joined coordinator '
      f'{host}:{port} within {timeout_s}s (did every process start, with the same '
      '--num_processes and --coordinator_address?)',
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=timeout_s + _JAX_TIMEOUT_GRACE_S,
    )
    return

  if process_id >= 0 and cluster is None and num_processes == 0:
    raise ValueError('--process_id needs --num_processes and --coordinator_address')
  if cluster is None:
    if num_processes > 1:
      raise ValueError(
        f'--num_processes={num_processes} needs --coordinator_address and --process_id '
        '(no SLURM / MPI / Cloud TPU environment was detected)'
      )
    return  # One process: nothing to start.
  # A known launcher: JAX's own detection picks the coordinator, count and rank.
  count = f'{cluster.num_processes} ' if cluster.num_processes else ''
  _jax_initialize(
    timeout_s,
    f'the {count}processes of this {cluster.kind} job did not all join within {timeout_s}s '
    '(did one of them fail to start?)',
    initialization_timeout=timeout_s + _JAX_TIMEOUT_GRACE_S,
  )


def configure_backend(config) -> None:
  """Settings that must be in place before JAX starts its backend (call before any device use)."""
  if config.train.deterministic:
    flag = '--xla_gpu_deterministic_ops=true'
    if flag not in os.environ.get('XLA_FLAGS', ''):
      os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {flag}'.strip()


def is_primary() -> bool:
  """True on process 0: the one that writes metrics, summaries and logs."""
  return jax.process_index() == 0


def check_workdir_access(workdir: str) -> None:
  """Fails fast (one line) unless a file can be written where `workdir` will be.

  A probe file is written and removed (through train/files.py, so gs:// is tried for real,
  credentials and bucket permissions included); locally in the nearest existing folder, so a
  run that fails its next check leaves no empty workdir behind.
  """
  from etils import epath

  from core import files

  if not workdir:
    raise ValueError('--workdir is empty')
  if files.is_remote(workdir):
    if not workdir.startswith('gs://'):
      raise ValueError(f'--workdir={workdir!r}: only local paths and gs:// are supported')
    if not workdir[len('gs://') :].split('/', 1)[0]:
      raise ValueError(f'--workdir={workdir!r} has no bucket name (gs://BUCKET/path)')
    where = workdir
  else:
    where = os.path.abspath(workdir)
    while not os.path.exists(where) and os.path.dirname(where) != where:
      where = os.path.dirname(where)
    if not os.path.isdir(where):
      raise ValueError(f'--workdir={workdir!r}: {where} exists and is not a directory')
  probe = files.join(where, f'.write_probe.{socket.gethostname()}.{os.getpid()}')
  try:
    files.write_text(probe, 'ok')
    epath.Path(probe).unlink()
  except Exception as e:  # noqa: BLE001 - whatever the filesystem or the bucket says: one line.
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise ValueError(
      f'--workdir={workdir!r}: {where} is not writable from here ({first})'
    ) from None
