"""The shape experiment at fixed N: heads 1, 2, 4, 8, 16 at each of three depth/width ratios.

N = 793k non-embedding parameters in three shapes of exactly that size, L=1/d=256,
L=4/d=128 and L=16/d=64 (width/depth 256, 32 and 4: each quadrupling of depth halves the
width), each split into 1 to 16 heads: 15 runs whose parameters and FLOPs per token agree,
so any difference in loss is the shape's (Kaplan et al. 2020, Sec. 3.1: at fixed N the loss
depends only weakly on shape). heads.py and aspect.py are the two one-dimensional slices.
About 1.5 hours on a 2-core CPU with --parallel=2.
"""

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 1_000_000  # per run
DEPTH_WIDTH = ((1, 256), (4, 128), (16, 64))
HEADS = (1, 2, 4, 8, 16)


def get_sweep() -> list[tuple[str, dict]]:
  target = common.Shape(4, 128, 1).nonembed()
  runs = []
  for layers, width in DEPTH_WIDTH:
    for h in HEADS:
      s = common.Shape(layers, width, h)
      group = f'L{layers}-d{width}'
      runs.append((s.name, common.ladder_run(s, TOKENS, 'shape', group, target_nonembed=target)))
  return runs
