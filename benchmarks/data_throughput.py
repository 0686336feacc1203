"""Data-pipeline throughput: tokens/s that train_iterator() delivers on this host.

  python -m benchmarks.data_throughput [--config.data.tokenizer=PATH.model]

Compare with the tokens/s the training step consumes (benchmarks/train_step.py, or the
`tokens_per_s` of a run's metrics.jsonl): the pipeline must not be the bottleneck.
"""

import json
import time

from absl import app, flags

from core import cli

_CONFIG = cli.define_config_file('config', 'experiments/configs/default.py', 'Config.')
_BATCHES = flags.DEFINE_integer('batches', 500, 'Batches to time.', lower_bound=1)


def main(argv: list[str]) -> None:
  del argv
  from data.pipeline import DataPipeline

  c = _CONFIG.value
  t0 = time.perf_counter()
  try:
    pipe = DataPipeline(c.data, c.train.global_batch, c.data.seq_len, c.seed)
  except (ValueError, OSError) as e:
    cli.fail(str(e))
  setup_s = time.perf_counter() - t0
  it = pipe.train_iterator()
  next(it)  # first documents read and tokenized
  t0 = time.perf_counter()
  tokens = 0
  for _ in range(_BATCHES.value):
    tokens += next(it)['inputs'].size
  dt = time.perf_counter() - t0
  row = {
    'tokenizer': c.data.tokenizer,
    'dataset': c.data.name,
    'batch': c.train.global_batch,
    'seq_len': c.data.seq_len,
    'tokens_per_s': tokens / dt,
    'setup_s': setup_s,
    'date': time.strftime('%Y-%m-%d'),
  }
  print(json.dumps(row))
  print(f'{c.data.name}/{c.data.tokenizer}: {tokens / dt:,.0f} tokens/s delivered')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
