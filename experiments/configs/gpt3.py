"""A GPT-3 model of Brown et al. 2020, Table 2.1, with its published batch and learning rate.

  --config=experiments/configs/gpt3.py:Medium          full size (needs accelerators)
  --config=experiments/configs/gpt3.py:Medium,16       width / 16, layers and heads kept (CPU)

Full size uses the accelerator fast path: bfloat16 compute with float32 parameters,
jax.nn.dot_product_attention (JAX picks cuDNN flash attention on GPUs when it can), layers
scanned, matmul outputs saved for the backward pass (remat='dots'), FSDP over the devices.
"""

import ml_collections

from experiments.configs import default
from models import gpt3


def get_config(arg: str = 'Small') -> ml_collections.ConfigDict:
  name, _, factor = arg.partition(',')
  c = default.get_config()
  row = gpt3.GPT3_TABLE[name] if name in gpt3.GPT3_TABLE else None
  if row is None:
    raise ValueError(f'unknown GPT-3 model {name!r}; choose one of {list(gpt3.GPT3_TABLE)}')
  if factor:
    c.model.update(gpt3.reduced(name, float(factor)))
    c.model.max_seq_len = c.data.seq_len = 128
    c.train.global_batch = 16
    c.train.lr = 3e-3
  else:
    c.model.update(gpt3.full(name))
    c.model.vocab_size = 0  # from the tokenizer (GPT-3's own BPE has 50257)
    c.model.update(dict(dtype='bfloat16', scan_layers=True, remat='dots'))
    c.data.seq_len = gpt3.GPT3_CONTEXT
    # The published batch in sequences, rounded up to a multiple of 32 so it splits evenly.
    c.train.global_batch = -(-int(row.batch_tokens / gpt3.GPT3_CONTEXT) // 32) * 32
    c.train.lr = row.lr
    c.train.warmup_steps = 375  # GPT-3 warmed up over 375M tokens; ~ this many steps at 1M
    c.mesh = ml_collections.ConfigDict({'data': 1, 'fsdp': -1, 'tensor': 1})
  c.tags.group = f'gpt3-{name}' + (f'/{factor}' if factor else '')
  return c
