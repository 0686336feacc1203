"""The train state, the optimizer, and the jitted train and eval steps.

The state is a plain pytree {'step', 'params', 'opt'} whose parameters are a pure dict of the
NNX model's state, so that optax, jax.jit shardings and Orbax all see ordinary arrays.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx

from models import kernels, mup
from models.transformer import ModelConfig, Transformer
from train import sharding
from train.optim import decay_mask, lr_schedule, make_optimizer


@dataclasses.dataclass
class Trainer:
  """Everything compiled for one (model, optimizer, mesh) combination."""

  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  state_shardings: dict
  batch_sharding: jax.sharding.NamedSharding
  init: Callable  # () -> state, born sharded
  train_step: Callable  # (state, batch) -> (state, metrics)
  eval_step: Callable  # (params, batch) -> per-sequence mean loss [B]
  abstract_state: dict


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in float32, [B, L]."""
  logz_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return logz_BxL - target_logit_BxL, logz_BxL


def compile_train_step(trainer: Trainer, model_cfg: ModelConfig, rebuild: Callable, state, batch):
  """(trainer, compiled train step) for these abstract or concrete inputs.

  With attention_impl='auto', a fused kernel that fails to compile for this shape (cuDNN
  without an execution plan for it, a Mosaic error) does not end the run: one warning line says
  why, and `rebuild(model_cfg)` makes the trainer again with XLA's attention (same parameters).
  """
  try:
    return trainer, trainer.train_step.lower(state, batch).compile()
  except Exception as e:
    reason = kernels.kernel_failure(e) if model_cfg.attention_impl == 'auto' else ''
    if not reason:
      raise
  logging.warning('%s', reason)
  trainer = rebuild(dataclasses.replace(model_cfg, attention_impl='xla'))
  return trainer, trainer.train_step.lower(state, batch).compile()


def make_trainer(config, model_cfg: ModelConfig, mesh: jax.sharding.Mesh) -> Trainer:
  """Builds shardings from abstract shapes and the jitted init / train / eval functions."""
  t = config.train
  seed = config.seed

  def create_state():
    model = Transformer(model_cfg, rngs=nnx.Rngs(seed))
    params = nnx.state(model).to_pure_dict()
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt': tx.init(params)}

  # Model and optimizer shapes in one eval_shape: nothing is allocated.
  abstract_model = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(seed)))
  graphdef = nnx.graphdef(abstract_model)
  lr_mult = None
  if model_cfg.parametrization == 'mup':
    lr_mult = mup.lr_multipliers(abstract_model, model_cfg.width_mult)
  tx = make_optimizer(t, decay_mask(abstract_model), lr_mult)
  abstract_state = jax.eval_shape(create_state)
  param_sh = sharding.param_shardings(abstract_model, config.sharding_rules, mesh)
  repl = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(
    tx, lambda _, s: s, abstract_state['opt'], param_sh, transform_non_params=lambda _: repl
  )
  state_sh = {'step': repl, 'params': param_sh, 'opt': opt_sh}
  batch_sh = sharding.batch_sharding(mesh, config.sharding_rules)
  z_loss, accum = t.z_loss, t.grad_accum

  def nll_and_logz(params, batch):
    """The model on one batch: per-token negative log-likelihood and log-partition, BxL."""
    model = nnx.merge(graphdef, params)
    segment_ids = batch.get('segment_ids') if config.data.segment_ids else None
    with sharding.activation_sharding(config.sharding_rules, mesh):
      logits_BxLxV = model(batch['inputs'], segment_ids)
    return cross_entropy(logits_BxLxV, batch['targets'])

  def loss_fn(params, batch):
    nll_BxL, logz_BxL = nll_and_logz(params, batch)
    loss = nll_BxL.mean()
    if z_loss:
      loss += z_loss * jnp.square(logz_BxL).mean()
    return loss, nll_BxL.mean()

  def train_step(state, batch):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
      (_, nll), grads = grad_fn(state['params'], batch)
    else:
      # Split the global batch into `accum` microbatches; average their gradients.
      micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

      def body(carry, mb):
        g_sum, nll_sum = carry
        (_, nll), g = grad_fn(state['params'], mb)
        return (jax.tree.map(jnp.add, g_sum, g), nll_sum + nll), None

      zeros = jax.tree.map(jnp.zeros_like, state['params'])
      (grads, nll), _ = jax.lax.scan(body, (zeros, jnp.float32(0)), micro)
      grads = jax.tree.map(lambda g: g / accum, grads)
      nll = nll / accum
    updates, opt = tx.update(grads, state['opt'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    grad_norm = optax.global_norm(grads)
    if t.skip_nonfinite:  # keep parameters and optimizer state (its count too); consume the batch
      finite = jnp.isfinite(nll) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
      params = jax.tree.map(keep, params, state['params'])
      opt = jax.tree.map(keep, opt, state['opt'])
    metrics = {'loss': nll, 'grad_norm': grad_norm, 'lr': lr_schedule(t)(state['step'])}
    return {'step': state['step'] + 1, 'params': params, 'opt': opt}, metrics

  def eval_step(params, batch):
    nll_BxL, _ = nll_and_logz(params, batch)
    return nll_BxL.mean(axis=-1)

  batch_tree_sh = {'inputs': batch_sh, 'targets': batch_sh, 'segment_ids': batch_sh}
  return Trainer(
    graphdef=graphdef,
    tx=tx,
    state_shardings=state_sh,
    batch_sharding=batch_sh,
    init=jax.jit(create_state, out_shardings=state_sh),
    train_step=jax.jit(
      train_step,
      in_shardings=(state_sh, batch_tree_sh),
      out_shardings=(state_sh, repl),
      donate_argnums=(0,),
    ),
    eval_step=jax.jit(eval_step, in_shardings=(param_sh, batch_tree_sh), out_shardings=repl),
    abstract_state=abstract_state,
  )
