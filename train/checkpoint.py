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

from train import files

# Config sections that must match for a checkpoint to be resumed.
_MUST_MATCH = ('model',)


def manager(workdir: str, ckpt_cfg) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=ckpt_cfg.max_to_keep,
    enable_async_checkpointing=ckpt_cfg.async_save,
    create=True,
  )
  return ocp.CheckpointManager(
    files.join(files.absolute(workdir), 'checkpoints'),
    options=options,
    item_names=('state', 'data', 'config'),
  )


def existing_steps(workdir: str) -> list[int]:
  """Steps with a finished checkpoint in workdir, found without creating anything."""
  path = epath.Path(files.join(workdir, 'checkpoints'))
  if not path.is_dir():
    return []
  return sorted(int(d.name) for d in path.iterdir() if d.name.isdigit())


def saved_config(mngr: ocp.CheckpointManager, step: int) -> dict:
  restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return restored['config']


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
  mngr = ocp.CheckpointManager(
    files.join(files.absolute(parent), 'checkpoints'), item_names=('state', 'data', 'config')
  )
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


def restore_step(parent: str, step: int, abstract_state, abstract_data):
  """(state, data_state) of checkpoint `step` in run directory `parent` (a branch's start)."""
  mngr = ocp.CheckpointManager(
    files.join(files.absolute(parent), 'checkpoints'), item_names=('state', 'data', 'config')
  )
  try:
    restored = mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.StandardRestore({'rows': abstract_data}),
      ),
    )
  finally:
    mngr.close()
  return restored['state'], restored['data']['rows']


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


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, abstract_data=None):
  """Restores the newest readable checkpoint: (step, state, data_state), or None.

  Without `abstract_data` the data-iterator state is not read (inspection tools).
  A damaged newest checkpoint (truncated arrays, missing item) is skipped with a warning and
  the previous one is tried; nothing is deleted.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  _quiet_failed_restore_stragglers()  # a failing read's stragglers fire before `except` runs
  for i, step in enumerate(steps):
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if abstract_data is not None:
      items['data'] = ocp.args.StandardRestore({'rows': abstract_data})
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - any failure to read means: try an older one.
      older = steps[i + 1] if i + 1 < len(steps) else None
      logging.warning(
        'checkpoint at step %d is unreadable (%s: %s); %s',
        step,
        type(e).__name__,
        str(e).splitlines()[0][:200] if str(e) else '',
        f'falling back to step {older}' if older is not None else 'no older checkpoint left',
      )
      continue
    data = restored['data']['rows'] if abstract_data is not None else None
    return step, restored['state'], data
  if steps:
    raise RuntimeError(f'no readable checkpoint among steps {steps} in {mngr.directory}')
  return None


def restore_trainer_state(mngr: ocp.CheckpointManager, trainer, abstract_data=None):
  """The one restore of a train state: training resumes through it and every tool that loads
  a trained model (train/restore.py) does too. `trainer` (train/step.make_trainer) gives the
  abstract state and the shardings to restore onto; returns restore_latest's tuple or None."""
  abstract = abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
  return restore_latest(mngr, abstract, abstract_data)


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying concrete NamedShardings: what Orbax restores onto."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
  )
