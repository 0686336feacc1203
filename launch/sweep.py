r"""Run a sweep: each run of a sweep file as its own `launch.train` process, resumable.

  python -m launch.sweep --sweep=experiments/sweeps/demo.py --workdir=runs/demo --parallel=2
  python -m launch.sweep --sweep=... --workdir=... --dry_run          # print runs and commands
  python -m launch.sweep --sweep=... --workdir=... --only=L3-d192-h6 --override=train.steps=50

A sweep file defines BASE_CONFIG (a config file) and get_sweep() -> [(run name, {dotted key:
value})]; docs/SWEEPS.md. Every run becomes `python -m launch.train --config=BASE_CONFIG
--workdir=DIR/runs/<name> --config.<key>=<value> ...` (an argument list: no shell), its output
in DIR/runs/<name>/log.txt. Rerunning the same command is how a sweep resumes: a run with a
summary.json is skipped, one whose workdir exists without it is started again (the trainer
resumes it from its newest checkpoint), a failing run is recorded in DIR/status.json and the
others go on. The exit status is 1 if any run failed.

A run is reused (skipped, or resumed) only if the config.json it recorded equals the config the
sweep now gives it. Otherwise nothing starts and nothing is written: one line names the run and
the keys that differ (its --override or the sweep file changed since). --rerun_changed instead
moves each such run's folder to DIR/stale/<name>-<time>/ and trains it again from scratch, so
DIR/sweep.json and DIR/runs/ always describe the same runs. The progress line of each run that
ends shows an ETA (the mean wall time so far times the runs left, over --parallel).

Every key is checked against the base config, with its type, before anything starts: a typo
in a sweep file is a one-line error, not a failed run an hour later (experiments/sweep_spec.py).

  python -m launch.sweep --sweep=... --workdir=... --devices_per_run=2   # 4 runs at once on 8

--devices_per_run=K runs several runs at once, each on its own K devices of this host
(CUDA_VISIBLE_DEVICES on GPUs, the TPU runtime's visible-chip variables on a TPU VM; see
launch/pool.py); the table shows which devices each run used. The pieces: experiments/sweep_spec.py
(reading), launch/pool.py (running), launch/sweep_report.py (the table, sweep.json).
"""

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from core import files, rundir
from experiments import sweep_spec
from launch import pool, shell, sweep_report
from launch.shell import TRAIN_CMD


def launch(
  sweep_file: str,
  workdir: str,
  parallel: int = 1,
  dry_run: bool = False,
  only: Sequence[str] = (),
  overrides: Sequence[str] = (),
  train_cmd: Sequence[str] = TRAIN_CMD,
  echo: Callable[[str], None] = print,
  devices_per_run: int = 0,
  platform: str = '',
  devices: Sequence[int] = (),
  rerun_changed: bool = False,
) -> int:
  """The whole command: check everything, run, print the table; returns the exit status."""
  if parallel < 0:
    raise ValueError(f'--parallel={parallel} must be >= 1 (or 0: one run per device group)')
  groups = pool.device_groups(devices_per_run, platform, devices) if devices_per_run else []
  if not parallel:
    parallel = len(groups) or 1
  if not files.is_remote(workdir):
    workdir = os.path.abspath(workdir)
  sweep = sweep_spec.expand(sweep_file, sweep_spec.parse_overrides(overrides))
  runs = sweep_spec.select(sweep.runs, only)
  # Every run of the sweep, not only the selected ones: sweep.json describes them all.
  stale = pool.stale_runs(sweep.runs, workdir)
  if stale and not rerun_changed and not dry_run:
    name, diff = next(iter(stale.items()))
    others = f' (and {len(stale) - 1} more runs)' if len(stale) > 1 else ''
    raise ValueError(
      f'run {name!r} in {rundir.SweepDir(workdir).run(name).path} was trained with another config: '
      f'{pool.describe_differences(diff)}{others}; pass --rerun_changed to set it aside and '
      'train it again, or use another --workdir'
    )
  if dry_run:
    echo(sweep_report.dry_run_text(runs, workdir, train_cmd))
    for name, diff in stale.items():
      echo(f'changed: {name} ({pool.describe_differences(diff)}): needs --rerun_changed')
    if groups:
      echo(f'device groups: {", ".join(g.label for g in groups)}')
    return 0
  if pool.is_primary_host():
    for name in stale:
      echo(f'set aside {name} (changed config) in {pool.set_aside(workdir, name)}')
    sweep_report.write_sweep_json(sweep.runs, workdir, sweep_file)
  t0 = time.time()
  status = pool.run_sweep(runs, workdir, parallel, train_cmd, echo=echo, groups=groups)
  rows = sweep_report.table_rows(runs, workdir, status)
  echo(sweep_report.format_table(rows))
  n_failed = sum(r['status'] == pool.FAILED for r in rows)
  status_path = rundir.SweepDir(workdir).status_path
  echo(f'{len(rows)} runs, {n_failed} failed, {time.time() - t0:.0f} s; status in {status_path}')
  return 1 if n_failed else 0


_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file (experiments/sweeps/<name>.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory (runs/<name>/ per run).')
_PARALLEL = flags.DEFINE_integer('parallel', 0, 'Runs at once (0: 1, or one per device group).')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the runs and commands; run nothing.')
_ONLY = flags.DEFINE_list('only', [], 'Run only these runs (comma-separated names).')
_OVERRIDE = flags.DEFINE_multi_string('override', [], 'KEY=VALUE applied to every run.')
_DEVICES_PER_RUN = flags.DEFINE_integer(
  'devices_per_run', 0, 'Give each run K devices of this host (0: every run sees all).'
)
_PLATFORM = flags.DEFINE_enum('platform', '', ['', *pool.PLATFORMS], "'': detect gpu/tpu/cpu.")
_DEVICES = flags.DEFINE_list('devices', [], 'Device ids to share out (default: all found).')
_RERUN_CHANGED = flags.DEFINE_bool(
  'rerun_changed',
  False,
  'A run whose recorded config differs from the sweep: move it to DIR/stale/ and train it '
  'again (default: refuse).',
)


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
  logging.set_verbosity(logging.WARNING)  # this process prints; JAX's INFO is not for the user
  try:
    with shell.exit_on_error():
      if not all(d.strip().isdigit() for d in _DEVICES.value):
        raise ValueError(f'--devices={",".join(_DEVICES.value)} must be integers')
      code = launch(
        _SWEEP.value,
        _WORKDIR.value,
        _PARALLEL.value,
        _DRY_RUN.value,
        _ONLY.value,
        _OVERRIDE.value,
        devices_per_run=_DEVICES_PER_RUN.value,
        platform=_PLATFORM.value,
        devices=[int(d) for d in _DEVICES.value],
        rerun_changed=_RERUN_CHANGED.value,
      )
  except KeyboardInterrupt:
    print('interrupted: rerun the same command to resume', file=sys.stderr)
    sys.exit(130)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main)
