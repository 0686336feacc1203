"""Orbax checkpoints: train state + data-iterator state + config, saved asynchronously.

Layout: workdir/checkpoints/<step>/{state,data,config}. Every process takes part in a save
(each writes its shards); restoring onto a different mesh or device count works because
the restore targets carry the *current* shardings.
"""

import logging as std_logging
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from core import rundir
from train import stops

# Config sections that must match for a checkpoint to be resumed.
_MUST_MATCH = ('model',)
_ITEMS = ('state', 'data', 'config')  # what each step holds


def manager(workdir: str, ckpt_cfg) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=ckpt_cfg.max_to_keep,
    enable_async_checkpointing=ckpt_cfg.async_save,
    create=True,
  )
  return ocp.CheckpointManager(
    rundir.RunDir(workdir).checkpoints, options=options, item_names=_ITEMS
  )


def reader(workdir: str) -> ocp.CheckpointManager:
  """A manager that only reads another run's checkpoints (a branch's parent); close it."""
  return ocp.CheckpointManager(rundir.RunDir(workdir).checkpoints, item_names=_ITEMS)


def existing_steps(workdir: str) -> list[int]:
  """Steps with a finished checkpoint in workdir, found without creating anything."""
  path = epath.Path(rundir.RunDir(workdir).checkpoints)
  if not path.is_dir():
    return []
  return sorted(int(d.name) for d in path.iterdir() if d.name.isdigit())


def saved_config(mngr: ocp.CheckpointManager, step: int) -> dict:
  restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return restored['config']


def check_start(workdir: str, config) -> list[int]:
  """The steps a run in `workdir` can resume from (oldest first). Refuses, in one line, to resume
  a checkpoint of another model or batch, or to branch from a parent checkpoint that does not
  fit this run (train.init_from). Reads configs only; writes nothing."""
  steps = existing_steps(workdir)
  if steps:
    mngr = manager(workdir, config.checkpoint)
    saved = None
    for step in reversed(steps):  # the newest readable config
      try:
        saved = saved_config(mngr, step)
        break
      except Exception:  # noqa: BLE001 - a damaged step: restore_latest reports it later.
        continue
    mngr.close()
    if saved is not None:
      check_compatible(saved, config.to_dict(), workdir)
  elif config.train.init_from:  # a branch: its parent's checkpoint must fit this run
    check_parent(config.train.init_from, config.train.init_step, config.to_dict())
  return steps


def check_compatible(saved: dict, config: dict, workdir: str) -> None:
  """Refuses to resume (and so to overwrite) a checkpoint of a different model."""
  from models.shapes import LATER_KEYS, ModelConfig

  # A run saved before a model key existed had that key's default (GPT-3's block, SP).
  newer = {'model': {k: getattr(ModelConfig, k) for k in LATER_KEYS}}
  for section in _MUST_MATCH:
    old = {**newer.get(section, {}), **saved.get(section, {})}
    new = config.get(section, {})
    diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
    if diff:
      desc = ', '.join(
        f'{section}.{k}: saved {a!r} vs now {b!r}' for k, (a, b) in sorted(diff.items())
      )
      raise ValueError(
        f'{workdir} holds a checkpoint of a different model ({desc}); '
        'use a new --workdir or restore the original config'
      )
  old_b = saved.get('train', {}).get('global_batch')
  new_b = config.get('train', {}).get('global_batch')
  if old_b != new_b:
    raise ValueError(
      f'{workdir} holds a checkpoint with train.global_batch={old_b}, now {new_b}: the data '
      'iterator state cannot be carried over; use a new --workdir'
    )


def check_parent(parent: str, step: int, config: dict) -> None:
  """A branch (train.init_from) must start from an existing checkpoint of the same model shape
  and batch; raises ValueError (one line) otherwise. Reads only the parent's saved config."""
  what = f'train.init_from={parent}'
  if step not in existing_steps(parent):
    have = existing_steps(parent)
    raise ValueError(f'{what} has no checkpoint at step {step} (it has {have or "none"})')
  mngr = reader(parent)
  try:
    saved = saved_config(mngr, step)
  finally:
    mngr.close()
  old, new = saved.get('model', {}), config.get('model', {})
  diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  if diff:
    desc = ', '.join(f'model.{k}: {old.get(k)!r} there vs {new.get(k)!r} here' for k in diff)
    raise ValueError(f'{what} is a model of another shape ({desc}); a branch keeps the model')
  old_b, new_b = saved.get('train', {}).get('global_batch'), config['train']['global_batch']
  if old_b != new_b:
    raise ValueError(
      f'{what} ran train.global_batch={old_b}, this run {new_b}: its data-iterator state '
      'cannot be carried over'
    )


def directory(mngr: ocp.CheckpointManager, step: int) -> str:
  return str(mngr.directory / str(step))


@jax.jit
def all_finite(tree) -> jax.Array:
  """One boolean: every floating-point value in the tree is finite."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def save(mngr: ocp.CheckpointManager, step: int, state, data_state, config: dict) -> None:
  """Starts a save (asynchronous if so configured). Errors of an earlier one are raised here."""
  mngr.check_for_errors()
  mngr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.StandardSave({'rows': data_state}),
      config=ocp.args.JsonSave(config),
    ),
  )


def _quiet_failed_restore_stragglers() -> None:
  """After a failed restore, reads that were still in flight finish on their own, and report
  in two ways that bypass the one warning line of restore_latest:

  * TensorStore reads complete on C++ threads and call back into Orbax's event loop, which
    the failure already closed: each raises 'RuntimeError: Event loop is closed', reported as
    unraisable (sys.unraisablehook: a traceback on stderr, ~100 of them per fallback);
  * an Orbax metadata read whose result nobody awaits any more is logged by asyncio as 'Task
    exception was never retrieved', with its traceback.

  Those, and only those, are dropped (installed once per process)."""
  if getattr(sys.unraisablehook, '_drops_late_tensorstore', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    exc = unraisable.exc_value
    if not (type(exc) is RuntimeError and str(exc) == 'Event loop is closed'):
      previous(unraisable)

  hook._drops_late_tensorstore = True
  sys.unraisablehook = hook

  def orphaned_orbax_task(record) -> bool:
    text = record.getMessage()
    return not (text.startswith('Task exception was never retrieved') and 'orbax' in text)

  std_logging.getLogger('asyncio').addFilter(orphaned_orbax_task)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, abstract_data=None, step=None):
  """Restores the newest readable checkpoint: (step, state, data_state), or None.

  Without `abstract_data` the data-iterator state is not read (inspection tools).
  A damaged newest checkpoint (truncated arrays, missing item) is skipped with a warning and
  the previous one is tried; nothing is deleted. With `step`, that checkpoint or an error.
  """
  steps = sorted(mngr.all_steps(), reverse=True) if step is None else [step]
  _quiet_failed_restore_stragglers()  # a failing read's stragglers fire before `except` runs
  for i, at in enumerate(steps):
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if abstract_data is not None:
      items['data'] = ocp.args.StandardRestore({'rows': abstract_data})
    try:
      restored = mngr.restore(at, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - any failure to read means: try an older one.
      older = steps[i + 1] if i + 1 < len(steps) else None
      logging.warning(
        'checkpoint at step %d is unreadable (%s: %s); %s',
        at,
        type(e).__name__,
        str(e).splitlines()[0][:200] if str(e) else '',
        f'falling back to step {older}' if older is not None else 'no older checkpoint left',
      )
      continue
    data = restored['data']['rows'] if abstract_data is not None else None
    return at, restored['state'], data
  if steps:
    raise RuntimeError(f'no readable checkpoint among steps {steps} in {mngr.directory}')
  return None


def restore_trainer_state(mngr: ocp.CheckpointManager, trainer, abstract_data=None, step=None):
  """The one restore of a train state: training resumes through it, a branch starts through it
  (`step`: the parent's checkpoint, from `reader`), and every tool that loads a trained model
  (train/restore.py) does too. `trainer` (train/step.make_trainer) gives the abstract state and
  the shardings to restore onto; returns restore_latest's tuple or None."""
  abstract = abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
  return restore_latest(mngr, abstract, abstract_data, step)


def start_from(mngr, trainer, abstract_data, resume_steps, init_from: str = '', init_step=0):
  """Where a run starts: (step, state, data-iterator state or None, resumed?).

  Its own newest readable checkpoint if it has any (`resume_steps`); else, for a branch, its
  parent's checkpoint at `init_step` (parameters, optimizer state and data state, to go on
  under this run's schedule); else step 0 with a fresh `trainer.init()`.
  """
  restored = restore_trainer_state(mngr, trainer, abstract_data) if resume_steps else None
  if restored is not None:
    logging.info('resumed from step %d', restored[0])
    return (*restored, True)
  if init_from:
    parent = reader(init_from)
    try:
      restored = restore_trainer_state(parent, trainer, abstract_data, step=init_step)
    finally:
      parent.close()
    logging.info('branched from %s at step %d', init_from, init_step)
    return (*restored, False)
  return 0, trainer.init(), None, False


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying concrete NamedShardings: what Orbax restores onto."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
  )


class LastGood:
  """Saves checkpoints of finite parameters only, and knows the newest one that was written."""

  def __init__(self, mngr, step: int | None):
    self.mngr, self.step = mngr, step

  def path(self, step: int | None = None) -> str:
    step = self.step if step is None else step
    return 'none' if step is None else directory(self.mngr, step)

  def save(self, step: int, state, data_state, config_dict: dict) -> None:
    if not bool(all_finite(state)):
      raise stops.Diverged(
        f'diverged: non-finite parameters at step {step}, not saved; last good checkpoint: '
        f'{self.path()}'
      )
    self.wait()  # the previous save must have worked (Orbax would wait for it anyway)
    try:
      save(self.mngr, step, state, data_state, config_dict)
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

  def _failed(self, step, e: Exception) -> stops.SaveFailed:
    first = str(e).splitlines()[0][:300] if str(e) else ''
    kept = [s for s in self.mngr.all_steps() if s != step] or ['none']
    return stops.SaveFailed(
      f'checkpoint save at step {step} to {self.mngr.directory} failed ({type(e).__name__}: '
      f'{first}); kept checkpoints: {kept}'
    )
