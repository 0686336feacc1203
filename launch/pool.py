"""The sweep runner's process pool: each run a `launch.train` process, resumable, optionally
on its own subset of the host's devices.

A run with a summary.json is skipped; one whose workdir exists without it is started again (the
trainer resumes it from its newest checkpoint); a failing run is recorded in DIR/status.json and
the others go on. Neither happens to a run whose recorded config.json differs from what the
sweep now asks for (`stale_runs`): launch/sweep.py refuses it, or sets it aside into
DIR/stale/ and runs it again from scratch (--rerun_changed).

Device subsets (`devices_per_run=K`): the host's devices are cut into disjoint groups of K and
each running trainer sees only its group: CUDA_VISIBLE_DEVICES on GPUs, the libtpu runtime's
visible-chip variables on a TPU VM, K fake devices on CPU (`DeviceGroup.env`, docs/CLUSTER.md).
"""

import contextlib
import dataclasses
import glob
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core import files, rundir
from experiments import sweep_spec
from experiments.sweep_spec import REPO_ROOT, Run
from launch.shell import TRAIN_CMD

DONE, SKIPPED, FAILED, RUNNING, PENDING = 'done', 'skipped', 'failed', 'running', 'pending'
PLATFORMS = ('gpu', 'tpu', 'cpu')
# A chip group's shape for TPU_CHIPS_PER_PROCESS_BOUNDS (hosts are 2x2 or 2x4 chips).
_TPU_BOUNDS = {1: '1,1,1', 2: '1,2,1', 4: '2,2,1', 8: '2,4,1'}
_TPU_BASE_PORT = 8476


@dataclasses.dataclass(frozen=True)
class DeviceGroup:
  platform: str
  ids: tuple[int, ...]
  slot: int  # which group (0, 1, ...): picks the TPU runtime's port

  @property
  def label(self) -> str:
    return f'{self.platform}:{",".join(map(str, self.ids))}'

  def env(self, base: Mapping[str, str]) -> dict[str, str]:
    """`base` with the variables that restrict a trainer to this group."""
    env = dict(base)
    ids = ','.join(map(str, self.ids))
    if self.platform == 'gpu':
      env['CUDA_VISIBLE_DEVICES'] = ids
    elif self.platform == 'tpu':
      port = str(_TPU_BASE_PORT + self.slot)
      env.update(
        TPU_VISIBLE_CHIPS=ids,
        TPU_VISIBLE_DEVICES=ids,
        TPU_CHIPS_PER_PROCESS_BOUNDS=_TPU_BOUNDS[len(self.ids)],
        TPU_PROCESS_BOUNDS='1,1,1',
        TPU_PROCESS_ADDRESSES=f'localhost:{port}',
        TPU_PROCESS_PORT=port,
        CLOUD_TPU_TASK_ID='0',
      )
    else:
      flag = f'--xla_force_host_platform_device_count={len(self.ids)}'
      kept = re.sub(r'--xla_force_host_platform_device_count=\S*', '', env.get('XLA_FLAGS', ''))
      env['XLA_FLAGS'] = f'{kept.strip()} {flag}'.strip()
    return env


def host_devices(platform: str, env: Mapping[str, str]) -> list[int]:
  """The device ids this host offers on `platform`, found without starting a runtime."""
  if platform == 'gpu':
    visible = env.get('CUDA_VISIBLE_DEVICES', '').strip()
    if visible:
      return [int(x) for x in visible.split(',') if x.strip()]
    if shutil.which('nvidia-smi'):
      out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, check=False)
      return list(range(sum(ln.startswith('GPU ') for ln in out.stdout.splitlines())))
    return []
  if platform == 'tpu':
    return list(range(len(glob.glob('/dev/accel*')) or len(glob.glob('/dev/vfio/[0-9]*'))))
  m = re.search(r'--xla_force_host_platform_device_count=(\d+)', env.get('XLA_FLAGS', ''))
  return list(range(int(m.group(1)) if m else os.cpu_count() or 1))


def detect_platform() -> str:
  if glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'):
    return 'tpu'
  return 'gpu' if shutil.which('nvidia-smi') else 'cpu'


def device_groups(
  devices_per_run: int, platform: str = '', devices: Sequence[int] = (), env=None
) -> list[DeviceGroup]:
  """Disjoint groups of `devices_per_run` of the host's devices (ValueError if none fit)."""
  platform = platform or detect_platform()
  if platform not in PLATFORMS:
    raise ValueError(f'--platform={platform!r}: one of {PLATFORMS}')
  if devices_per_run < 1:
    raise ValueError(f'--devices_per_run={devices_per_run} must be >= 1')
  if platform == 'tpu' and devices_per_run not in _TPU_BOUNDS:
    raise ValueError(f'--devices_per_run={devices_per_run} on TPU: one of {sorted(_TPU_BOUNDS)}')
  ids = list(devices) or host_devices(platform, os.environ if env is None else env)
  if len(ids) < devices_per_run:
    raise ValueError(
      f'--devices_per_run={devices_per_run} but this host has {len(ids)} {platform} devices '
      f'({ids}); pass --devices=... or a smaller --devices_per_run'
    )
  n = len(ids) // devices_per_run
  return [
    DeviceGroup(platform, tuple(ids[i * devices_per_run : (i + 1) * devices_per_run]), i)
    for i in range(n)
  ]


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
  """The environment of each trainer: unbuffered output (logs appear as they are written).

  No thread limits: with two runs on two cores, XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
  measured no faster (docs/SWEEPS.md); these models' steps use about one core each anyway.
  """
  env = dict(os.environ if base is None else base)
  env['PYTHONUNBUFFERED'] = '1'
  return env


def _last_line(path: str) -> str:
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, os.path.getsize(path) - 16384))
      lines = [ln.strip() for ln in f.read().decode(errors='replace').splitlines()]
  except OSError:
    return ''
  lines = [ln for ln in lines if ln]
  return lines[-1][:400] if lines else ''


@contextlib.contextmanager
def _locked(path: str):
  """An exclusive lock on a local file (several sweep processes may share one workdir)."""
  if files.is_remote(path):
    yield
    return
  import fcntl

  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


_RANK_VARS = ('SWEEP_WORKER_ID', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK')


def is_primary_host(env: Mapping[str, str] | None = None) -> bool:
  """False on the other hosts of a job that runs this sweep on every host (launch.tpu on a
  multi-host slice): sweep.json and status.json then have one writer, host 0."""
  env = os.environ if env is None else env
  rank = next((env[v].strip() for v in _RANK_VARS if env.get(v, '').strip()), '0')
  return rank == '0'


class StatusFile:
  """DIR/status.json: {'updated': time, 'runs': {name: {...}}}, merged with what is there.

  Merging (under a lock) keeps the entries of other runner processes on the same workdir.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = rundir.SweepDir(workdir).status_path
    self.enabled = enabled

  def update(self, entries: Mapping[str, dict]) -> None:
    if not self.enabled:
      return
    with _locked(self.path + '.lock'):
      current = {}
      if files.exists(self.path):
        try:
          current = json.loads(files.read_text(self.path))
        except (OSError, ValueError):
          current = {}
      runs = current.get('runs', {})
      runs.update({k: dict(v) for k, v in entries.items()})
      files.write_text(self.path, json.dumps({'updated': time.time(), 'runs': runs}, indent=2))


def _flat(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_differences(run: Run, recorded: Mapping, run_dir: str, base=None) -> dict[str, tuple]:
  """{dotted key: (recorded value, value the run now asks for)} where they differ.

  The run's config is its base config file with the overrides it gets in `run_dir` applied, as
  launch.train builds it (compared through JSON, as config.json holds it). A key on one side
  only (a key added to or removed from the config files since the run) counts only if the
  run's overrides set it.
  """
  base = sweep_spec.load_config(run.config) if base is None else base
  overrides = run.train_overrides(run_dir)
  wanted, _ = sweep_spec.apply_overrides(base, overrides, f'run {run.name!r}')
  want = _flat(json.loads(json.dumps(wanted.to_dict())))
  have = _flat(recorded)
  missing = object()
  out = {}
  for key in sorted(set(want) | set(have)):
    a, b = have.get(key, missing), want.get(key, missing)
    if a == b or ((a is missing or b is missing) and key not in overrides):
      continue
    out[key] = (None if a is missing else a, None if b is missing else b)
  return out


def stale_runs(runs: Sequence[Run], workdir: str) -> dict[str, dict[str, tuple]]:
  """{run name: its differences} for the runs whose folder records another config.

  A folder without config.json has recorded nothing (the trainer writes it before its first
  step) and is not stale.
  """
  sweep = rundir.SweepDir(workdir)
  bases: dict[str, Any] = {}
  out = {}
  for run in runs:
    run_dir = sweep.run(run.name)
    try:
      recorded = run_dir.read_config()
    except ValueError:
      recorded = {}
    if recorded is None:
      continue
    if run.config not in bases:
      bases[run.config] = sweep_spec.load_config(run.config)
    diff = config_differences(run, recorded, run_dir.path, bases[run.config])
    if diff:
      out[run.name] = diff
  return out


def describe_differences(diff: Mapping[str, tuple], most: int = 4) -> str:
  """'train.steps 50 -> 300, train.lr ...' (the recorded value first)."""
  items = [f'{k} {a!r} -> {b!r}' for k, (a, b) in diff.items()]
  more = f' and {len(items) - most} more' if len(items) > most else ''
  return ', '.join(items[:most]) + more


def set_aside(workdir: str, name: str) -> str:
  """Moves a run's folder to DIR/stale/<name>-<time>/ (kept, out of the sweep); returns it."""
  sweep = rundir.SweepDir(workdir)
  if files.is_remote(workdir):
    raise ValueError(
      f'cannot set run {name!r} aside on {workdir}: move {sweep.run(name).path} yourself'
    )
  dest = sweep.stale_path(name, time.strftime('%Y%m%d-%H%M%S'))
  while os.path.exists(dest):
    dest += '_'
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  try:
    os.rename(sweep.run(name).path, dest)
  except FileNotFoundError:  # another runner on this workdir moved it first
    return '(already moved)'
  return dest


def _entry(status: str) -> dict:
  return {'status': status, 'returncode': None, 'last_line': '', 'wall_time_s': None}


@dataclasses.dataclass
class _Running:
  proc: subprocess.Popen
  log: Any
  t0: float
  log_path: str
  group: DeviceGroup | None


def run_sweep(
  runs: Sequence[Run],
  workdir: str,
  parallel: int = 1,
  train_cmd: Sequence[str] = TRAIN_CMD,
  env: Mapping[str, str] | None = None,
  echo: Callable[[str], None] = print,
  poll_s: float = 0.2,
  groups: Sequence[DeviceGroup] = (),
) -> dict[str, dict]:
  """Runs what is not finished, up to `parallel` at a time; returns {name: status entry}.

  With device `groups`, at most one run per group at a time (and at most `parallel`), each
  restricted to its group. Entry: {'status': done|skipped|failed|pending, 'returncode',
  'last_line', 'wall_time_s', 'log', 'devices'}. Finished runs are skipped; the rest start in
  sweep order.
  """
  if parallel < 1:
    raise ValueError(f'--parallel={parallel} must be >= 1')
  remote = files.is_remote(workdir)
  if not remote:
    workdir = os.path.abspath(workdir)
  files.makedirs(workdir)
  sweep = rundir.SweepDir(workdir)
  status_file = StatusFile(workdir, enabled=is_primary_host())
  env = dict(child_env() if env is None else env)
  status: dict[str, dict] = {}
  todo = []
  for run in runs:
    done = sweep.run(run.name).done()
    status[run.name] = _entry(SKIPPED if done else PENDING)
    if not done:
      todo.append(run)
  status_file.update(status)
  total, finished = len(todo), 0
  walls: list[float] = []  # wall times of the runs that ended in this invocation
  if len(runs) > total:
    echo(f'{len(runs) - total} of {len(runs)} runs already finished (skipped)')
  running: dict[str, _Running] = {}
  free = list(groups)

  def start(run: Run) -> None:
    rdir = sweep.run(run.name)
    files.makedirs(rdir.path)
    log_path = rdir.log_path if not remote else _local_log(workdir, run.name)
    argv = run.argv(rdir.path, train_cmd)
    group = free.pop(0) if groups else None
    log = open(log_path, 'ab')
    where = f' [{group.label}]' if group else ''
    log.write(f'# {time.strftime("%Y-%m-%d %H:%M:%S")}{where} {shlex.join(argv)}\n'.encode())
    log.flush()
    st = status[run.name]
    try:
      proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        env=group.env(env) if group else env,
      )
    except OSError as e:  # e.g. the trainer command does not exist: this run fails, not all
      log.write(f'cannot start the trainer: {e}\n'.encode())
      log.close()
      free.extend([group] if group else [])
      st.update(status=FAILED, last_line=f'cannot start: {e}', log=log_path)
      status_file.update({run.name: st})
      echo(f'FAILED  {run.name}: cannot start: {e}')
      return
    running[run.name] = _Running(proc, log, time.time(), log_path, group)
    st.update(status=RUNNING, log=log_path, started=time.time())
    if group:
      st['devices'] = group.label
    status_file.update({run.name: st})
    echo(f'start   {run.name}{where}')

  def finish(name: str, rc: int) -> None:
    nonlocal finished
    r = running.pop(name)
    r.log.close()
    if r.group:
      free.append(r.group)
      free.sort(key=lambda g: g.slot)
    wall = time.time() - r.t0
    rdir = sweep.run(name)
    if remote:
      files.write_text(rdir.host_log_path(os.uname().nodename), _read(r.log_path))
    done = rc == 0 and rdir.done()
    last = '' if done else (_last_line(r.log_path) or '(empty log)')
    if rc == 0 and not done:
      last = f'exited 0 without writing {rundir.SUMMARY}; last line: {last}'
    status[name].update(
      status=DONE if done else FAILED, returncode=rc, last_line=last, wall_time_s=round(wall, 1)
    )
    status_file.update({name: status[name]})
    finished += 1
    walls.append(wall)
    tail = f'({wall:.0f} s)' if done else f'exit {rc}: {last}'
    eta = eta_text(walls, total - finished, limit)
    echo(f'{"done" if done else "FAILED":7s} {name} [{finished}/{total}] {tail}{eta}')

  queue = list(todo)
  limit = min(parallel, len(groups)) if groups else parallel

  def parent_state(run: Run) -> str:
    """'' (no parent, or it finished), 'wait', or why this branch cannot start."""
    parent = getattr(run, 'parent', '')
    if not parent or sweep.run(parent).done():
      return ''
    if parent in running or any(r.name == parent for r in queue):
      return 'wait'
    return f'its parent run {parent!r} has not finished'

  try:
    while queue or running:
      while len(running) < limit:
        states = [(r, parent_state(r)) for r in queue]
        for r, why in states:  # a branch whose parent failed or is missing fails itself
          if why not in ('', 'wait'):
            queue.remove(r)
            status[r.name].update(status=FAILED, last_line=f'cannot start: {why}')
            status_file.update({r.name: status[r.name]})
            echo(f'FAILED  {r.name}: cannot start: {why}')
        go = next((r for r, why in states if why == ''), None)
        if go is None:
          break
        queue.remove(go)
        start(go)
      for name in list(running):
        rc = running[name].proc.poll()
        if rc is not None:
          finish(name, rc)
      if running:
        time.sleep(poll_s)
  except KeyboardInterrupt:
    # Ctrl-C reached the children too (same process group), SIGTERM only this process: stop
    # them either way, and leave them as interrupted runs that the next invocation resumes.
    for name, r in running.items():
      r.proc.terminate()
      with contextlib.suppress(subprocess.TimeoutExpired):
        r.proc.wait(timeout=30)
      if r.proc.poll() is None:
        r.proc.kill()
      r.log.close()
      status[name].update(status=PENDING, last_line='interrupted')
    status_file.update(status)
    raise
  return status


def eta_text(walls: Sequence[float], remaining: int, parallel: int) -> str:
  """', eta 12 min' from the mean wall time of the runs so far ('' when none remain).

  The mean of the runs so far, times the runs left, over the runs at once: a guess that is
  low when the sweep goes from small runs to large ones.
  """
  if remaining <= 0 or not walls:
    return ''
  s = sum(walls) / len(walls) * math.ceil(remaining / max(1, parallel))
  if s < 90:
    return f', eta {s:.0f} s'
  if s < 5400:
    return f', eta {s / 60:.0f} min'
  return f', eta {s / 3600:.1f} h'


def _local_log(workdir: str, name: str) -> str:
  """Where a run's log is written when the workdir is remote (copied there when it ends): this
  host's temporary folder, named in status.json and in the sweep's table while it runs."""
  tag = re.sub(r'[^A-Za-z0-9._-]', '_', workdir.split('://', 1)[-1].strip('/'))
  path = os.path.join(tempfile.gettempdir(), 'scaling_lm_sweeps', tag, f'{name}.txt')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return path


def _read(path: str) -> str:
  with open(path, errors='replace') as f:
    return f.read()
