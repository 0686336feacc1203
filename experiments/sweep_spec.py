"""Reading a sweep: config files, sweep files, overrides, the mesh check. No JAX is imported.

The sweep files are this folder's (experiments/sweeps/); this module is the one reader of their
format, under the runner (launch/sweep.py), the cluster launchers and the tests of every sweep.

A sweep file defines BASE_CONFIG (a config file) and get_sweep() -> [(run name, {dotted key:
value})] (docs/SWEEPS.md). `expand` is the one reader of sweep files: the sweep runner and the
cluster launchers all call it. Every override goes through the base config, copied and locked:
`update_from_flattened_dict` rejects an unknown key (with its "did you mean") or a value of
another type, so a typo in a sweep file is a one-line error, not a failed run an hour later.
"""

import copy
import dataclasses
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core import rundir
from models import shapes

# Config and sweep files named relative to the repository resolve here from any directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NAME_RE = re.compile(r'[A-Za-z0-9._-]+')
_KEY_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*')


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its name, base config file and overrides (dotted key -> value)."""

  name: str
  config: str
  overrides: dict
  parent: str = ''  # the run of this sweep it branches from (train.init_from names it)

  def train_overrides(self, run_dir: str) -> dict:
    """The overrides the trainer gets in `run_dir`: a branch's parent becomes its sibling
    folder, as the run's config.json records it."""
    overrides = dict(self.overrides)
    if self.parent:
      overrides['train.init_from'] = rundir.RunDir(run_dir).sibling(self.parent).path
    return overrides

  def argv(self, run_dir: str, train_cmd: Sequence[str]) -> list[str]:
    """The trainer's command line for this run in `run_dir` (train_cmd: launch.shell's)."""
    flags_ = [f'--config.{k}={format_value(v)}' for k, v in self.train_overrides(run_dir).items()]
    return [*train_cmd, f'--config={self.config}', f'--workdir={run_dir}', *flags_]


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A sweep file, read: its BASE_CONFIG path, that config, and its runs (overrides checked)."""

  path: str
  base: str
  config: Any  # the base ConfigDict
  runs: list[Run]


def format_value(value: Any) -> str:
  """A value as config_flags parses it back: true/false, ints, floats that keep their dot."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, float):
    return repr(value)  # 0.001, 1e-05, 100000000000000.0: float() reads each back exactly
  return str(value)


def resolve(path: str, what: str, fix: str) -> str:
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
  fix = 'name a file under experiments/configs/'
  module = _load_module(resolve(path, 'config file', fix), 'config')
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {path!r} defines no get_config()')
  try:
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001
    raise ValueError(f'{spec}: get_config failed: {type(e).__name__}: {e}') from e


def _lookup(config, key: str) -> Any:
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _parse_as(current: Any, text: str) -> Any:
  """A command-line string as the type of the field it overrides (config_flags' rules)."""
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ('true', 'false', '1', '0'):
      return low in ('true', '1')
  elif isinstance(current, int):
    return int(text)
  elif isinstance(current, float):
    return float(text)
  raise ValueError


def apply_overrides(config, overrides: Mapping[str, Any], where: str):
  """(locked copy of `config` with `overrides` set, {key: value as the config now holds it}).

  String values (from a command line) are parsed as the field's type first; everything else
  is left to the locked ConfigDict, whose errors become one ValueError line naming `where`.
  """
  out = copy.deepcopy(config)
  out.lock()
  typed = {}
  for key, value in overrides.items():
    key = key.removeprefix('config.')
    try:
      current = _lookup(out, key)
    except (KeyError, AttributeError):
      current = None  # the update below names the missing key
    if isinstance(value, str) and current is not None and not isinstance(current, str):
      try:
        value = _parse_as(current, value)
      except ValueError:
        name = type(current).__name__
        raise ValueError(f'{where}: {key}={value!r} is not {name} like {current!r}') from None
    try:
      out.update_from_flattened_dict({key: value})
    except (KeyError, TypeError, AttributeError, ValueError) as e:
      msg = str(e.args[0] if e.args else e).replace('\n', ' ')
      raise ValueError(f'{where}: cannot set {key}={value!r}: {msg}') from None
    typed[key] = _lookup(out, key)
  return out, typed


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


def config_flags(items: Iterable[str]) -> list[str]:
  """['train.steps=50', ...] -> ['--config.train.steps=50', ...] (checked as KEY=VALUE)."""
  items = list(items)
  parse_overrides(items)  # checks each
  return [f'--config.{item.strip().removeprefix("config.")}' for item in items]


def _entry(entry, sweep_file: str) -> tuple[Any, Mapping]:
  if isinstance(entry, Mapping):
    return entry.get('name'), entry.get('overrides', {})
  if isinstance(entry, tuple | list) and len(entry) == 2:
    return entry[0], entry[1]
  raise ValueError(f'{sweep_file}: a run must be (name, overrides), got {entry!r}')


def expand(sweep_file: str, overrides: Mapping[str, Any] | None = None) -> Sweep:
  """The runs of a sweep file, `overrides` applied to each, every key checked.

  Raises FileNotFoundError / ValueError (one line) for a missing file, a bad name (only
  [A-Za-z0-9._-]), duplicate names, or a key or value type the base config does not have.
  """
  fix = 'pass --sweep=experiments/sweeps/<name>.py'
  path = resolve(sweep_file, 'sweep file', fix)
  module = _load_module(path, 'sweep')
  base = getattr(module, 'BASE_CONFIG', None)
  if not isinstance(base, str) or not base:
    raise ValueError(f'{sweep_file} defines no BASE_CONFIG (the config file its runs start from)')
  if not callable(getattr(module, 'get_sweep', None)):
    raise ValueError(f'{sweep_file} defines no get_sweep() -> [(run name, overrides)]')
  entries = list(module.get_sweep())
  if not entries:
    raise ValueError(f'{sweep_file}: get_sweep() returned no runs')
  config = load_config(base)
  runs, seen, resolved_of = [], set(), {}
  for entry in entries:
    name, run_overrides = _entry(entry, sweep_file)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in ('.', '..'):
      raise ValueError(
        f'{sweep_file}: run name {name!r} is not path-safe; use only letters, digits, . _ -'
      )
    if name in seen:
      raise ValueError(f'{sweep_file}: duplicate run name {name!r}; run names must be unique')
    seen.add(name)
    merged = {**dict(run_overrides), **dict(overrides or {})}
    resolved, typed = apply_overrides(config, merged, f'run {name!r}')
    _check_run_config(resolved, name)
    runs.append(Run(name, base, typed))
    resolved_of[name] = resolved
  return Sweep(path, base, config, _branches_after_parents(runs, resolved_of, sweep_file))


def _branches_after_parents(runs: list[Run], resolved: dict, sweep_file: str) -> list[Run]:
  """A run whose train.init_from names another run of the sweep branches from it: checked
  (same model and batch; the parent saves and keeps a checkpoint at train.init_step) and
  ordered after it. Other runs keep their order."""
  by_name = {r.name: r for r in runs}
  out = []
  for r in runs:
    parent = r.overrides.get('train.init_from', '') or ''
    if parent not in by_name:
      out.append(r)
      continue
    _check_branch(r.name, resolved[r.name], parent, resolved[parent], sweep_file)
    out.append(dataclasses.replace(r, parent=parent))
  ordered, placed = [], set()
  while len(ordered) < len(out):
    ready = [r for r in out if r.name not in placed and (not r.parent or r.parent in placed)]
    if not ready:
      cycle = sorted(r.name for r in out if r.name not in placed)
      raise ValueError(f'{sweep_file}: runs branch from each other in a cycle: {cycle}')
    for r in ready:  # one pass in sweep order, then the branches whose parents are now placed
      ordered.append(r)
      placed.add(r.name)
  return ordered


def _check_branch(name: str, cfg, parent: str, parent_cfg, sweep_file: str) -> None:
  where = f'{sweep_file}: run {name!r} branches from {parent!r}'
  old, new = parent_cfg.model.to_dict(), cfg.model.to_dict()
  diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  if diff:
    desc = ', '.join(f'model.{k}: {old.get(k)!r} there vs {new.get(k)!r} here' for k in diff)
    raise ValueError(f'{where}, a model of another shape ({desc})')
  if parent_cfg.train.global_batch != cfg.train.global_batch:
    raise ValueError(f'{where}, which has another train.global_batch')
  step, every, total = cfg.train.init_step, parent_cfg.checkpoint.every, parent_cfg.train.steps
  if not (step % every == 0 or step == total) or step > total:
    raise ValueError(
      f'{where} at step {step}, where it saves no checkpoint (every {every} of {total} steps)'
    )
  later = len({k for k in range(every, total + 1, every) if k > step} | {total} - {step})
  keep = parent_cfg.checkpoint.max_to_keep
  if later >= keep:
    raise ValueError(
      f'{where} at step {step}, but it keeps only its last {keep} checkpoints ({later} come '
      f'after that step): set its checkpoint.max_to_keep >= {later + 1}'
    )


def _check_run_config(run_config, name: str) -> None:
  """The run's whole config passes launch.train's range checks (before anything is written)."""
  from train import validate  # no JAX either; read only when a sweep is expanded

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


def check_mesh(config, overrides: Mapping[str, Any], num_devices: int, where: str) -> None:
  """The mesh of `config` with `overrides` applied must tile `num_devices` (one-line error)."""
  resolved, _ = apply_overrides(config, overrides, where)
  shapes.mesh_shape(resolved.mesh, num_devices, where)


def check_target_mesh(
  config_file: str, sweep_file: str, overrides: Sequence[str], num_devices: int, where: str
) -> None:
  """check_mesh for a launcher's --config (with --override) or every run of its --sweep."""
  if config_file:
    check_mesh(load_config(config_file), parse_overrides(overrides), num_devices, where)
    return
  sweep = expand(sweep_file)
  for run in sweep.runs:
    try:
      check_mesh(sweep.config, run.overrides, num_devices, where)
    except ValueError as e:
      raise ValueError(f'sweep run {run.name!r}: {e}') from None
