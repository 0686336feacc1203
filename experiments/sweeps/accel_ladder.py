"""The demo's study at accelerator scale: an L(N) ladder on a prepared TFDS dataset (lm1b).

Six GPT-3-shaped sizes (heads of 64, width/depth 64 to 80), each trained on Chinchilla's 20
tokens per parameter (Hoffmann et al. 2022), bytes of lm1b, context 1024, bfloat16 compute,
the lr rule of the CPU ladders (common.width_lr, 3e-3 * sqrt(192 / width): measured on the
demo's Shakespeare runs, extrapolated here to wider models, a longer context and another
corpus; for a rule that transfers by construction, tune a base width and run it in muP,
docs/MUP.md), 12 log-spaced evaluations per run. Pick the size
of the machine with ACCEL (read when the file loads):

* ACCEL=gpu (default): 1.3M to 49M non-embedding parameters, batch 64 x 1024; ~4e17 FLOPs
  in all, about 45 min on one H100 at 25% MFU.
* ACCEL=v5p: 10.6M to 302M, batch 256 x 1024; ~1.7e19 FLOPs, about 2 h on a v5p-32.

Prepare the data once (ArrayRecord; no TensorFlow needed to read it):
  tfds build lm1b --data_dir=$SCALING_LM_DATA --file_format=array_record
Then
  ACCEL=gpu python -m launch.sweep --sweep=experiments/sweeps/accel_ladder.py --workdir=runs/accel
  python -m launch.compare runs/accel --out=runs/accel/scaling.png
"""

import os

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
ACCEL = os.environ.get('ACCEL', 'gpu')
SEQ_LEN = 1024
TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022
EVALS = 12

# (layers, width): heads of 64, d_ff = 4d.
SHAPES = {
  'gpu': [(3, 192), (4, 256), (5, 320), (6, 384), (8, 512), (10, 640)],
  'v5p': [(6, 384), (8, 512), (10, 640), (12, 768), (16, 1024), (24, 1024)],
}
BATCH = {'gpu': 64, 'v5p': 256}
if ACCEL not in SHAPES:
  raise ValueError(f'ACCEL={ACCEL!r}: choose one of {sorted(SHAPES)}')


def accel_overrides(batch: int) -> dict:
  """What turns the CPU base config into the accelerator one (data, context, dtype, eval)."""
  return {
    'data.name': 'lm1b',
    'data.eval_split': 'test',  # TFDS lm1b has only 'train' and 'test'
    'data.seq_len': SEQ_LEN,
    'model.max_seq_len': SEQ_LEN,
    'model.dtype': 'bfloat16',
    'model.scan_layers': True,
    'eval.batches': 8,
    'eval.batch_size': batch,
    'eval.log_points': EVALS,
    'log_every': 20,
  }


def run(s: common.Shape, tokens: float, lr: float, batch: int, sweep: str, **tags) -> dict:
  """Overrides of one accelerator run of shape `s` on `tokens` tokens."""
  steps = max(1, round(tokens / (batch * SEQ_LEN)))
  out = {**accel_overrides(batch), **s.overrides()}
  out.update(common.train_overrides(steps, lr, global_batch=batch, max_interval=1000))
  out.update({'tags.sweep': sweep, 'tags.tokens': steps * batch * SEQ_LEN})
  out.update({f'tags.{k}': v for k, v in tags.items()})
  return out


def shape(layers: int, width: int) -> common.Shape:
  return common.Shape(layers, width, width // 64)


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for layers, width in reversed(SHAPES[ACCEL]):
    s = shape(layers, width)
    o = run(
      s,
      TOKENS_PER_PARAM * s.nonembed(),
      common.width_lr(width),
      BATCH[ACCEL],
      'accel_ladder',
      group=f'{ACCEL}-ladder',
    )
    runs.append((s.name, o))
  return runs
