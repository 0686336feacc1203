"""A joint L(N, D) from WSD cooldowns: one constant-lr run per size, cooldowns branched from it.

Hägele et al. 2024 show that a short linear cooldown from a constant-lr run ends where a cosine
run of the same length ends. So one stable run per size, checkpointed along the way, gives a
loss at several token counts D for the price of one run plus its cooldowns:

* `<size>-stable`: warmup WARMUP steps, then constant lr (the demo's 1/sqrt(width) rule) to
  the last branch point; checkpoints at every branch point, all kept;
* `<size>-cool<T>`: branches from the stable run at step 0.8 T (train.init_from, init_step:
  parameters, optimizer and data state), then decays linearly to 10% over its last 0.2 T steps
  (train.schedule=wsd), T in STEPS;
* `<size>-cosine<T>`: trained from scratch on a cosine schedule of T steps, at COSINE points,
  to check that a cooldown matches a cosine run of the same (N, D).

Groups: 'stable', 'cooldown', 'cosine' (tags.group); launch.compare fits L(N, D) over the
cooldowns and checks them against the cosine runs. Results: docs/SWEEPS.md.

  python -m launch.sweep --sweep=experiments/sweeps/cooldown.py --workdir=runs/cooldown \
      --parallel=1
"""

from experiments.sweeps import common, demo

BASE_CONFIG = common.BASE_CONFIG
SIZES = demo.LADDER[-4:][::-1]  # 25k, 57k, 100k, 224k non-embedding parameters
STEPS = (125, 250, 500, 1000)  # each cooldown's total steps (x 8 x 128 tokens)
COOLDOWN = 0.2  # the fraction of a branch's steps spent decaying
WARMUP = 50
COSINE = ((SIZES[0], 1000), (SIZES[2], 500))  # (size, steps) trained with cosine from scratch
BATCH = demo.BATCH


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


def branch_point(steps: int) -> int:
  return round(steps * (1 - COOLDOWN))


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  last = max(branch_point(t) for t in STEPS)
  for s in SIZES:
    points = [branch_point(t) for t in STEPS]
    stable = _common(s, last, 'stable')
    stable.update({'train.schedule': 'constant', 'checkpoint.every': 100})
    stable['checkpoint.max_to_keep'] = len(points) + last // 100  # every branch point kept
    runs.append((f'{s.name}-stable', stable))
    for t, at in zip(STEPS, points, strict=True):
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
