"""A joint L(N, D) from WSD cooldowns: one constant-lr run per size, cooldowns branched from it.

Hägele et al. 2024 show that a short linear cooldown from a constant-lr run ends where a cosine
run of the same length ends. So one stable run per size, checkpointed along the way, gives a
loss at several token counts D for the price of one run plus its cooldowns:

* `<size>-stable`: warmup WARMUP steps, then constant lr (the demo's 1/sqrt(width) rule) to
  the last branch point; a checkpoint and an evaluation every EVERY steps, all kept;
* `<size>-cool<T>`: branches from the stable run at step s in BRANCHES (train.init_from,
  init_step: parameters, optimizer and data state), then decays linearly to 10% of the peak
  over its last s / 4 steps (train.schedule=wsd: 20% of its T = 1.25 s steps);
* `<size>-cosine<T>`: trained from scratch on the demo's cosine schedule of T steps, at the
  COSINE points (three shorter D, and every size at the longest), to check that a cooldown
  matches a cosine run of the same (N, D).

Every branch point is past step 1000: on this corpus the models sit on the letter-pair
(bigram) plateau, ~2.54 nats/byte, for the first few hundred steps, and a sum of power laws
in N and D describes the loss only after they have left it. Groups: 'stable', 'cooldown',
'cosine' (tags.group); launch.compare fits L(N, D) over the cooldowns and checks them against
the cosine runs. Results and the measured wall time: docs/SWEEPS.md.

  python -m launch.sweep --sweep=experiments/sweeps/cooldown.py --workdir=runs/cooldown \
      --parallel=1
"""

from experiments.sweeps import common, demo

BASE_CONFIG = common.BASE_CONFIG
SIZES = demo.LADDER[-4:][::-1]  # 25k, 57k, 100k, 224k non-embedding parameters
BRANCHES = (1000, 1500, 2250, 3250)  # branch points (steps), ~x1.5 apart, all past the plateau
EVERY = 250  # the stable run's checkpoint and evaluation interval (divides every branch point)
WARMUP = demo.WARMUP_STEPS  # 100: a shorter warmup left runs on the plateau longer
BATCH = demo.BATCH  # 8 x 128 tokens per step


def total_steps(branch: int) -> int:
  """A cooldown's total steps: the branch point plus a decay of a quarter of it (20% of T)."""
  return branch + round(branch / 4)


COSINE = (  # (size, steps) also trained with cosine from scratch:
  # three sizes at three shorter D, where the models still learn fast,
  (SIZES[0], total_steps(BRANCHES[1])),
  (SIZES[2], total_steps(BRANCHES[2])),
  (SIZES[3], total_steps(BRANCHES[0])),
  # and every size at the longest D, the regime of the held-out corner
  *((s, total_steps(BRANCHES[-1])) for s in SIZES),
)


def _common(s: common.Shape, steps: int, group: str) -> dict:
  return {
    **s.overrides(),
    'train.steps': steps,
    'train.global_batch': BATCH,
    'train.lr': float(f'{demo.lr_for(s):.4g}'),
    'train.warmup_steps': WARMUP,
    'eval.every': steps,  # one evaluation, at the end
    'tags.sweep': 'cooldown',
    'tags.group': group,
    'tags.tokens': steps * BATCH * common.SEQ_LEN,
  }


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  last = max(BRANCHES)
  for s in SIZES:
    stable = _common(s, last, 'stable')
    stable.update(
      {
        'train.schedule': 'constant',
        'eval.every': EVERY,
        'checkpoint.every': EVERY,
        'checkpoint.max_to_keep': last // EVERY + 1,  # every branch point kept
      }
    )
    runs.append((f'{s.name}-stable', stable))
    for at in BRANCHES:
      t = total_steps(at)
      cool = _common(s, t, 'cooldown')
      cool.update(
        {
          'train.schedule': 'wsd',
          # the decay starts exactly at the branch point: int(t * fraction) == t - at
          'train.decay_fraction': (t - at + 0.5) / t,
          'train.init_from': f'{s.name}-stable',
          'train.init_step': at,
          'checkpoint.every': t,
        }
      )
      runs.append((f'{s.name}-cool{t}', cool))
  for s, t in COSINE:
    cos = _common(s, t, 'cosine')
    cos.update({'train.schedule': 'cosine', 'checkpoint.every': t})
    runs.append((f'{s.name}-cosine{t}', cos))
  return runs
