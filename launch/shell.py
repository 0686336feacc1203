"""Helpers shared by the launchers (launch/tpu.py, launch/slurm.py, launch/sweep.py).

Commands are argument lists; a string that a remote shell will parse (gcloud ssh --command, an
sbatch script) is only ever assembled from `shlex.quote`d pieces, so a value such as
`x'; touch /tmp/pwned; echo '` stays one inert argument. Nothing here imports JAX: the
launchers run on a laptop or a login node.
"""

import contextlib
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from experiments import sweep_spec
from experiments.sweep_spec import REPO_ROOT

TRAIN_CMD = (sys.executable, '-m', 'launch.train')
_ENV_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')


def join(argv: Sequence[str]) -> str:
  """One shell-quoted line for an argument list (what --dry_run prints)."""
  return shlex.join(list(argv))


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


def read_pin(requirements: str, package: str) -> str:
  """The `package==X` version pinned in a requirements file."""
  with open(requirements) as f:
    for line in f:
      m = re.fullmatch(rf'\s*{re.escape(package)}==([^\s#;]+).*\n?', line)
      if m:
        return m.group(1)
  raise ValueError(f'{requirements} pins no {package}==VERSION')


def check_run_target(
  config: str, sweep: str, overrides: Sequence[str], env: Sequence[str], look: bool = True
) -> None:
  """What a cluster launcher's run needs: one of --config/--sweep, a repository-relative path
  (that exists, when `look`: the checkout that runs it is this one), and well-formed
  --override and --env values."""
  if bool(config) == bool(sweep):
    raise ValueError('give exactly one of --config and --sweep')
  if sweep and overrides:
    raise ValueError('--override applies to --config runs; put sweep overrides in the sweep')
  sweep_spec.config_flags(overrides)
  parse_env(env)
  for path, what in ((config, '--config'), (sweep, '--sweep')):
    if path and (os.path.isabs(path) or (look and not os.path.isfile(f'{REPO_ROOT}/{path}'))):
      raise FileNotFoundError(f'{what}={path!r}: give a path inside the repository {REPO_ROOT}')


def train_argv(python: Sequence[str], config: str, workdir: str, overrides: Sequence[str]):
  """One `launch.train` run of a config file, as a cluster launcher starts it."""
  flags_ = sweep_spec.config_flags(overrides)
  return [*python, '-m', 'launch.train', f'--config={config}', f'--workdir={workdir}', *flags_]


def define_run_flags(where: str) -> None:
  """The flags both cluster launchers take: what to run, its overrides, and the checks."""
  from absl import flags

  flags.DEFINE_string('config', '', 'Config file (repo-relative) for one training run.')
  flags.DEFINE_string('sweep', '', 'Sweep file (repo-relative) to run instead.')
  flags.DEFINE_multi_string('override', [], 'KEY=VALUE -> --config.KEY=VALUE (repeatable).')
  flags.DEFINE_multi_string('env', [], 'NAME=VALUE set for the run (e.g. XLA_FLAGS=...).')
  flags.DEFINE_bool('check_mesh', True, f"Check the config's mesh against {where} first.")
  flags.DEFINE_bool('dry_run', False, 'Print what would run; run nothing.')


def job_from_flags(cls, values) -> Any:
  """A launcher's job dataclass from absl flag values: every field with a flag of its name
  (the field `overrides` from --override)."""
  kwargs = {}
  for field in dataclasses.fields(cls):
    name = 'override' if field.name == 'overrides' else field.name
    if name in values:
      kwargs[field.name] = values[name].value
  return cls(**kwargs)


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
  """One `error:` line and an exit status instead of a traceback: 2 for bad input (ValueError,
  FileNotFoundError, raised before anything runs), 1 for a command or cloud step that failed."""
  try:
    yield
  except (ValueError, FileNotFoundError) as e:
    sys.exit(print(f'error: {e}', file=sys.stderr) or 2)
  except RuntimeError as e:
    sys.exit(print(f'error: {e}', file=sys.stderr) or 1)
  except subprocess.CalledProcessError as e:
    print(f'error: command failed with status {e.returncode}: {join(e.cmd)}', file=sys.stderr)
    sys.exit(1)
