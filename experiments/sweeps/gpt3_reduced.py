"""The GPT-3 family (Brown et al. 2020, Table 2.1) at 1/WIDTH_FACTOR of its width, on a CPU.

Each row keeps its layer and head counts and divides its head size by WIDTH_FACTOR
(models.gpt3.reduced: d_model = heads * head_dim, d_ff = 4 d_model). Context and vocabulary
are the base config's (128 bytes). Edit the module constants, not flags, to change the sweep:

  WIDTH_FACTOR  16 turns Small into L=12, d=48 (12 heads of 4) and XL into L=24, d=128.
  ROWS          which rows of the table. The default stops at XL (24 layers, 4.7M
                non-embedding parameters at factor 16): 2.7B and up have 32 to 96 layers
                and take hours per run on a CPU (175B: 96 layers). On an accelerator use a
                smaller factor and add rows.
  TOKENS        every row sees the same number of tokens, as every GPT-3 model saw 300B.
  LR_SCALE      multiplies Table 2.1's learning rates (1: as published).

Learning rate and batch follow Table 2.1: lr as published; the batch keeps the table's
proportions between rows (0.5M, 1M, 2M, 3.2M tokens) scaled down so the 0.5M-token rows use
BATCH_SEQS sequences, i.e. batch_seqs = BATCH_SEQS * batch_tokens / 0.5M. A run of TOKENS
tokens at a larger batch takes proportionally fewer steps, as in the paper.
About 1.5 hours for the default four rows on a 2-core CPU with --parallel=2.
"""

from experiments.sweeps import common
from models import gpt3

BASE_CONFIG = common.BASE_CONFIG
WIDTH_FACTOR = 16
ROWS = ('Small', 'Medium', 'Large', 'XL')
TOKENS = 2_000_000  # per run
BATCH_SEQS = 16  # sequences per step for Table 2.1's 0.5M-token batch
LR_SCALE = 1.0


def batch_seqs(row: gpt3.GPT3Row) -> int:
  """Table 2.1's batch in proportion to its smallest (0.5M tokens), in multiples of 8."""
  smallest = min(r.batch_tokens for r in gpt3.GPT3_TABLE.values())
  return max(8, round(BATCH_SEQS * row.batch_tokens / smallest / 8) * 8)


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for name in ROWS:
    row = gpt3.GPT3_TABLE[name]
    model = gpt3.reduced(name, WIDTH_FACTOR)
    batch = batch_seqs(row)
    steps = common.steps_for(TOKENS, global_batch=batch)
    run = {f'model.{k}': v for k, v in model.items()}
    run.update(common.train_overrides(steps, row.lr * LR_SCALE, global_batch=batch))
    run.update(
      {
        'tags.sweep': 'gpt3_reduced',
        'tags.group': f'gpt3/{WIDTH_FACTOR}',
        'tags.tokens': steps * batch * common.SEQ_LEN,
      }
    )
    runs.append((f'gpt3-{name}-w{WIDTH_FACTOR}', run))
  return runs
