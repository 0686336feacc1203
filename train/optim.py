"""Optimizers and learning-rate schedules, chosen by name from `config.train`.

`train.optimizer` picks an entry of OPTIMIZERS, `train.schedule` one of SCHEDULES. Every
schedule starts with a linear warmup from 0 to `train.lr` over `train.warmup_steps`, then
  cosine:   cosine decay to lr * min_lr_ratio at `train.steps`;
  wsd:      warmup-stable-decay: flat at lr, then linear to lr * min_lr_ratio over the last
            `decay_fraction` of the steps (Hu et al. 2024, MiniCPM);
  constant: flat at lr.
Gradients are clipped to global norm `train.grad_clip` (0: no clipping) before the optimizer.

Weight decay applies to the weight matrices only, recognized by their logical axes
(models/layers.py gives every parameter `logical_axes`): a matrix reads from or writes to the
residual stream (axis 'embed') and has at least one other named axis. Biases and norm scales
((heads, head_dim), ('mlp',), ('embed',)) have no 'embed' axis or no other; the learned position
table is indexed by an unnamed position axis (None, 'embed'). A parameter's own `weight_decay`
metadata, if present, decides. Stacked (scanned) layers add a leading axis to the array but not
to its logical axes, so the rule holds for them too.

Under muP (`model.parametrization='mup'`, models/mup.py) every optimizer's update is multiplied
by a per-parameter tree of learning-rate multipliers (1/m for hidden matrices, 1 elsewhere),
read from the same logical axes; the decoupled weight decay, inside the update, scales with it.
AdamW, Lion and Adafactor (absolute steps) all take Adam's rule. An optimizer added to
OPTIMIZERS whose update size is not Adam-like must be listed in NO_MUP.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  import optax
  from flax import nnx

# JAX and optax are imported where an optimizer is built, not by the name checks: a sweep is
# planned (train/validate.py) without JAX.


def _cosine(t, peak, floor, rest_steps):
  import optax

  return optax.cosine_decay_schedule(peak, max(rest_steps, 1), alpha=t.min_lr_ratio)


def _constant(t, peak, floor, rest_steps):
  import optax

  return optax.constant_schedule(peak)


def _wsd(t, peak, floor, rest_steps):
  import optax

  decay = max(int(t.steps * t.decay_fraction), 1)
  stable = max(rest_steps - decay, 0)
  return optax.join_schedules(
    [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)], [stable]
  )


# name -> (t, peak, floor, steps after warmup) -> the schedule after warmup.
SCHEDULES: dict[str, Callable] = {'cosine': _cosine, 'wsd': _wsd, 'constant': _constant}


def lr_schedule(t) -> 'optax.Schedule':
  """Linear warmup from 0, then the schedule named by `t.schedule`."""
  import optax

  check(t)
  peak, warmup = t.lr, t.warmup_steps
  rest = SCHEDULES[t.schedule](t, peak, peak * t.min_lr_ratio, t.steps - warmup)
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  return optax.join_schedules([warm, rest], [warmup])


def _adamw(t, lr, mask):
  import optax

  return optax.adamw(lr, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=mask)


def _lion(t, lr, mask):
  import optax

  return optax.lion(lr, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=mask)


def _adafactor(t, lr, mask):
  import optax

  # Absolute steps of size lr (not relative to the parameter's scale), so that train.lr means
  # what it means for AdamW; optax adds the decay after the learning rate, so scale it by the
  # schedule too (decoupled decay, times lr).
  return optax.adafactor(
    lr,
    multiply_by_parameter_scale=False,
    weight_decay_rate=lambda step: t.weight_decay * lr(step),
    weight_decay_mask=mask,
  )


# name -> (t, schedule, decay mask) -> the optimizer (without clipping).
OPTIMIZERS: dict[str, Callable] = {'adamw': _adamw, 'adafactor': _adafactor, 'lion': _lion}
# Optimizers whose per-coordinate update is not O(lr) (muP's Adam rule does not apply): none.
NO_MUP: dict[str, str] = {}


def decays(logical_axes, metadata: dict) -> bool:
  """Whether a parameter with these logical axes gets weight decay (the module docstring)."""
  if 'weight_decay' in metadata:
    return bool(metadata['weight_decay'])
  others = [a for a in tuple(logical_axes or ()) if a != 'embed']
  return len(others) < len(tuple(logical_axes or ())) and bool(others) and None not in others


def decay_mask(abstract_model: 'nnx.Module') -> dict:
  """True/False per parameter, as a pure dict like `nnx.state(model).to_pure_dict()`."""
  import jax
  from flax import nnx

  def one(var):
    meta = var.get_metadata()
    return decays(meta.get('logical_axes'), meta)

  mask = jax.tree.map(one, nnx.state(abstract_model), is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.State(mask).to_pure_dict() if not isinstance(mask, dict) else mask


def make_optimizer(t, mask, lr_mult: dict | None = None) -> 'optax.GradientTransformation':
  """Clipping, then the optimizer named by `t.optimizer` with the schedule and decay mask.

  `lr_mult` (muP: models/mup.lr_multipliers) multiplies each parameter's update; None (SP)
  leaves the chain exactly as it is without muP.
  """
  import jax
  import optax

  check(t, mup=lr_mult is not None)
  clip = optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity()
  opt = OPTIMIZERS[t.get('optimizer', 'adamw')](t, lr_schedule(t), mask)
  if lr_mult is None:
    return optax.chain(clip, opt)
  per_param = optax.stateless(lambda updates, _: jax.tree.map(lambda u, k: u * k, updates, lr_mult))
  return optax.chain(clip, opt, per_param)


def check(t, mup: bool = False) -> None:
  """One-line errors for unknown names, for the loop to call before anything is written."""
  name = t.get('optimizer', 'adamw')
  if name not in OPTIMIZERS:
    raise ValueError(f'train.optimizer={t.optimizer!r}; choose one of {sorted(OPTIMIZERS)}')
  if mup and name in NO_MUP:
    raise ValueError(
      f'train.optimizer={name!r} does not support model.parametrization=mup: {NO_MUP[name]}'
    )
  if t.schedule not in SCHEDULES:
    raise ValueError(f'train.schedule={t.schedule!r}; choose one of {sorted(SCHEDULES)}')
