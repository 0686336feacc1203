"""The README's main job: an L(N) ladder of GPT-3-shaped models that learn, on a 2-core CPU.

Six sizes from 2.5e4 to 1.3e6 non-embedding parameters (1.7 decades), each trained on the
same TOKENS bytes of Shakespeare, so the fitted L(N) = E + A N^-alpha is a fixed-D version
of Kaplan et al.'s Figure 1 (right). Every model ends below the corpus's bigram level
(`python -m data.levels`); the largest near 1.9 nats/byte on held-out plays.

What was chosen, and why (measured: docs/SWEEPS.md):
* learning rate: lr_sweep.py, lr(d) = LR_REF * (D_REF / d_model)^0.5 ... (see lr_for);
* warmup WARMUP_STEPS, then cosine decay to 10% (scaling_cpu.py);
* batch 16 x 128 bytes, TOKENS per run, >= 12 log-spaced evaluations (learning curves);
* sizes: widths 32 to 192, 2 to 3 layers, heads of 16 or 32 dimensions.

Budget: with --parallel=2 the largest model runs on one core while the others run one after
another on the other; the runs are listed largest first so that this greedy order balances
the two cores.

  python -m launch.sweep --sweep=experiments/sweeps/demo.py --workdir=runs/demo --parallel=2
"""

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 1_350_000  # per run
EVALS = 12  # log-spaced evaluations per run (and one at the end)
WARMUP_STEPS = 30
LR_REF, D_REF = 3e-3, 192  # the peak lr of the widest model (lr_sweep.py)

LADDER = [
  common.Shape(3, 192, 6),  # 1.33M non-embedding parameters, heads of 32
  common.Shape(3, 128, 4),  # 595k, 32
  common.Shape(2, 96, 6),  # 224k, 16
  common.Shape(2, 64, 4),  # 100k, 16
  common.Shape(2, 48, 3),  # 57k, 16
  common.Shape(2, 32, 2),  # 25k, 16
]


def lr_for(s: common.Shape) -> float:
  """Peak lr: LR_REF at width D_REF, growing as 1/sqrt(width) below it."""
  return LR_REF * (D_REF / s.d_model) ** 0.5


def run_overrides(s: common.Shape, tokens: float, lr: float, **tags) -> dict:
  """Overrides of one run: `s` on `tokens` tokens at peak `lr`, with log-spaced evals."""
  steps = common.steps_for(tokens)
  out = {**s.overrides(), **common.train_overrides(steps, lr, evals=2)}
  out['train.warmup_steps'] = min(WARMUP_STEPS, steps // 5 or 1)
  out['eval.log_points'] = EVALS
  seen = steps * common.GLOBAL_BATCH * common.SEQ_LEN
  out.update({'tags.tokens': seen, **{f'tags.{k}': v for k, v in tags.items()}})
  return out


def get_sweep() -> list[tuple[str, dict]]:
  return [(s.name, run_overrides(s, TOKENS, lr_for(s), sweep='demo', group='demo')) for s in LADDER]
