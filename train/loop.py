"""The training loop: validate, build sharded state (or resume it), train, evaluate, checkpoint.

Everything that can be wrong with the input is checked in `prepare()` before anything is
compiled or written. The loop dispatches step t before fetching step t-1's metrics, so the
host never waits for the device except to read numbers that are already computed.

A run that cannot go on raises a `train.stops.Stopped` (preempted, diverged, save failed)
whose message is the one line to print and whose `exit_code` tells a scheduler what happened.
What the loop uses lives beside what it serves: the batch checks and placement in sharding, the
last-good checkpoint tracker in checkpoint, the metrics recorder in metrics, the run folder in
core/rundir.py.
"""

import dataclasses
import math
import time

import jax
import numpy as np
from absl import logging

from core import rundir
from data.pipeline import DataPipeline
from models import accounting
from models.shapes import ModelConfig
from train import checkpoint, metrics, preemption, profiling, sharding, stops, validate
from train.step import compile_train_step, make_trainer


@dataclasses.dataclass
class Prepared:
  """A validated run: everything decided, nothing compiled or written yet."""

  config: object
  workdir: str
  model_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  pipe: DataPipeline
  resume_steps: list[int]


def prepare(config, workdir: str) -> Prepared:
  """All validation: raises a one-line error before anything is compiled or written."""
  checked = validate.check_config(config)  # ranges, names, the model's shape rules, the mesh
  mesh = sharding.mesh_for(config, checked.mesh_shape)
  pipe = DataPipeline(
    config.data,
    global_batch=config.train.global_batch,
    seq_len=config.data.seq_len,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  model_cfg = checked.model.with_vocab(pipe.vocab_size)
  steps = checkpoint.check_start(workdir, config)
  return Prepared(config, workdir, model_cfg, mesh, pipe, steps)


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


def run(p: Prepared, stop_at: int | None = None) -> rundir.Summary | None:
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
  run_dir = rundir.RunDir(workdir)
  if primary:
    run_dir.write_config(config_dict)
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
  t = config.train
  start, state, data_state, resumed = checkpoint.start_from(
    mngr, trainer, abstract_data, p.resume_steps, t.init_from, t.init_step
  )
  if data_state is not None:
    it.set_state(sharding.local_rows(data_state))

  eval_batches = [
    sharding.to_global(b, data_sh, config.eval.batch_size)
    for b in p.pipe.eval_batches(config.eval.batches, config.eval.batch_size)
  ]
  peak, peak_src = metrics.peak_flops(config.peak_flops)
  writer = metrics.MetricsWriter(workdir, total, enabled=primary, resume_step=start)
  rec = metrics.Recorder(writer, config, flops_tok, peak, seq_len)
  good = checkpoint.LastGood(mngr, start if resumed else None)

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
      batch = sharding.to_global(next(it), data_sh, global_batch)
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
    raise stops.Preempted(
      f'preempted by {why}: saved step {end} to {good.path()}; rerun the same command to continue'
    )
  if end < total:
    return None
  if last_eval is None:
    last_eval = evaluate(trainer, state['params'], eval_batches, p.pipe.bytes_per_token)
  summary = rundir.Summary(
    n_params=counts['total'],
    n_params_embed=counts['embedding'],
    n_params_nonembed=counts['nonembedding'],
    flops_per_token=flops_tok,
    final_step=total,
    tokens_seen=total * global_batch * seq_len,
    final_train_loss=metrics.json_value(rec.last.get('loss')),
    final_eval_loss=last_eval['eval_loss'],
    final_eval_loss_sem=last_eval['eval_loss_sem'],
    final_eval_bpb=last_eval['eval_bpb'],
    wall_time_s=time.time() - t_start,
    compile_time_s=compile_s,
    peak_flops=peak,
    peak_flops_source=peak_src,
    config=config_dict,
  )
  if primary:
    run_dir.write_summary(summary)
  return summary
