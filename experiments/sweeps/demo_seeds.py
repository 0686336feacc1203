"""The demo's ladder at more seeds, in SP and in muP, for an L(N) with seed variance.

With the demo itself (`bash run.sh demo`: SP, lr(d) = 3e-3 * sqrt(192 / d), seed 0), this
gives each of the six sizes two seeds in SP (seed 1 here) and two in muP (seeds 0 and 1 at
mup_ladder.BASE_LR, base width mup_ladder.BASE_WIDTH): 18 runs, the demo's tokens, batch,
warmup and schedule. Runs carry tags.size / tags.lr / tags.seed and the groups 'demo' (SP)
and 'mup', so `launch.compare runs/demo runs/demo_seeds --merge` fits L(N) per group, side by
side, each point the mean over its seeds (docs/MUP.md has the measured result).

  python -m launch.sweep --sweep=experiments/sweeps/demo_seeds.py --workdir=runs/demo_seeds \
      --parallel=2
"""

from experiments.sweeps import common, demo, mup_ladder

BASE_CONFIG = common.BASE_CONFIG


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in demo.LADDER:

    def sp(lr, s=s):
      return demo.run_overrides(s, demo.TOKENS, lr, sweep='demo_seeds', group='demo')

    def mu(lr, s=s):
      o = demo.run_overrides(s, demo.TOKENS, lr, sweep='demo_seeds', group='mup')
      return {**o, **common.mup_overrides(mup_ladder.BASE_WIDTH)}

    runs += common.grid_runs(s.name, sp, [demo.lr_for(s)], (1,))
    runs += common.grid_runs(s.name, mu, [mup_ladder.BASE_LR], (0, 1), prefix='mup-')
  return runs
