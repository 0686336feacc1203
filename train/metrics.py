"""Peak FLOPs of known devices, MFU, and the metric writers (JSONL, TensorBoard, console).

Only process 0 writes; other processes get a writer that does nothing. metrics.jsonl is strict
JSON: a non-finite number (a diverged loss) is written as null.
"""

import contextlib
import json
import logging as pylogging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from core import files, rundir
from train import stops

# Dense bfloat16 peak FLOP/s per JAX device, from the vendors' data sheets. TPU v4 and v5p
# present one device per chip (two TensorCores, megacore).
PEAK_FLOPS = {
  'TPU v4': 275e12,
  'TPU v5 lite': 197e12,  # v5e
  'TPU v5e': 197e12,
  'TPU v5p': 459e12,
  'TPU v5': 459e12,
  'TPU v6 lite': 918e12,  # v6e (Trillium)
  'TPU v6e': 918e12,
  'A100': 312e12,
  'H100': 989e12,  # SXM; dense, without sparsity
  'H200': 989e12,
}


def measure_cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
  """This host's float32 matmul throughput (FLOP/s): the CPU 'peak' MFU is measured against."""
  cpu = jax.devices('cpu')[0]
  a = jax.device_put(jnp.ones((n, n), jnp.float32), cpu)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def peak_flops(configured: float = 0.0) -> tuple[float, str]:
  """Total peak FLOP/s of all devices in the job, and where the figure came from."""
  if configured:
    return configured, 'config'
  dev = jax.devices()[0]
  if dev.platform == 'cpu':
    # Fake CPU devices share the host's cores: the host's matmul rate is the whole peak.
    return measure_cpu_matmul_flops() * jax.process_count(), 'measured f32 matmul'
  kind = dev.device_kind
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops * jax.device_count(), f'{kind} table'
  logging.warning('unknown device %r: MFU not reported (set config.peak_flops)', kind)
  return 0.0, 'unknown'


class MetricsWriter:
  """Appends records to the run's metrics.jsonl and TensorBoard; prints a progress line."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.total_steps = total_steps
    self._t0, self._step0 = time.time(), None
    if not enabled:
      return
    files.makedirs(workdir)
    path = rundir.RunDir(workdir).metrics_path
    _drop_records_after(path, resume_step)
    self._jsonl = files.AppendFile(path)
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(rundir.RunDir(workdir).tensorboard)
    except ImportError:  # TensorBoard files are a convenience, JSONL is the record.
      self._tb = None

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    record = {k: json_value(v) for k, v in record.items()}
    self._jsonl.write_line(json.dumps(record, allow_nan=False))
    if self._tb is not None:
      prefix = record.get('kind', 'train')
      for k, v in record.items():
        if k not in ('kind', 'step') and isinstance(v, int | float):
          self._tb.add_scalar(f'{prefix}/{k}', v, record['step'])

  def progress(self, step: int, text: str) -> None:
    """Console line with an ETA from the rate since the first call."""
    if not self.enabled:
      return
    now = time.time()
    if self._step0 is None:
      self._step0, self._t0 = step, now
    rate = (step - self._step0) / max(now - self._t0, 1e-9)
    eta = (self.total_steps - step) / rate if rate > 0 else float('nan')
    logging.info('step %d/%d  %s  eta %s', step, self.total_steps, text, _hms(eta))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def json_value(v):
  """A JSON-ready scalar: numpy scalars unwrapped, non-finite floats as None (null)."""
  if isinstance(v, np.generic | np.ndarray):
    v = v.item()
  return None if isinstance(v, float) and not math.isfinite(v) else v


def _drop_records_after(path: str, step: int) -> None:
  """Forgets records past the step a run resumes from, written before a SIGKILL (or cut)."""
  if not files.exists(path):
    return
  lines = files.read_text(path).splitlines(keepends=True)

  def kept(line: str) -> bool:
    try:
      return line.endswith('\n') and json.loads(line).get('step', 0) <= step
    except ValueError:
      return False

  keep = [line for line in lines if kept(line)]
  if len(keep) != len(lines):
    files.write_text(path, ''.join(keep))


def _hms(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  s = int(seconds)
  return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


_EXPECTED_WARNINGS = ('Using custom data configuration', 'has no dataset_info.json')


class _OnlyOwnInfo(pylogging.Filter):
  """Drops INFO chatter of libraries (Orbax logs every save at INFO); keeps their warnings."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    noisy = ('/orbax/', '/jax/', '/tensorflow_datasets/')
    if record.levelno < pylogging.WARNING:
      return not any(n in record.pathname for n in noisy)
    # TFDS warns about our builder's per-corpus config and its first preparation: expected.
    return not any(m in str(record.msg) for m in _EXPECTED_WARNINGS)


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_OnlyOwnInfo())


class _FileHandler(pylogging.Handler):
  """Every log record, libraries' INFO included, into a run file (local or gs://)."""

  def __init__(self, path: str):
    super().__init__(pylogging.INFO)
    self._file = files.AppendFile(path, min_interval_s=5.0)
    self._busy = False
    self.setFormatter(pylogging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))

  def emit(self, record: pylogging.LogRecord) -> None:
    if self._busy:  # a record logged while writing one (by the gs:// client): drop it
      return
    self._busy = True
    try:
      self._file.write_line(self.format(record))
    except Exception:  # noqa: BLE001 - a log line must never stop training
      self.handleError(record)
    finally:
      self._busy = False

  def close(self) -> None:
    try:
      self._file.close()
    finally:
      super().close()


@contextlib.contextmanager
def log_to_file(workdir: str):
  """Within the block, all log records (the console shows fewer) also go to
  workdir/verbose_log[.<process>].txt; the file is flushed and detached at the end."""
  pid = jax.process_index()
  path = rundir.RunDir(workdir).verbose_log_path(pid)
  files.makedirs(workdir)
  handler = _FileHandler(path)
  pylogging.getLogger().addHandler(handler)
  try:
    yield path
  finally:
    pylogging.getLogger().removeHandler(handler)
    handler.close()


class Recorder:
  """Fetches each step's metrics; writes the means since the last record every `log_every`.

  Whatever the train step returns in its metrics dict is recorded: a new metric is added in
  the step alone. The divergence guard reads the same numbers.
  """

  def __init__(self, writer, config, flops_tok, peak, seq_len):
    self.writer, self.config = writer, config
    self.flops_tok, self.peak = flops_tok, peak
    self.tokens_per_step = config.train.global_batch * seq_len
    self.patience = config.train.nan_patience
    self.window = {}  # metric -> values since the last record
    self.last = {}  # the newest step's metrics
    self.last_fetch = None  # (step, time) of the last record
    self.bad_steps = 0  # consecutive steps with a non-finite metric

  def record(self, step: int, dev_metrics, good, force: bool = False) -> None:
    self.last = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    now = time.time()
    for k, v in self.last.items():
      self.window.setdefault(k, []).append(v)
    finite = all(math.isfinite(v) for v in self.last.values())
    self.bad_steps = 0 if finite else self.bad_steps + 1
    diverged = self.bad_steps >= self.patience
    first = self.last_fetch is None  # the first step of an invocation: no rate yet
    if not (first or force or diverged or step % self.config.log_every == 0):
      return
    means = {k: float(np.mean(v)) for k, v in self.window.items()}
    self.window = {}
    if first:
      tps = dt = mfu = None
    else:
      prev_step, prev_t = self.last_fetch
      dt = (now - prev_t) / max(step - prev_step, 1)
      tps = self.tokens_per_step / dt
      mfu = tps * self.flops_tok / self.peak if self.peak else float('nan')
    tokens = step * self.tokens_per_step
    self.writer.write(
      {
        'kind': 'train',
        'step': step,
        **means,
        'tokens': tokens,
        'flops': self.flops_tok * tokens,
        'tokens_per_s': tps,
        'step_time_s': dt,
        'mfu': mfu,
      }
    )
    self.last_fetch = (step, now)
    if not first:
      loss = means.get('loss', float('nan'))
      self.writer.progress(step, f'loss {loss:.4f}  {tps:,.0f} tok/s  MFU {mfu:.1%}')
    if diverged:
      bad = ', '.join(k for k, v in self.last.items() if not math.isfinite(v))
      raise stops.Diverged(
        f'diverged: non-finite {bad} at step {step} ({self.bad_steps} consecutive step(s), '
        f'train.nan_patience={self.patience}); last good checkpoint: {good.path()}'
      )
