r"""SLURM launcher: writes an sbatch script for one training run or a whole sweep, and submits it.

  python -m launch.slurm --name=demo --nodes=2 --gpus_per_node=8 --time=04:00:00 \
      --partition=gpu --sweep=experiments/sweeps/demo.py --workdir=/shared/sweeps/demo --dry_run

One process per GPU (`--process_per=gpu`, the default: ntasks-per-node = GPUs per node, each
process sees one GPU) or one per node (`--process_per=node`: each process sees all GPUs of its
node). `srun` starts the processes; `jax.distributed.initialize()` finds its peers from SLURM's
variables (train/distributed.py). A sweep becomes a job array, one task per run, each running
that run's own `launch.train` command on the whole allocation (one trainer per task: no file is
shared by the tasks; sweep.json is written once, here, at submission). A task whose run already
has a summary.json (local workdir) exits at once, so resubmitting resumes the sweep.

Every value the user gives reaches the script through `shlex.quote`, or a strict whitelist for
the `#SBATCH` lines (which sbatch, not bash, reads).
"""

import dataclasses
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

from core import files, rundir
from experiments import sweep_spec
from experiments.sweep_spec import REPO_ROOT
from launch import shell, sweep_report

_PATH_RE = r'[A-Za-z0-9_./%+-]+'  # paths that go on an #SBATCH line: no spaces, no quotes.


@dataclasses.dataclass
class SlurmJob:
  """Everything the script is built from (the absl flags, or a test)."""

  name: str
  workdir: str
  config: str = ''
  sweep: str = ''
  nodes: int = 1
  gpus_per_node: int = 8
  process_per: str = 'gpu'  # 'gpu' | 'node'
  time: str = '04:00:00'
  partition: str = ''
  account: str = ''
  cpus_per_task: int = 0  # 0: the cluster's default.
  output_dir: str = ''  # '' -> <workdir>/slurm (local workdir) or <repo>/slurm_logs.
  repo_dir: str = REPO_ROOT  # the checkout on the cluster's shared filesystem.
  venv: str = '.venv'  # relative to repo_dir, or absolute.
  overrides: Sequence[str] = ()
  env: Sequence[str] = ()
  runs: Sequence[str] = ()  # sweep run names to submit; () -> all of the sweep's.
  max_concurrent: int = 0  # sweep: at most this many array tasks at once (0: no limit).
  launcher: Sequence[str] = ('srun', '--kill-on-bad-exit=1')
  python: Sequence[str] = ('python',)

  @property
  def tasks_per_node(self) -> int:
    return self.gpus_per_node if self.process_per == 'gpu' and self.gpus_per_node > 0 else 1

  def default_output_dir(self) -> str:
    if self.workdir.startswith('gs://'):
      return os.path.join(self.repo_dir, 'slurm_logs')
    return os.path.join(os.path.abspath(self.workdir), 'slurm')

  def validate(self) -> None:
    shell.check_name(self.name, '--name', r'[A-Za-z0-9_.-]{1,100}', 'demo-sweep')
    if self.nodes < 1:
      raise ValueError(f'--nodes must be >= 1, got {self.nodes}')
    if self.gpus_per_node < 0:
      raise ValueError(f'--gpus_per_node must be >= 0, got {self.gpus_per_node}')
    if self.process_per not in ('gpu', 'node'):
      raise ValueError(f"--process_per={self.process_per!r}: 'gpu' or 'node'")
    time_re = r'\d+|\d+:\d{2}(:\d{2})?|\d+-\d{1,2}(:\d{2}(:\d{2})?)?'
    shell.check_name(self.time, '--time', time_re, '04:00:00')
    if self.partition:
      shell.check_name(self.partition, '--partition', r'[A-Za-z0-9_.,-]+', 'gpu')
    if self.account:
      shell.check_name(self.account, '--account', r'[A-Za-z0-9_.-]+', 'my-lab')
    if self.output_dir:
      shell.check_name(self.output_dir, '--output_dir', _PATH_RE, '/shared/logs')
    else:
      shell.check_name(
        self.default_output_dir(), 'the log folder (set --output_dir)', _PATH_RE, '/shared/logs'
      )
    if not self.workdir:
      raise ValueError('--workdir is required (a shared path or gs://BUCKET/path)')
    if self.max_concurrent < 0:
      raise ValueError(f'--max_concurrent must be >= 0, got {self.max_concurrent}')
    # Only this checkout can be looked into; a --repo_dir elsewhere is taken on trust.
    local = os.path.abspath(self.repo_dir) == REPO_ROOT
    shell.check_run_target(self.config, self.sweep, self.overrides, self.env, look=local)


def sweep_runs(job: SlurmJob) -> list[sweep_spec.Run]:
  """The sweep's runs (one array task each), all of them or those named by --runs."""
  return sweep_spec.select(sweep_spec.expand(job.sweep).runs, job.runs)


def program_argv(job: SlurmJob, run: sweep_spec.Run | None = None) -> list[str]:
  """What every task runs: the --config run, or one run of the sweep."""
  if run is not None:
    rdir = rundir.SweepDir(job.workdir).run(run.name)
    return run.argv(rdir.path, [*job.python, '-m', 'launch.train'])
  return shell.train_argv(job.python, job.config, job.workdir, job.overrides)


def sbatch_script(job: SlurmJob, runs: Sequence[sweep_spec.Run] = ()) -> str:
  """The whole sbatch script. `runs`: the sweep's runs (ignored for a --config job)."""
  job.validate()
  out_dir = job.output_dir or job.default_output_dir()
  array = bool(job.sweep)
  lines = [
    '#!/bin/bash',
    f'#SBATCH --job-name={job.name}',
    f'#SBATCH --nodes={job.nodes}',
    f'#SBATCH --ntasks-per-node={job.tasks_per_node}',
  ]
  if job.gpus_per_node > 0:
    lines.append(f'#SBATCH --gpus-per-node={job.gpus_per_node}')
  if job.cpus_per_task > 0:
    lines.append(f'#SBATCH --cpus-per-task={job.cpus_per_task}')
  lines.append(f'#SBATCH --time={job.time}')
  if job.partition:
    lines.append(f'#SBATCH --partition={job.partition}')
  if job.account:
    lines.append(f'#SBATCH --account={job.account}')
  log_name = '%x-%A_%a.out' if array else '%x-%j.out'
  lines.append(f'#SBATCH --output={os.path.join(out_dir, log_name)}')
  if array:
    if not runs:
      raise ValueError('a sweep job needs its runs')
    limit = f'%{job.max_concurrent}' if job.max_concurrent else ''
    lines.append(f'#SBATCH --array=0-{len(runs) - 1}{limit}')
  lines += [
    '# Written by launch/slurm.py.',
    'set -eo pipefail',
    f'cd {shlex.quote(job.repo_dir)}',
    f'source {shlex.quote(os.path.join(job.venv, "bin", "activate"))}',
  ]
  for key, value in shell.parse_env(job.env):
    lines.append(f'export {key}={shlex.quote(value)}')
  if job.process_per == 'node' and job.gpus_per_node > 1:
    # JAX's SLURM detection would give each process only GPU number SLURM_LOCALID.
    ids = ','.join(str(i) for i in range(job.gpus_per_node))
    lines.append(f'export JAX_LOCAL_DEVICE_IDS={ids}')
  if not array:
    lines.append(shell.join([*job.launcher, *program_argv(job)]))
    return '\n'.join(lines) + '\n'
  lines.append('case "$SLURM_ARRAY_TASK_ID" in')
  for i, run in enumerate(runs):
    rdir = rundir.SweepDir(job.workdir).run(run.name)
    lines.append(f'  {i})')
    lines.append(f'    echo {shlex.quote(f"array task {i}: run {run.name}")} >&2')
    if not files.is_remote(job.workdir):
      done = shlex.quote(rdir.summary_path)  # RunDir.done, in bash
      lines.append(f'    if [ -f {done} ]; then echo finished, skipping >&2; exit 0; fi')
    lines.append(f'    {shell.join([*job.launcher, *program_argv(job, run)])} ;;')
  lines.append('  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;')
  lines.append('esac')
  return '\n'.join(lines) + '\n'


def script_path(job: SlurmJob) -> str:
  if job.workdir.startswith('gs://'):
    return os.path.join(job.repo_dir, 'slurm_logs', f'{job.name}.sbatch')
  return os.path.join(os.path.abspath(job.workdir), 'slurm', f'{job.name}.sbatch')


def check_mesh(job: SlurmJob) -> None:
  """The config's (or every sweep run's) mesh must tile nodes x GPUs (skipped on CPU-only jobs)."""
  if job.gpus_per_node == 0:
    return
  n = job.nodes * job.gpus_per_node
  where = f'{job.nodes} node(s) x {job.gpus_per_node} GPUs'
  sweep_spec.check_target_mesh(job.config, job.sweep, job.overrides, n, where)


def main(argv: list[str]) -> None:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  job = shell.job_from_flags(SlurmJob, f)
  job.repo_dir = job.repo_dir or REPO_ROOT
  with shell.exit_on_error():
    job.validate()
    runs = sweep_runs(job) if job.sweep else []
    if f.check_mesh:
      check_mesh(job)
    script = sbatch_script(job, runs)
  if f.dry_run:
    sys.stdout.write(script)
    return
  path = script_path(job)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  os.makedirs(job.output_dir or job.default_output_dir(), exist_ok=True)  # sbatch won't.
  with open(path, 'w') as fh:
    fh.write(script)
  print(f'# wrote {path}')
  if job.sweep:  # the one writer of sweep.json (launch.compare and the table read it)
    sweep_report.write_sweep_json(sweep_spec.expand(job.sweep).runs, job.workdir, job.sweep)
  try:
    shell.execute([['sbatch', path]], dry_run=False)
  except (subprocess.CalledProcessError, FileNotFoundError) as e:
    print(f'error: sbatch failed ({e}); the script is at {path}', file=sys.stderr)
    sys.exit(1)


def _define_flags() -> None:
  """Defined only when run as a program (importing the module registers no absl flags)."""
  from absl import flags

  shell.define_run_flags('nodes x GPUs')
  flags.DEFINE_string('name', None, 'Job name (letters, digits, _ . -).', required=True)
  flags.DEFINE_string('workdir', None, 'Shared run directory or gs://BUCKET/path.', required=True)
  flags.DEFINE_list('runs', [], 'Submit only these runs of the sweep (default: all).')
  flags.DEFINE_integer('max_concurrent', 0, 'Sweep: array tasks at once (0: no limit).')
  flags.DEFINE_integer('nodes', 1, 'Nodes per run.')
  flags.DEFINE_integer('gpus_per_node', 8, 'GPUs per node (0: CPU only).')
  flags.DEFINE_enum('process_per', 'gpu', ['gpu', 'node'], 'One process per GPU or per node.')
  flags.DEFINE_string('time', '04:00:00', 'Time limit per run (SLURM format).')
  flags.DEFINE_string('partition', '', 'SLURM partition.')
  flags.DEFINE_string('account', '', 'SLURM account.')
  flags.DEFINE_integer('cpus_per_task', 0, 'CPUs per process (0: cluster default).')
  flags.DEFINE_string('output_dir', '', 'Folder of the SLURM logs (default: WORKDIR/slurm).')
  flags.DEFINE_string('repo_dir', '', 'The checkout on the cluster (default: this one).')
  flags.DEFINE_string('venv', '.venv', 'Virtual environment (relative to repo_dir).')


if __name__ == '__main__':
  from absl import app

  _define_flags()
  app.run(main)
