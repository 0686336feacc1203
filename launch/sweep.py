r"""Run a sweep: each run of a sweep file as its own `launch.train` process, resumable.

  python -m launch.sweep --sweep=experiments/sweeps/demo.py --workdir=runs/demo --parallel=2
  python -m launch.sweep --sweep=... --workdir=... --dry_run          # print runs and commands
  python -m launch.sweep --sweep=... --workdir=... --only=L2-d64-h4 --override=train.steps=50

A sweep file defines BASE_CONFIG (a config file) and get_sweep() -> [(run name, {dotted key:
value})]; docs/SWEEPS.md. Every run becomes `python -m launch.train --config=BASE_CONFIG
--workdir=DIR/runs/<name> --config.<key>=<value> ...` (an argument list: no shell), its output
in DIR/runs/<name>/log.txt. Rerunning the same command is how a sweep resumes: a run with a
summary.json is skipped, one whose workdir exists without it is started again (the trainer
resumes it from its newest checkpoint), a failing run is recorded in DIR/status.json and the
others go on. The exit status is 1 if any run failed.

Every key is checked against the base config, with its type, before anything starts: a typo
in a sweep file is a one-line error, not a failed run an hour later.
"""

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from absl import app, flags

from train import files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CMD = (sys.executable, '-m', 'launch.train')
NAME_RE = re.compile(r'[A-Za-z0-9._-]+')
_KEY_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*')

DONE, SKIPPED, FAILED, RUNNING, PENDING = 'done', 'skipped', 'failed', 'running', 'pending'


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its name, base config file and overrides (dotted key -> value)."""

  name: str
  config: str
  overrides: dict

  def argv(self, run_dir: str, train_cmd: Sequence[str] = TRAIN_CMD) -> list[str]:
    """The trainer's command line for this run in `run_dir`."""
    flags_ = [f'--config.{k}={format_value(v)}' for k, v in self.overrides.items()]
    return [*train_cmd, f'--config={self.config}', f'--workdir={run_dir}', *flags_]


def format_value(value: Any) -> str:
  """A value as config_flags parses it back: true/false, ints, floats that keep their dot."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, float):
    return repr(value)  # 0.001, 1e-05, 100000000000000.0: float() reads each back exactly
  return str(value)


# -- Loading and checking ---------------------------------------------------------------------


def _resolve(path: str, what: str, fix: str) -> str:
  """A file relative to the working directory, else to the repository root."""
  for candidate in (path, os.path.join(REPO_ROOT, path)):
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise FileNotFoundError(f'{what} {path!r} not found (nor under {REPO_ROOT}); {fix}')


def _load_module(path: str, prefix: str):
  name = f'_{prefix}_' + re.sub(r'\W', '_', os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - any error in a user's file: one line naming it.
    raise ValueError(f'{path}: {type(e).__name__}: {e}') from e
  return module


def load_config(spec: str):
  """The ConfigDict of a config file spec 'path.py' or 'path.py:arg' (as --config takes)."""
  path, _, arg = spec.partition(':')
  fix = 'BASE_CONFIG names a file under experiments/configs/'
  module = _load_module(_resolve(path, 'config file', fix), 'config')
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {path!r} defines no get_config()')
  try:
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001
    raise ValueError(f'{spec}: get_config failed: {type(e).__name__}: {e}') from e


def _a(value: Any) -> str:
  """'an int', 'a float', ... (for messages)."""
  name = type(value).__name__
  return f'an {name}' if name[0] in 'aeiou' else f'a {name}'


def _parse_as(current: Any, text: str) -> Any:
  """A command-line string as the type of the field it overrides."""
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ('true', '1'):
      return True
    if low in ('false', '0'):
      return False
    raise ValueError(f'{text!r} is not true/false')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  return text


def check_override(config, key: str, value: Any, where: str) -> Any:
  """`value` as the base config's field `key` takes it; ValueError if no such field or type."""
  from ml_collections import ConfigDict

  node = config
  parts = key.split('.')
  for i, part in enumerate(parts):
    if not isinstance(node, ConfigDict) or part not in node:
      known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
      prefix = '.'.join(parts[:i]) or 'the config'
      raise ValueError(
        f'{where}: unknown config key {key!r} ({prefix} has {known}); fix the key, or add it '
        'to the base config'
      )
    node = node[part] if i < len(parts) - 1 else node
  current = node[parts[-1]]
  if isinstance(current, ConfigDict):
    raise ValueError(f'{where}: {key!r} is a group of keys; override its fields one by one')
  if isinstance(value, str) and current is not None and not isinstance(current, str):
    try:
      return _parse_as(current, value)
    except ValueError:
      raise ValueError(
        f'{where}: {key}={value!r} is not {_a(current)} like the base config value {current!r}'
      ) from None
  ok = (
    current is None
    or (isinstance(current, bool) and isinstance(value, bool))
    or (type(current) is int and type(value) is int)
    or (type(current) is float and type(value) in (int, float))
    or (isinstance(current, str) and isinstance(value, str))
    or not isinstance(current, bool | int | float | str)
  )
  if not ok:
    raise ValueError(
      f'{where}: {key}={value!r} is {_a(value)}, but the base config holds {_a(current)} '
      f'({current!r}) there'
    )
  return float(value) if type(current) is float else value


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
  """['train.steps=50', ...] -> {'train.steps': '50'}; values are typed against the config later."""
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    key = key.strip().removeprefix('config.')
    if not sep or not _KEY_RE.fullmatch(key):
      raise ValueError(
        f'--override={item!r} must be KEY=VALUE with a dotted config key (e.g. train.steps=50)'
      )
    out[key] = value
  return out


def expand(sweep_file: str, overrides: Mapping[str, Any] | None = None) -> list[Run]:
  """The runs of a sweep file, `overrides` applied to each, every key checked.

  Raises FileNotFoundError / ValueError (one line) for a missing file, a bad name (only
  [A-Za-z0-9._-]), duplicate names, or a key or value type the base config does not have.
  """
  fix = 'pass --sweep=experiments/sweeps/<name>.py'
  module = _load_module(_resolve(sweep_file, 'sweep file', fix), 'sweep')
  base = getattr(module, 'BASE_CONFIG', None)
  if not isinstance(base, str) or not base:
    raise ValueError(f'{sweep_file} defines no BASE_CONFIG (the config file its runs start from)')
  if not callable(getattr(module, 'get_sweep', None)):
    raise ValueError(f'{sweep_file} defines no get_sweep() -> [(run name, overrides)]')
  entries = list(module.get_sweep())
  if not entries:
    raise ValueError(f'{sweep_file}: get_sweep() returned no runs')
  config = load_config(base)
  runs, seen = [], set()
  for entry in entries:
    if isinstance(entry, Mapping):
      name, run_overrides = entry.get('name'), entry.get('overrides', {})
    elif isinstance(entry, tuple | list) and len(entry) == 2:
      name, run_overrides = entry
    else:
      raise ValueError(f'{sweep_file}: a run must be (name, overrides), got {entry!r}')
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in ('.', '..'):
      raise ValueError(
        f'{sweep_file}: run name {name!r} is not path-safe; use only letters, digits, . _ -'
      )
    if name in seen:
      raise ValueError(f'{sweep_file}: duplicate run name {name!r}; run names must be unique')
    seen.add(name)
    merged = {}
    for key, value in {**dict(run_overrides), **dict(overrides or {})}.items():
      key = key.removeprefix('config.')
      merged[key] = check_override(config, key, value, f'run {name!r}')
    _check_run_config(config, merged, name)
    runs.append(Run(name, base, merged))
  return runs


def _check_run_config(config, merged: Mapping[str, Any], name: str) -> None:
  """The run's whole config passes launch.train's range checks (before anything is written)."""
  from train import validate

  run_config = config.copy_and_resolve_references()
  run_config.update_from_flattened_dict(dict(merged))
  try:
    validate.check_config(run_config, on_this_machine=False)
  except ValueError as e:
    raise ValueError(f'run {name!r}: {e}') from None


def select(runs: Sequence[Run], only: Iterable[str]) -> list[Run]:
  """The runs named in `only` (all if empty), in sweep order; an unknown name is an error."""
  only = [n.strip() for n in only if n.strip()]
  if not only:
    return list(runs)
  names = [r.name for r in runs]
  unknown = [n for n in only if n not in names]
  if unknown:
    raise ValueError(f'--only names runs not in the sweep: {unknown}; its runs are {names}')
  return [r for r in runs if r.name in only]


# -- Running ----------------------------------------------------------------------------------


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


class StatusFile:
  """DIR/status.json: {'updated': time, 'runs': {name: {...}}}, merged with what is there.

  Merging (under a lock) keeps the entries of other runner processes on the same workdir,
  e.g. SLURM array tasks that each run one run with --only.
  """

  def __init__(self, workdir: str):
    self.path = files.join(workdir, 'status.json')

  def update(self, entries: Mapping[str, dict]) -> None:
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


def run_dir(workdir: str, name: str) -> str:
  return files.join(workdir, 'runs', name)


def _read_summary(path: str) -> dict | None:
  try:
    return json.loads(files.read_text(path)) if files.exists(path) else None
  except (OSError, ValueError):
    return None


def run_sweep(
  runs: Sequence[Run],
  workdir: str,
  parallel: int = 1,
  train_cmd: Sequence[str] = TRAIN_CMD,
  env: Mapping[str, str] | None = None,
  echo: Callable[[str], None] = print,
  poll_s: float = 0.2,
) -> dict[str, dict]:
  """Runs what is not finished, up to `parallel` at a time; returns {name: status entry}.

  Entry: {'status': done|skipped|failed|pending, 'returncode', 'last_line', 'wall_time_s',
  'log'}. Finished runs (summary.json present) are skipped; the rest start in sweep order.
  """
  if parallel < 1:
    raise ValueError(f'--parallel={parallel} must be >= 1')
  remote = files.is_remote(workdir)
  if not remote:
    workdir = os.path.abspath(workdir)
  files.makedirs(workdir)
  status_file = StatusFile(workdir)
  env = dict(child_env() if env is None else env)
  status: dict[str, dict] = {}
  todo = []
  for run in runs:
    summary = files.join(run_dir(workdir, run.name), 'summary.json')
    if files.exists(summary):
      status[run.name] = {
        'status': SKIPPED,
        'returncode': None,
        'last_line': '',
        'wall_time_s': None,
      }
    else:
      status[run.name] = {
        'status': PENDING,
        'returncode': None,
        'last_line': '',
        'wall_time_s': None,
      }
      todo.append(run)
  status_file.update(status)
  total, finished = len(todo), 0
  if len(runs) > total:
    echo(f'{len(runs) - total} of {len(runs)} runs already finished (skipped)')
  running: dict[str, tuple[subprocess.Popen, Any, float, str]] = {}

  def start(run: Run) -> None:
    rdir = run_dir(workdir, run.name)
    files.makedirs(rdir)
    log_path = os.path.join(rdir, 'log.txt') if not remote else _local_log(workdir, run.name)
    argv = run.argv(rdir, train_cmd)
    log = open(log_path, 'ab')
    log.write(f'# {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(argv)}\n'.encode())
    log.flush()
    try:
      proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
        env=env,
      )  # fmt: skip
    except OSError as e:  # e.g. the trainer command does not exist: this run fails, not all
      log.write(f'cannot start the trainer: {e}\n'.encode())
      log.close()
      status[run.name].update(status=FAILED, returncode=None, last_line=f'cannot start: {e}',
                              log=log_path)  # fmt: skip
      status_file.update({run.name: status[run.name]})
      echo(f'FAILED  {run.name}: cannot start: {e}')
      return
    running[run.name] = (proc, log, time.time(), log_path)
    status[run.name].update(status=RUNNING, log=log_path, started=time.time())
    status_file.update({run.name: status[run.name]})
    echo(f'start   {run.name}')

  def finish(name: str, rc: int) -> None:
    nonlocal finished
    proc, log, t0, log_path = running.pop(name)
    log.close()
    wall = time.time() - t0
    rdir = run_dir(workdir, name)
    if remote:
      files.write_text(files.join(rdir, f'log.{socket.gethostname()}.txt'), _read_local(log_path))
    done = rc == 0 and files.exists(files.join(rdir, 'summary.json'))
    last = '' if done else (_last_line(log_path) or '(empty log)')
    if rc == 0 and not done:
      last = f'exited 0 without writing summary.json; last line: {last}'
    status[name].update(status=DONE if done else FAILED, returncode=rc, last_line=last,
                        wall_time_s=round(wall, 1))  # fmt: skip
    status_file.update({name: status[name]})
    finished += 1
    tail = f'({wall:.0f} s)' if done else f'exit {rc}: {last}'
    echo(f'{"done" if done else "FAILED":7s} {name} [{finished}/{total}] {tail}')

  queue = list(todo)
  try:
    while queue or running:
      while queue and len(running) < parallel:
        start(queue.pop(0))
      for name in list(running):
        rc = running[name][0].poll()
        if rc is not None:
          finish(name, rc)
      if running:
        time.sleep(poll_s)
  except KeyboardInterrupt:
    # Ctrl-C reached the children too (same process group), SIGTERM only this process: stop
    # them either way, and leave them as interrupted runs that the next invocation resumes.
    for name, (proc, log, _, _) in running.items():
      proc.terminate()
      with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
      if proc.poll() is None:
        proc.kill()
      log.close()
      status[name].update(status=PENDING, last_line='interrupted')
    status_file.update(status)
    raise
  return status


def _local_log(workdir: str, name: str) -> str:
  """Where a run's log is written when the workdir is remote (copied there when it ends)."""
  tag = re.sub(r'[^A-Za-z0-9._-]', '_', workdir.split('://', 1)[-1].strip('/'))
  path = os.path.join(REPO_ROOT, 'logs', 'sweep', tag, f'{name}.txt')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return path


def _read_local(path: str) -> str:
  with open(path, errors='replace') as f:
    return f.read()


# -- Reporting --------------------------------------------------------------------------------


def table_rows(runs: Sequence[Run], workdir: str, status: Mapping[str, dict]) -> list[dict]:
  """One row per run: name, status, N non-emb, final train/eval loss, wall time."""
  rows = []
  for run in runs:
    st = status.get(run.name, {'status': PENDING})
    summary = _read_summary(files.join(run_dir(workdir, run.name), 'summary.json')) or {}
    wall = st.get('wall_time_s')
    if st['status'] == SKIPPED:
      wall = summary.get('wall_time_s')
    rows.append(
      {
        'name': run.name,
        'status': st['status'],
        'n_nonembed': summary.get('n_params_nonembed'),
        'train_loss': summary.get('final_train_loss'),
        'eval_loss': summary.get('final_eval_loss'),
        'eval_sem': summary.get('final_eval_loss_sem'),
        'wall_time_s': wall,
        'last_line': st.get('last_line', ''),
      }
    )
  return rows


def format_table(rows: Sequence[dict]) -> str:
  """The end-of-sweep table (wall time: this invocation's, or the recorded one if skipped)."""

  def num(x, fmt):
    return '-' if x is None else format(x, fmt)

  header = ('run', 'status', 'N non-emb', 'train loss', 'eval loss ± sem', 'wall s')
  body = []
  for r in rows:
    ev = num(r['eval_loss'], '.4f')
    if r['eval_loss'] is not None and r['eval_sem'] is not None:
      ev += f' ± {r["eval_sem"]:.4f}'
    body.append((
      r['name'], r['status'], num(r['n_nonembed'], ','), num(r['train_loss'], '.4f'), ev,
      num(r['wall_time_s'], '.0f'),
    ))  # fmt: skip
  widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
  lines = ['  '.join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
           for row in (header, *body)]  # fmt: skip
  lines.insert(1, '  '.join('-' * w for w in widths))
  failed = [r for r in rows if r['status'] == FAILED]
  for r in failed:
    lines.append(f'{r["name"]} failed: {r["last_line"]}')
  return '\n'.join(lines)


def dry_run_text(runs: Sequence[Run], workdir: str, train_cmd: Sequence[str] = TRAIN_CMD) -> str:
  out = []
  for run in runs:
    rdir = run_dir(workdir, run.name)
    state = 'finished, would skip' if files.exists(files.join(rdir, 'summary.json')) else 'to run'
    out.append(f'{run.name} ({state})')
    out.extend(f'  {k} = {v!r}' for k, v in run.overrides.items())
    out.append('  $ ' + shlex.join(run.argv(rdir, train_cmd)))
  out.append(
    f'{len(runs)} runs (dry run: nothing started, nothing written; commands run from {REPO_ROOT})'
  )
  return '\n'.join(out)


def write_sweep_json(runs: Sequence[Run], workdir: str, sweep_file: str) -> None:
  """DIR/sweep.json: [{'name', 'overrides', 'config', 'sweep'}], every run of the sweep."""
  files.makedirs(workdir)
  records = [
    {'name': r.name, 'overrides': r.overrides, 'config': r.config, 'sweep': sweep_file}
    for r in runs
  ]
  files.write_text(files.join(workdir, 'sweep.json'), json.dumps(records, indent=2))


def launch(
  sweep_file: str,
  workdir: str,
  parallel: int = 1,
  dry_run: bool = False,
  only: Sequence[str] = (),
  overrides: Sequence[str] = (),
  train_cmd: Sequence[str] = TRAIN_CMD,
  echo: Callable[[str], None] = print,
) -> int:
  """The whole command: check everything, run, print the table; returns the exit status."""
  if parallel < 1:
    raise ValueError(f'--parallel={parallel} must be >= 1')
  if not files.is_remote(workdir):
    workdir = os.path.abspath(workdir)
  all_runs = expand(sweep_file, parse_overrides(overrides))
  runs = select(all_runs, only)
  if dry_run:
    echo(dry_run_text(runs, workdir, train_cmd))
    return 0
  write_sweep_json(all_runs, workdir, sweep_file)
  t0 = time.time()
  status = run_sweep(runs, workdir, parallel, train_cmd, echo=echo)
  rows = table_rows(runs, workdir, status)
  echo(format_table(rows))
  n_failed = sum(r['status'] == FAILED for r in rows)
  echo(f'{len(rows)} runs, {n_failed} failed, {time.time() - t0:.0f} s; status in '
       f'{files.join(workdir, "status.json")}')  # fmt: skip
  return 1 if n_failed else 0


_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file (experiments/sweeps/<name>.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory (runs/<name>/ per run).')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Runs at once.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the runs and commands; run nothing.')
_ONLY = flags.DEFINE_list('only', [], 'Run only these runs (comma-separated names).')
_OVERRIDE = flags.DEFINE_multi_string('override', [], 'KEY=VALUE applied to every run.')


def _raise_interrupt(signum, frame) -> None:
  del frame
  raise KeyboardInterrupt(f'signal {signum}')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _SWEEP.value or not _WORKDIR.value:
    raise app.UsageError('--sweep and --workdir are required')
  # A scheduler's SIGTERM (preemption, scancel, kill) stops the runs like Ctrl-C does, rather
  # than orphaning trainers that a rerun of this command would then race.
  signal.signal(signal.SIGTERM, _raise_interrupt)
  try:
    code = launch(
      _SWEEP.value, _WORKDIR.value, _PARALLEL.value, _DRY_RUN.value, _ONLY.value, _OVERRIDE.value
    )
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print('interrupted: rerun the same command to resume', file=sys.stderr)
    sys.exit(130)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main)
