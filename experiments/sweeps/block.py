"""GPT-3's block against a modern one (experiments/configs/modern.py) at equal N, three sizes.

For each shape, two runs on the same data, tokens, batch and learning rate (the ladders'
1/sqrt(width) rule, common.width_lr): the GPT-3 block (LayerNorm, GELU, biases, learned
positions) and the modern block (RMSNorm, SwiGLU with d_ff = 8/3 d rounded up to a multiple
of 8, no biases, RoPE, qk-norm). Their non-embedding parameters differ by under 1% (SwiGLU's
rounding, the biases and LayerNorm offsets the modern block drops; each run's summary.json
has its own N); tags.target_nonembed is the GPT-3 block's.
Results and the command: docs/SWEEPS.md#block-options.
"""

from experiments.sweeps import common
from models import shapes

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 400_000  # per run
SHAPES = (common.Shape(2, 64, 2), common.Shape(3, 96, 3), common.Shape(4, 128, 4))
MODERN = {
  'model.norm': 'rmsnorm',
  'model.mlp': 'swiglu',
  'model.use_bias': False,
  'model.pos_emb': 'rope',
  'model.qk_norm': True,
}


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in SHAPES:
    gpt3 = common.ladder_run(s, TOKENS, 'block', 'gpt3', target_nonembed=s.nonembed())
    runs.append((f'{s.name}-gpt3', gpt3))
    modern = {**gpt3, **MODERN, 'model.d_ff': shapes.default_d_ff(s.d_model, 'swiglu')}
    modern['tags.group'] = 'modern'
    runs.append((f'{s.name}-modern', modern))
  return runs
