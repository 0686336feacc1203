"""The measured learning-rate sweep behind the demo's lr rule (docs/SWEEPS.md).

The smallest and the largest width of the demo ladder (demo.py), each at four peak learning
rates a factor of 2 apart, on the demo's batch, context, warmup and schedule, for LR_TOKENS
tokens (half the demo's: the sweep must cost less than the job it tunes). Every run logs
log-spaced evaluations, so one sweep also shows how the ranking changes with training length.

  python -m launch.sweep --sweep=experiments/sweeps/lr_sweep.py --workdir=runs/lr --parallel=2
  python -m launch.compare runs/lr --out=runs/lr/scaling.png   # or read the table it prints
"""

from experiments.sweeps import common, demo

BASE_CONFIG = common.BASE_CONFIG
LR_TOKENS = 600_000
LRS = (2e-3, 4e-3, 8e-3, 1.6e-2)
SHAPES = (demo.LADDER[0], demo.LADDER[-2])


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in SHAPES:
    for lr in LRS:
      overrides = demo.run_overrides(s, LR_TOKENS, lr=lr, sweep='lr_sweep', group=s.name)
      runs.append((f'{s.name}-lr{lr:g}', overrides))
  return runs
