"""Multi-process start-up: JAX's distributed runtime, and a check that the workdir is usable.

`initialize()` is the one call the trainer makes before it touches any device:

- explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`): validated, then
  handed to `jax.distributed.initialize`;
- otherwise a cluster launcher is detected from its environment (SLURM with several tasks,
  Open MPI, a Cloud TPU VM slice with several hosts or slices) and JAX's own cluster detection
  fills in the values (`jax.distributed.initialize()` with no arguments);
- a single process does nothing.

Why the extra care: in jaxlib 0.10.2 a process that cannot reach the coordinator, or a process 0
whose peers never arrive, is killed by a C++ CHECK (SIGABRT, a stack trace, no Python exception)
some seconds *after* `initialization_timeout`, and a process 0 whose port is taken segfaults.
So before calling JAX we probe the coordinator port (process 0: can we bind it; others: can we
connect to it, retrying until the deadline) and raise a one-line RuntimeError; while JAX waits
for the other processes, a watchdog prints one line and exits with status 1 at the deadline.
"""

import errno
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import jax
from jax._src import distributed as _jax_distributed

# Exit status of a process the watchdog ends (jax's own failure would be SIGABRT, 134).
WATCHDOG_EXIT_CODE = 1
# jax aborts the process a few seconds after its initialization_timeout; the watchdog must be
# first so that the user sees our message, not a C++ stack trace.
_JAX_TIMEOUT_GRACE_S = 30
_METADATA_HOST = '169.254.169.254'  # the GCE metadata server, by address: no DNS lookup.


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
  """True on a machine with TPU chips (a Cloud TPU VM); reads /sys only, never the network."""
  try:
    from jax._src import hardware_utils  # private, hence guarded: a check, not a dependency.

    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # noqa: BLE001 - any failure means: cannot tell, so no.
    return os.path.exists('/dev/accel0')


def _metadata(key: str, timeout_s: float = 1.0) -> str | None:
  """A GCE metadata attribute, or None if the server does not answer within timeout_s."""
  host = os.environ.get('GCE_METADATA_IP', _METADATA_HOST)
  req = urllib.request.Request(
    f'http://{host}/computeMetadata/v1/instance/attributes/{key}',
    headers={'Metadata-Flavor': 'Google'},
  )
  try:
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - fixed URL.
      return resp.read().decode()
  except (OSError, urllib.error.URLError, ValueError):
    return None


def detect_cluster() -> Cluster | None:
  """The multi-process launcher this process runs under, or None for a single process.

  Only environment variables (and on a TPU VM one metadata query, ≤1 s) are read: nothing here
  initializes a JAX backend.
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
  if _on_tpu_vm():
    # A TPU VM created with `gcloud compute tpus tpu-vm create` lists its workers only in the
    # instance metadata (the same source JAX's GCE TPU detection uses).
    endpoints = _metadata('worker-network-endpoints')
    n = len([e for e in (endpoints or '').split(',') if e.strip()])
    if n > 1:
      return Cluster('Cloud TPU', n, f'{n} workers in worker-network-endpoints metadata')
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
    state = _jax_distributed.global_state  # the only record of the values used.
    if num_processes > 0 and num_processes != state.num_processes:
      raise ValueError(
        f'already initialized with {state.num_processes} processes, asked for {num_processes}'
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
  if cluster is not None and num_processes > 0 and num_processes != cluster.num_processes:
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
  _jax_initialize(
    timeout_s,
    f'the {cluster.num_processes} processes of this {cluster.kind} job did not all join '
    f'within {timeout_s}s (did one of them fail to start?)',
    initialization_timeout=timeout_s + _JAX_TIMEOUT_GRACE_S,
  )


def is_primary() -> bool:
  """True on process 0: the one that writes metrics, summaries and logs."""
  return jax.process_index() == 0


def _on_gce() -> bool:
  """Running on Google Compute Engine (TPU VMs included): DMI first, then a ≤1 s probe."""
  try:
    with open('/sys/class/dmi/id/product_name') as f:
      if 'Google' in f.read():
        return True
  except OSError:
    pass
  host = os.environ.get('GCE_METADATA_IP', _METADATA_HOST)
  req = urllib.request.Request(f'http://{host}/', headers={'Metadata-Flavor': 'Google'})
  try:
    with urllib.request.urlopen(req, timeout=1.0) as resp:  # noqa: S310 - fixed URL.
      return resp.headers.get('Metadata-Flavor') == 'Google'
  except (OSError, urllib.error.URLError, ValueError):
    return False


def _adc_path() -> str:
  config_dir = os.environ.get('CLOUDSDK_CONFIG') or os.path.join(
    os.path.expanduser('~'), '.config', 'gcloud'
  )
  return os.path.join(config_dir, 'application_default_credentials.json')


def check_workdir_access(workdir: str) -> None:
  """Fails fast (one line, how to fix) if `workdir` cannot be written from here.

  gs://: Google credentials must be discoverable (GOOGLE_APPLICATION_CREDENTIALS, the gcloud ADC
  file, or a GCE/TPU VM's service account). Local: the nearest existing ancestor must be a
  writable directory.
  """
  if not workdir:
    raise ValueError('--workdir is empty')
  if workdir.startswith('gs://'):
    bucket = workdir[len('gs://') :].split('/', 1)[0]
    if not bucket:
      raise ValueError(f'--workdir={workdir!r} has no bucket name (gs://BUCKET/path)')
    creds = os.environ.get('GOOGLE_APPLICATION_CREDENTIALS')
    if os.environ.get('STORAGE_EMULATOR_HOST'):  # a local GCS emulator takes no credentials
      return
    if creds:
      if not os.path.isfile(creds):
        raise ValueError(
          f'GOOGLE_APPLICATION_CREDENTIALS={creds} does not exist: point it at a service '
          'account key file, or unset it and run `gcloud auth application-default login`'
        )
      return
    if os.path.isfile(_adc_path()) or _on_gce():
      return
    raise ValueError(
      f'no Google Cloud credentials found for {workdir}: run `gcloud auth application-default '
      'login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run on '
      'a GCE/TPU VM with a service account'
    )
  if '://' in workdir:
    raise ValueError(f'--workdir={workdir!r}: only local paths and gs:// are supported')
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  if not os.path.isdir(path):
    raise ValueError(f'--workdir={workdir!r}: {path} exists and is not a directory')
  if not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f'--workdir={workdir!r}: {path} is not writable by this user')
