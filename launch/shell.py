"""Helpers shared by the cluster launchers (launch/tpu.py, launch/slurm.py).

Commands are argument lists; a string that a remote shell will parse (gcloud ssh --command, an
sbatch script) is only ever assembled from `shlex.quote`d pieces, so a value such as
`x'; touch /tmp/pwned; echo '` stays one inert argument. Nothing here imports JAX: the
launchers run on a laptop or a login node.
"""

import importlib.util
import json
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

MESH_AXES = ('data', 'fsdp', 'tensor')  # the order of train/sharding.py
_KEY_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*')
_ENV_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')


def join(argv: Sequence[str]) -> str:
  """One shell-quoted line for an argument list (what --dry_run prints)."""
  return shlex.join(list(argv))


def parse_overrides(items: Sequence[str]) -> list[str]:
  """['model.d_model=256', ...] -> ['--config.model.d_model=256', ...] (values untouched)."""
  out = []
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not _KEY_RE.fullmatch(key):
      raise ValueError(
        f'--override={item!r} must be KEY=VALUE with a dotted config key (e.g. train.steps=1000)'
      )
    out.append(f'--config.{key}={value}')
  return out


def parse_env(items: Sequence[str]) -> list[tuple[str, str]]:
  """['XLA_FLAGS=--a --b', ...] -> [('XLA_FLAGS', '--a --b'), ...]."""
  out = []
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not _ENV_RE.fullmatch(key):
      raise ValueError(f'--env={item!r} must be NAME=VALUE with NAME a shell variable name')
    out.append((key, value))
  return out


def check_name(value: str, what: str, pattern: str, example: str) -> str:
  """Values that end up in resource names or #SBATCH lines: a strict whitelist, no quoting."""
  if not re.fullmatch(pattern, value or ''):
    raise ValueError(f'{what}={value!r} is not valid: use something like {example!r}')
  return value


def execute(
  commands: Sequence[Sequence[str]],
  dry_run: bool,
  printer: Callable[[str], None] = print,
  runner: Callable[..., Any] = subprocess.run,
) -> None:
  """Prints each command (shell-quoted); unless dry_run, runs it (no shell) and stops on error."""
  for argv in commands:
    printer(join(argv))
    if not dry_run:
      sys.stdout.flush()
      runner(list(argv), check=True)


def load_module(path: str, what: str):
  """Imports a Python file (a config or a sweep) by path."""
  spec = importlib.util.spec_from_file_location(f'_launch_{what}', path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f'{what} file {path!r} not found (a path to a .py file)')
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{what} file {path!r} not found (a path to a .py file)') from e
  return module


def config_mesh(config_path: str, overrides: Sequence[str] = ()) -> dict[str, int]:
  """The mesh sizes of a config file, with any --override=mesh.AXIS=N applied."""
  module = load_module(config_path, 'config')
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {config_path!r} has no get_config()')
  mesh = {k: int(v) for k, v in dict(module.get_config().mesh).items()}
  for item in overrides:
    key, _, value = item.partition('=')
    if key.startswith('mesh.'):
      try:
        mesh[key[len('mesh.') :]] = int(value)
      except ValueError as e:
        raise ValueError(f'--override={item!r}: mesh sizes are integers') from e
  return mesh


def mesh_shape(mesh: dict[str, int], num_devices: int, where: str = '') -> tuple[int, ...]:
  """(data, fsdp, tensor) sizes with one -1 filled in; one-line ValueError if they do not fit.

  Same rules as train/sharding.mesh_shape (the test checks that they agree), without JAX.
  """
  at = f' on {where}' if where else ''
  unknown = sorted(set(mesh) - set(MESH_AXES))
  if unknown:
    raise ValueError(f'unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}')
  sizes = [int(mesh.get(a, 1)) for a in MESH_AXES]
  shown = dict(zip(MESH_AXES, sizes, strict=True))
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh {shown}: sizes must be positive, with at most one -1')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
        f'mesh {shown} cannot fill the {num_devices} devices{at}: {known} does not divide '
        f'{num_devices}'
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f'mesh {shown} needs {math.prod(sizes)} devices but there are {num_devices}{at}; '
      'make the product match or set one axis to -1'
    )
  return tuple(sizes)


def _runs_in_this_process(sweep_path: str) -> list[list]:
  """[[name, overrides]] of a sweep file; see sweep_runs."""
  module = load_module(sweep_path, 'sweep')
  for attr in ('get_sweep', 'get_runs', 'SWEEP', 'RUNS'):
    if hasattr(module, attr):
      value = getattr(module, attr)
      runs = value() if callable(value) else value
      break
  else:
    raise ValueError(f'{sweep_path!r} defines no get_sweep()')
  out = []
  for run in runs:
    if isinstance(run, dict):
      out.append([str(run['name']), dict(run.get('overrides') or {})])
    elif isinstance(run, (tuple, list)) and len(run) == 2:
      out.append([str(run[0]), dict(run[1] or {})])
    elif hasattr(run, 'name'):
      out.append([str(run.name), dict(getattr(run, 'overrides', None) or {})])
    else:
      raise ValueError(f'{sweep_path!r}: cannot read a run name from {run!r}')
  return out


def sweep_runs(sweep_path: str, cwd: str | None = None) -> list[tuple[str, dict]]:
  """[(run name, overrides)] of a sweep file, in order.

  The file's `get_sweep()` (or `get_runs()`, `SWEEP`, `RUNS`) gives dicts with 'name' and
  'overrides' (the records of sweep.json), (name, overrides) pairs, or objects with `.name`.
  It is read in a child Python: a sweep file may import modules that define absl flags, which
  would collide with the launcher's own.
  """
  code = (
    'import json, sys; from launch.shell import _runs_in_this_process as r; '
    'print(json.dumps(r(sys.argv[1]), default=repr))'
  )
  proc = subprocess.run(
    [sys.executable, '-c', code, sweep_path], capture_output=True, text=True, cwd=cwd
  )
  if proc.returncode != 0:
    last = (proc.stderr.strip().splitlines() or ['?'])[-1]
    raise ValueError(f'cannot list the runs of {sweep_path!r} ({last}); pass them with --runs')
  out = [(name, overrides) for name, overrides in json.loads(proc.stdout.strip().splitlines()[-1])]
  names = [n for n, _ in out]
  if not names or len(set(names)) != len(names):
    raise ValueError(f'{sweep_path!r}: run names must be non-empty and unique, got {names}')
  return out


def read_pin(requirements: str, package: str) -> str:
  """The `package==X` version pinned in a requirements file."""
  with open(requirements) as f:
    for line in f:
      m = re.fullmatch(rf'\s*{re.escape(package)}==([^\s#;]+).*\n?', line)
      if m:
        return m.group(1)
  raise ValueError(f'{requirements} pins no {package}==VERSION')
