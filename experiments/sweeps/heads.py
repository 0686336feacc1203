"""Number of attention heads at fixed non-embedding parameters (Kaplan et al. 2020, Fig. 5).

L=4, d_model=128 with 1, 2, 4, 8 and 16 heads (head size 128 down to 8). The attention width
stays d_model, so every run has exactly the same parameters and FLOPs per token; only how
the width is split into heads changes. Powers of two: the head counts that divide 128.
About 20 minutes on a 2-core CPU with --parallel=2.
"""

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 1_000_000  # per run
NUM_LAYERS, D_MODEL = 4, 128
HEADS = (1, 2, 4, 8, 16)


def get_sweep() -> list[tuple[str, dict]]:
  n = common.Shape(NUM_LAYERS, D_MODEL, 1).nonembed()
  runs = []
  for h in HEADS:
    s = common.Shape(NUM_LAYERS, D_MODEL, h)
    runs.append((s.name, common.ladder_run(s, TOKENS, 'heads', f'h{h}', target_nonembed=n)))
  return runs
