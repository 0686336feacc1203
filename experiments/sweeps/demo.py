"""The README's main job: an L(N) ladder of GPT-3-shaped models that learn, on a 2-core CPU.

Six sizes from 2.5e4 to 1.3e6 non-embedding parameters (1.7 decades), each trained on the
same TOKENS bytes of Shakespeare, so the fitted L(N) = E + A N^-alpha is a fixed-D version
of Kaplan et al.'s Figure 1 (right). What it measures, and what each choice below does to
alpha, is in docs/SWEEPS.md and docs/MUP.md; the choices:
* learning rate: common.width_lr, LR_REF at width D_REF growing as 1/sqrt(width) below it
  (lr_sweep.py's optima at these settings), standard parametrization;
* warmup WARMUP_STEPS steps, then cosine decay to 10% at the run's last step;
* batch 8 x 128 bytes: these runs are step-limited, not token-limited, so more, smaller steps;
* EVALS log-spaced evaluations (eval.log_points), so the curves are curves;
* sizes ~0.35 decades apart: 2 layers (deeper ones learn slower in 1,172 steps), 3 for the
  largest; heads of 32 dimensions where the width allows (16 below 64).

Budget: with --parallel=2 the largest model runs on one core while the others run one after
another on the other; the runs are listed largest first so that this greedy order balances
the two cores.

  python -m launch.sweep --sweep=experiments/sweeps/demo.py --workdir=runs/demo --parallel=2
"""

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 1_200_000  # per run
BATCH = 8  # sequences of 128 bytes per step: 1,172 steps per run
EVALS = 10  # log-spaced evaluations per run, the last at the final step
WARMUP_STEPS = 100  # shorter warmups can leave a model on the bigram plateau (docs/SWEEPS.md)
LR_REF, D_REF = common.LR_REF, common.D_REF  # the peak lr of the widest model (lr_sweep.py)

LADDER = [  # ~0.35 decades apart; heads of 32 dimensions where the width allows (docs/SWEEPS.md)
  common.Shape(3, 192, 6),  # 1.33M non-embedding parameters
  common.Shape(2, 160, 5),  # 619k
  common.Shape(2, 96, 3),  # 224k
  common.Shape(2, 64, 2),  # 100k
  common.Shape(2, 48, 3),  # 57k, heads of 16
  common.Shape(2, 32, 2),  # 25k, heads of 16
]


def lr_for(s: common.Shape) -> float:
  """Peak lr: LR_REF at width D_REF, growing as 1/sqrt(width) below it (common.width_lr)."""
  return common.width_lr(s.d_model)


def run_overrides(s: common.Shape, tokens: float, lr: float, **tags) -> dict:
  """Overrides of one run: `s` on `tokens` tokens at peak `lr`, with log-spaced evals."""
  steps = common.steps_for(tokens, global_batch=BATCH)
  train = common.train_overrides(steps, lr, global_batch=BATCH, log_points=EVALS)
  out = {**s.overrides(), **train, 'train.warmup_steps': min(WARMUP_STEPS, steps // 5 or 1)}
  seen = steps * BATCH * common.SEQ_LEN
  out.update({'tags.tokens': seen, **{f'tags.{k}': v for k, v in tags.items()}})
  return out


def get_sweep() -> list[tuple[str, dict]]:
  return [(s.name, run_overrides(s, TOKENS, lr_for(s), sweep='demo', group='demo')) for s in LADDER]
