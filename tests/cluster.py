"""Real training processes on this machine, for the tests that need more than one interpreter:
several JAX processes joined by `jax.distributed` (gloo over 127.0.0.1), signals, SIGKILL.

`start` spawns one `launch.train` per process; `launch` runs them to the end and retries only
what is the environment's fault, from the workdir as it was: a coordinator port taken between
`free_port()` and the coordinator's bind, and gloo's fixed 30 s rendezvous when one process
reaches its first collective much later than the others (a starved CPU).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny model that trains in seconds: 6 steps, checkpoints at 3 and 6, evals at 3 and 6.
FLAGS = [
  '--config=experiments/configs/default.py',
  '--config.model.d_model=32',
  '--config.model.num_layers=2',
  '--config.model.num_heads=4',
  '--config.model.max_seq_len=32',
  '--config.data.seq_len=32',
  '--config.train.steps=6',
  '--config.train.global_batch=8',
  '--config.train.warmup_steps=2',
  '--config.eval.every=3',
  '--config.eval.batches=2',
  '--config.eval.batch_size=8',
  '--config.checkpoint.every=3',
  '--config.checkpoint.async_save=false',
  '--config.log_every=1',
  '--config.peak_flops=1e12',
]
BIND_ERRORS = ('already in use', 'Failed to bind')  # the OS's, gRPC's and initialize()'s words
_RETRY = (*BIND_ERRORS, 'Gloo context initialization failed')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(workdir, processes: int, devices_each: int, extra=(), timeout_s: int = 300):
  """`processes` trainers on one workdir, each with `devices_each` CPU devices (Popen list)."""
  env = dict(
    os.environ,
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_each}',
    JAX_PLATFORMS='cpu',
  )
  base = [sys.executable, '-m', 'launch.train', f'--workdir={workdir}', *FLAGS, *extra]
  cmds = [base]
  if processes > 1:
    addr = f'127.0.0.1:{free_port()}'
    cluster = [f'--coordinator_address={addr}', f'--num_processes={processes}']
    cmds = [
      [*base, *cluster, f'--process_id={i}', f'--distributed_timeout_s={timeout_s}']
      for i in range(processes)
    ]
  out, err = subprocess.PIPE, subprocess.STDOUT
  return [subprocess.Popen(c, cwd=REPO, env=env, stdout=out, stderr=err, text=True) for c in cmds]


def finish(procs, timeout_s: int = 1800) -> list[tuple[int, str]]:
  """[(exit status, output)] once every process has ended; none outlives the call."""
  try:
    outs = [p.communicate(timeout=timeout_s) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [(p.returncode, out) for p, (out, _) in zip(procs, outs, strict=True)]


def launch(workdir, processes: int, devices_each: int, extra=(), tries: int = 3) -> None:
  """Runs the trainers to the end; each must exit 0 (AssertionError with its log otherwise)."""
  before = workdir + '.before'
  shutil.rmtree(before, ignore_errors=True)
  if os.path.isdir(workdir):
    shutil.copytree(workdir, before)
  for attempt in range(tries):
    if attempt:  # back to the workdir as it was before the failed try
      shutil.rmtree(workdir, ignore_errors=True)
      if os.path.isdir(before):
        shutil.copytree(before, workdir)
    results = finish(start(workdir, processes, devices_each, extra))
    if all(rc == 0 for rc, _ in results):
      return
    if attempt + 1 < tries and any(m in log for m in _RETRY for _, log in results):
      continue
    bad = next(i for i, (rc, _) in enumerate(results) if rc != 0)
    raise AssertionError(f'process {bad} of {processes} failed:\n{results[bad][1][-3000:]}')


def state(workdir, step: int) -> dict:
  """The whole train state of a checkpoint, onto this process's first device whatever wrote it."""
  import jax
  import orbax.checkpoint as ocp

  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path).item_metadata
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
  return ckptr.restore(path, target)


def params(workdir, step: int = 6):
  return state(workdir, step)['params']


def leaves(tree) -> list[np.ndarray]:
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def records(workdir, kind: str = 'train') -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['kind'] == kind]
