"""The training loop: validate, build sharded state (or resume it), train, evaluate, checkpoint.

Everything that can be wrong with the input is checked in `prepare()` before anything is
compiled or written. The loop dispatches step t before fetching step t-1's metrics, so the
host never waits for the device except to read numbers that are already computed.

A run that cannot go on raises a `Stopped` whose message is the one line to print and whose
`exit_code` tells a scheduler what happened:
  75 (EX_TEMPFAIL) preempted by SIGTERM/SIGINT: a checkpoint was saved; rerun the same command;
  65 (EX_DATAERR)  diverged: non-finite loss/gradients; non-finite parameters are never saved;
  74 (EX_IOERR)    a checkpoint could not be written; the previous checkpoints are kept.
"""

import dataclasses
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging

from data.pipeline import DataPipeline
from models import accounting
from models.transformer import ModelConfig
from train import checkpoint, files, metrics, preemption, profiling, sharding, validate
from train.step import compile_train_step, make_trainer

EXIT_PREEMPTED, EXIT_DIVERGED, EXIT_SAVE_FAILED = 75, 65, 74


class Stopped(Exception):
  """The run ended before train.steps; str(e) is one line for the console."""

  exit_code = 1


class Preempted(Stopped):
  exit_code = EXIT_PREEMPTED


class Diverged(Stopped):
  exit_code = EXIT_DIVERGED


class SaveFailed(Stopped):
  exit_code = EXIT_SAVE_FAILED


def configure_backend(config) -> None:
  """Settings that must be in place before JAX starts its backend (call before any device use)."""
  if config.train.deterministic:
    flag = '--xla_gpu_deterministic_ops=true'
    if flag not in os.environ.get('XLA_FLAGS', ''):
      os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {flag}'.strip()


@dataclasses.dataclass
class Prepared:
  """A validated run: everything decided, nothing compiled or written yet."""

  config: object
  workdir: str
  model_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  pipe: DataPipeline
  resume_steps: list[int]


def _check_batch(config, mesh) -> None:
  t, e = config.train, config.eval
  shards = math.prod(mesh.shape[a] for a in sharding.batch_axes(config.sharding_rules))
  if t.grad_accum < 1 or t.global_batch % t.grad_accum:
    raise ValueError(
      f'train.grad_accum={t.grad_accum} must divide train.global_batch={t.global_batch}'
    )
  micro = t.global_batch // t.grad_accum
  if micro % shards:
    raise ValueError(
      f'the (micro)batch of {micro} sequences does not split over the {shards} '
      f'data-parallel devices of mesh {dict(mesh.shape)}; make train.global_batch/'
      'train.grad_accum a multiple of it'
    )
  if e.batch_size % shards:
    raise ValueError(
      f'eval.batch_size={e.batch_size} does not split over the {shards} data-parallel devices'
    )
  for name, b in (('train.global_batch', t.global_batch), ('eval.batch_size', e.batch_size)):
    if b % jax.process_count():
      raise ValueError(f'{name}={b} does not split over {jax.process_count()} processes')


def _check_rows_per_process(config, mesh) -> None:
  """Each process must own the contiguous block of batch rows its loader produces."""
  b = config.train.global_batch
  batch_sh = sharding.batch_sharding(mesh, config.sharding_rules)
  per = b // jax.process_count()
  want = (jax.process_index() * per, (jax.process_index() + 1) * per)
  rows = batch_sh.addressable_devices_indices_map((b, 1)).values()
  starts = [r[0].start or 0 for r in rows]
  stops = [r[0].stop if r[0].stop is not None else b for r in rows]
  if (min(starts), max(stops)) != want:
    raise ValueError(
      f'mesh {dict(mesh.shape)} does not split the batch over processes (process '
      f'{jax.process_index()} holds rows {min(starts)}..{max(stops)}); put the processes '
      'along the data/fsdp axes'
    )


def prepare(config, workdir: str) -> Prepared:
  """All validation: raises a one-line error before anything is compiled or written."""
  validate.check_config(config)  # ranges, names and the model's shape rules
  mesh = sharding.make_mesh(config.mesh)
  _check_batch(config, mesh)
  _check_rows_per_process(config, mesh)
  pipe = DataPipeline(
    config.data,
    global_batch=config.train.global_batch,
    seq_len=config.data.seq_len,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  model_cfg = ModelConfig.from_config(config.model, vocab_size=pipe.vocab_size)
  steps = checkpoint.existing_steps(workdir)
  if steps:
    mngr = checkpoint.manager(workdir, config.checkpoint)
    saved = None
    for step in reversed(steps):  # the newest readable config
      try:
        saved = checkpoint.saved_config(mngr, step)
        break
      except Exception:  # noqa: BLE001 - a damaged step: restore_latest reports it later.
        continue
    mngr.close()
    if saved is not None:
      checkpoint.check_compatible(saved, config.to_dict(), workdir)
  elif config.train.init_from:  # a branch: its parent's checkpoint must fit this run
    checkpoint.check_parent(config.train.init_from, config.train.init_step, config.to_dict())
  return Prepared(config, workdir, model_cfg, mesh, pipe, steps)


def _to_global(local: dict, sh, global_rows: int) -> dict:
  return {
    k: jax.make_array_from_process_local_data(sh, v, (global_rows, *v.shape[1:]))
    for k, v in local.items()
  }


def _local_rows(global_array: jax.Array) -> np.ndarray:
  """This process's rows of a row-sharded global array, in order."""
  shards = sorted(global_array.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # replicas along non-batch axes hold the same rows
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def log_spaced_steps(total: int, points: int) -> set[int]:
  """About `points` steps from ~total/50 to `total`, evenly spaced in log(step)."""
  if points < 2 or total < 2:
    return set()
  first = max(1, total // 50)
  return {int(round(s)) for s in np.geomspace(first, total, points)}


def evaluate(trainer, params, batches: list[dict], bytes_per_token: float) -> dict:
  """Mean per-sequence loss on the fixed eval batches, its standard error, bits per byte."""
  losses = np.concatenate([np.asarray(trainer.eval_step(params, b)) for b in batches])
  mean = float(losses.mean())
  sem = float(losses.std(ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else float('nan')
  return {'eval_loss': mean, 'eval_loss_sem': sem, 'eval_bpb': mean / math.log(2) / bytes_per_token}


def run(p: Prepared, stop_at: int | None = None) -> dict | None:
  """Trains (or resumes) the prepared run to config.train.steps; returns the summary.

  `stop_at` ends this invocation early after that step, with a checkpoint, as a preemption
  would (used by tests and by schedulers that run in slices); no summary then. SIGTERM/SIGINT
  do the same at the next step and raise `Preempted`; see the module docstring for the others.
  """
  config, workdir = p.config, p.workdir
  primary = jax.process_index() == 0
  t_start = time.time()
  total = config.train.steps
  seq_len, global_batch = config.data.seq_len, config.train.global_batch
  counts = accounting.param_counts(p.model_cfg)
  flops_tok = accounting.flops_per_token(p.model_cfg, seq_len)
  config_dict = config.to_dict()
  if primary:
    files.makedirs(workdir)
    files.write_text(files.join(workdir, 'config.json'), json.dumps(config_dict, indent=2))
  logging.info(
    'model: %s params (%s non-embedding), %.3g training FLOPs/token; mesh %s',
    f'{counts["total"]:,}',
    f'{counts["nonembedding"]:,}',
    flops_tok,
    dict(p.mesh.shape),
  )

  trainer = make_trainer(config, p.model_cfg, p.mesh)
  mngr = checkpoint.manager(workdir, config.checkpoint)
  data_sh = trainer.batch_sharding
  it = p.pipe.train_iterator()
  local_state = it.get_state()
  abstract_data = jax.ShapeDtypeStruct(
    (global_batch, local_state.shape[1]), local_state.dtype, sharding=data_sh
  )
  restored = None
  if p.resume_steps:
    restored = checkpoint.restore_trainer_state(mngr, trainer, abstract_data)
  if restored is not None:
    start, state, data_state = restored
    it.set_state(_local_rows(data_state))
    logging.info('resumed from step %d', start)
  elif config.train.init_from:  # a branch: the parent's state at init_step, this run's schedule
    abstract = checkpoint.abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
    start = config.train.init_step
    state, data_state = checkpoint.restore_step(
      config.train.init_from, start, abstract, abstract_data
    )
    it.set_state(_local_rows(data_state))
    logging.info('branched from %s at step %d', config.train.init_from, start)
  else:
    start, state = 0, trainer.init()

  eval_batches = [
    _to_global(b, data_sh, config.eval.batch_size)
    for b in p.pipe.eval_batches(config.eval.batches, config.eval.batch_size)
  ]
  peak, peak_src = metrics.peak_flops(config.peak_flops)
  writer = metrics.MetricsWriter(workdir, total, enabled=primary, resume_step=start)
  rec = _Recorder(writer, config, flops_tok, peak, seq_len)
  good = _LastGood(mngr, start if restored is not None else None)

  def data_state_global():
    return jax.make_array_from_process_local_data(data_sh, it.get_state(), abstract_data.shape)

  step_fn, compile_s = trainer.train_step, None
  pending = None  # (step, metrics on device)
  last_eval = None
  # Optional extra evaluations at log-spaced steps (learning curves on a log-FLOPs axis).
  log_evals = log_spaced_steps(total, config.eval.get('log_points', 0))
  end = total if stop_at is None else min(stop_at, total)
  preempted = False
  watch = preemption.Watch()
  trace = profiling.StepTrace(config.train.get('profile_steps', ''), total, workdir, start)
  try:
    for step in range(start, end):
      batch = _to_global(next(it), data_sh, global_batch)
      trace.before(step)
      if compile_s is None:
        t0 = time.time()
        trainer, step_fn = compile_train_step(
          trainer, p.model_cfg, lambda cfg: make_trainer(config, cfg, p.mesh), state, batch
        )
        compile_s = time.time() - t0
        logging.info('compiled the train step in %.1fs', compile_s)
      state, step_metrics = step_fn(state, batch)  # dispatch step t ...
      if pending is not None:  # ... then fetch step t-1's numbers
        rec.record(*pending, good)
      pending = (step + 1, step_metrics)
      done = step + 1
      trace.after(done, (state, step_metrics), step_fn)
      preempted = watch.reached(done) and done < end  # at `end` the run ends anyway
      if done % config.eval.every == 0 or done == total or done in log_evals:
        ev = evaluate(trainer, state['params'], eval_batches, p.pipe.bytes_per_token)
        last_eval = ev
        writer.write(
          {
            'kind': 'eval',
            'step': done,
            **ev,
            'tokens': done * global_batch * seq_len,
            'flops': flops_tok * done * global_batch * seq_len,
          }
        )
        writer.progress(done, f'eval loss {ev["eval_loss"]:.4f} ± {ev["eval_loss_sem"]:.4f}')
      if done % config.checkpoint.every == 0 or done == end or preempted:
        rec.record(*pending, good, force=done == end or preempted)  # diverged: stops here
        pending = None
        good.save(done, state, data_state_global(), config_dict)
      else:
        good.check()
      if preempted:
        end = done
        break
    if pending is not None:
      rec.record(*pending, good, force=True)
    good.wait()
  finally:
    trace.close()
    watch.close()
    writer.close()
    good.close()
  if preempted:
    why = watch.received or 'a preemption notice on another process'
    raise Preempted(
      f'preempted by {why}: saved step {end} to {good.path()}; rerun the same command to continue'
    )
  if end < total:
    return None
  if last_eval is None:
    last_eval = evaluate(trainer, state['params'], eval_batches, p.pipe.bytes_per_token)
  summary = {
    'n_params': counts['total'],
    'n_params_embed': counts['embedding'],
    'n_params_nonembed': counts['nonembedding'],
    'flops_per_token': flops_tok,
    'final_step': total,
    'tokens_seen': total * global_batch * seq_len,
    'final_train_loss': metrics.json_value(rec.last.get('loss')),
    'final_eval_loss': last_eval['eval_loss'],
    'final_eval_loss_sem': last_eval['eval_loss_sem'],
    'final_eval_bpb': last_eval['eval_bpb'],
    'wall_time_s': time.time() - t_start,
    'compile_time_s': compile_s,
    'peak_flops': peak,
    'peak_flops_source': peak_src,
    'config': config_dict,
  }
  if primary:
    files.write_text(files.join(workdir, 'summary.json'), json.dumps(summary, indent=2))
  return summary


class _LastGood:
  """Saves checkpoints of finite parameters only, and knows the newest one that was written."""

  def __init__(self, mngr, step: int | None):
    self.mngr, self.step = mngr, step

  def path(self, step: int | None = None) -> str:
    step = self.step if step is None else step
    return 'none' if step is None else checkpoint.directory(self.mngr, step)

  def save(self, step: int, state, data_state, config_dict: dict) -> None:
    if not bool(checkpoint.all_finite(state)):
      raise Diverged(
        f'diverged: non-finite parameters at step {step}, not saved; last good checkpoint: '
        f'{self.path()}'
      )
    self.wait()  # the previous save must have worked (Orbax would wait for it anyway)
    try:
      checkpoint.save(self.mngr, step, state, data_state, config_dict)
    except Exception as e:  # noqa: BLE001 - any failure to write stops the run
      raise self._failed(step, e) from e
    self.step = step

  def check(self) -> None:
    """Raises if an asynchronous save has failed in the background (checked at every step)."""
    try:
      self.mngr.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._failed(self.step, e) from e

  def wait(self) -> None:
    try:
      self.mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._failed(self.step, e) from e

  def close(self) -> None:
    try:
      self.mngr.close()  # waits for a save in flight; a failing one was reported already
    except Exception:  # noqa: BLE001, S110
      pass

  def _failed(self, step, e: Exception) -> SaveFailed:
    first = str(e).splitlines()[0][:300] if str(e) else ''
    kept = [s for s in self.mngr.all_steps() if s != step] or ['none']
    return SaveFailed(
      f'checkpoint save at step {step} to {self.mngr.directory} failed ({type(e).__name__}: '
      f'{first}); kept checkpoints: {kept}'
    )


class _Recorder:
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

  def record(self, step: int, dev_metrics, good: _LastGood, force: bool = False) -> None:
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
      raise Diverged(
        f'diverged: non-finite {bad} at step {step} ({self.bad_steps} consecutive step(s), '
        f'train.nan_patience={self.patience}); last good checkpoint: {good.path()}'
      )
