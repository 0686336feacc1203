"""Coordinate check (Yang et al. 2022, Sec. D.1): activation scales across width, SP vs muP.

For each parametrization and each width (same depth, heads and base width; head_dim and d_ff
grow with d_model), train a fresh model for a few AdamW steps at one fixed learning rate on one
fixed batch, through the project's own optimizer (train/optim.py, muP's lr multipliers
included), and record each layer's activation scale, mean |x| over batch, positions and
features, at init and after every step: the embedding output, each block's attention and MLP
outputs, and the logits. Under muP every curve is flat in width once training has moved the
weights; under SP the updated layers grow with width (Adam's update to a width-n matrix moves
its output by ~lr * n).

The verdict, per parametrization: the spread of each layer's scale after the last step, largest
over smallest across the widths. muP passes when every layer's spread is below FLAT (4x over a
16x range of widths; measured 2.9x at widths 32/128/512, SP 9x to 460x, docs/MUP.md);
tests/test_mup.py checks that muP passes and SP fails.

  python -m experiments.coord_check --out=runs/coord_check.png   # + .json beside it
"""

import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.configs import default
from models import mup, shapes
from models.transformer import ModelConfig, Transformer
from train.optim import make_optimizer

FLAT = 4.0  # muP: every layer's largest / smallest scale across widths after the last step


def _train_config(lr: float, steps: int):
  import ml_collections

  return ml_collections.ConfigDict(
    {
      'optimizer': 'adamw',
      'schedule': 'constant',
      'lr': lr,
      'warmup_steps': 0,
      'steps': steps,
      'min_lr_ratio': 1.0,
      'decay_fraction': 0.0,
      'b1': 0.9,
      'b2': 0.95,
      'eps': 1e-8,
      'weight_decay': 0.0,
      'grad_clip': 0.0,
    }
  )


def run_width(
  width: int,
  parametrization: str,
  *,
  base_width: int,
  layers: int,
  heads: int,
  vocab: int,
  lr: float,
  steps: int,
  seq_len: int,
  batch: int,
  seed: int,
) -> list[dict[str, float]]:
  """Scales at init and after each of `steps` AdamW steps of one model (a list of dicts)."""
  m = default.get_config().model  # GPT-3's block; head_dim and d_ff derived from the width
  m.update(vocab_size=vocab, d_model=width, num_layers=layers, num_heads=heads)
  m.update(max_seq_len=seq_len, attention_impl='xla')
  m.update(parametrization=parametrization, mup_base_width=base_width)
  cfg = ModelConfig.from_config(m)
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, vocab, (batch, seq_len + 1)), jnp.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  with nnx.use_eager_sharding(False):
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  params = params.to_pure_dict()
  lr_mult = mup.lr_multipliers(model, cfg.width_mult) if parametrization == 'mup' else None
  no_decay = jax.tree.map(lambda _: False, params)
  tx = make_optimizer(_train_config(lr, steps), no_decay, lr_mult)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p)(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @jax.jit
  def step(p, opt):
    grads = jax.grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt

  @jax.jit
  def measure(p):
    return scales(nnx.merge(graphdef, p), inputs)

  opt = tx.init(params)
  history = [{k: float(v) for k, v in measure(params).items()}]
  for _ in range(steps):
    params, opt = step(params, opt)
    history.append({k: float(v) for k, v in measure(params).items()})
  return history


def scales(model: Transformer, tokens: jax.Array) -> dict[str, jax.Array]:
  """mean |x| of each layer's output: embedding, each block's attention and MLP, logits."""
  out = {}
  x = model.embed(tokens, jnp.float32)
  out['embed'] = jnp.abs(x).mean()
  for i, block in enumerate(model.blocks):
    a = block.attn(block.ln1(x))
    x = x + a
    f = block.mlp(block.ln2(x))
    x = x + f
    out[f'block{i}.attn'], out[f'block{i}.mlp'] = jnp.abs(a).mean(), jnp.abs(f).mean()
  out['logits'] = jnp.abs(model(tokens)).mean()  # the model's own forward: output multiplier
  return out


def coord_check(
  widths=(32, 128, 512),
  parametrizations=('sp', 'mup'),
  *,
  base_width: int = 128,
  layers: int = 2,
  heads: int = 4,
  vocab: int = 64,
  lr: float = 1e-2,
  steps: int = 3,
  seq_len: int = 32,
  batch: int = 4,
  seed: int = 0,
) -> dict:
  """{parametrization: {width: [scales at step 0..steps]}} and each layer's final spread."""
  check_args(widths, heads, lr, steps)
  kw = dict(
    base_width=base_width,
    layers=layers,
    heads=heads,
    vocab=vocab,
    lr=lr,
    steps=steps,
    seq_len=seq_len,
    batch=batch,
    seed=seed,
  )
  result = {'widths': list(widths), 'lr': lr, 'steps': steps, 'flat': FLAT, 'runs': {}}
  for p in parametrizations:
    runs = {w: run_width(w, p, **kw) for w in widths}
    last = [runs[w][-1] for w in widths]
    spread = {k: max(r[k] for r in last) / min(r[k] for r in last) for k in last[0]}
    result['runs'][p] = {'scales': runs, 'spread': spread, 'flat': max(spread.values()) < FLAT}
  return result


def check_args(widths, heads: int, lr: float, steps: int) -> None:
  """One-line ValueErrors for arguments that cannot make a check."""
  widths = list(widths)
  if len(widths) < 2 or min(widths) < 1:
    raise ValueError(f'--widths needs at least two positive widths, got {widths}')
  try:
    shapes.at_least_one('num_heads', heads)
    for w in widths:
      shapes.derive_head_dim(w, heads)
  except ValueError:
    raise ValueError(f'--heads={heads} must divide every width {widths}') from None
  if not (math.isfinite(lr) and lr > 0):
    raise ValueError(f'--lr={lr} must be a positive number')
  if steps < 1:
    raise ValueError(f'--steps={steps} must be >= 1 (scales after training steps are the check)')


def report(result: dict) -> str:
  """The table: per parametrization, each layer's scale at each width after the last step."""
  lines = []
  for p, r in result['runs'].items():
    widths = sorted(r['scales'])
    layers = list(r['spread'])
    lines.append(f'{p}: mean |x| after {result["steps"]} steps at lr {result["lr"]:g}')
    lines.append(
      '  ' + 'layer'.ljust(12) + ''.join(f'd={w}'.rjust(10) for w in widths) + '  spread'
    )
    for k in layers:
      vals = ''.join(f'{r["scales"][w][-1][k]:10.4f}' for w in widths)
      lines.append(f'  {k:<12}{vals}  {r["spread"][k]:5.2f}x')
    span = f'{max(widths) // min(widths)}x'
    verdict = 'flat' if r['flat'] else 'NOT flat'
    lines.append(
      f'  verdict: {verdict} (largest spread {max(r["spread"].values()):.2f}x over a '
      f'{span} range of widths; flat means < {FLAT:g}x)'
    )
  return '\n'.join(lines)


def plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  runs = result['runs']
  layers = list(next(iter(runs.values()))['spread'])
  fig, axes = plt.subplots(
    len(runs), len(layers), figsize=(2.6 * len(layers), 2.6 * len(runs)), squeeze=False
  )
  for row, (p, r) in enumerate(runs.items()):
    widths = sorted(r['scales'])
    for col, k in enumerate(layers):
      ax = axes[row][col]
      for t in range(result['steps'] + 1):
        ax.plot(
          widths,
          [r['scales'][w][t][k] for w in widths],
          marker='o',
          label=f't={t}',
          color=plt.cm.viridis(t / max(result['steps'], 1)),
        )
      ax.set_xscale('log', base=2)
      ax.set_yscale('log')
      ax.set_title(f'{p}: {k}', fontsize=9)
      ax.set_xlabel('width')
  axes[0][0].set_ylabel('mean |x|')
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == '__main__':
  from absl import app, flags

  _WIDTHS = flags.DEFINE_list('widths', ['32', '64', '128', '256', '512'], 'd_model values.')
  _LR = flags.DEFINE_float('lr', 1e-2, 'AdamW learning rate (constant, the same at every width).')
  _STEPS = flags.DEFINE_integer('steps', 3, 'Training steps after init.')
  _HEADS = flags.DEFINE_integer('heads', 4, 'Attention heads (head_dim grows with the width).')
  _BASE = flags.DEFINE_integer('base_width', 128, 'muP base width.')
  _OUT = flags.DEFINE_string('out', 'runs/coord_check.png', 'Plot path (the JSON goes beside it).')

  def _main(argv):
    del argv
    try:
      if not all(w.strip().isdigit() for w in _WIDTHS.value):
        raise ValueError(f'--widths={",".join(_WIDTHS.value)} must be positive integers')
      widths = [int(w) for w in _WIDTHS.value]
      check_args(widths, _HEADS.value, _LR.value, _STEPS.value)
      if _BASE.value < 1:
        raise ValueError(f'--base_width={_BASE.value} must be >= 1')
      if not _OUT.value.endswith('.png'):
        raise ValueError(f'--out={_OUT.value!r} must name a .png file')
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    result = coord_check(
      widths, lr=_LR.value, steps=_STEPS.value, heads=_HEADS.value, base_width=_BASE.value
    )
    print(report(result))
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    plot(result, _OUT.value)
    with open(_OUT.value.removesuffix('.png') + '.json', 'w') as f:
      json.dump(result, f, indent=1)
    print(f'wrote {_OUT.value}')

  app.run(_main)
