r"""Text from a trained model: python -m launch.sample --workdir=RUN --prompt='ROMEO:'.

  python -m launch.sample --workdir=runs/demo/runs/L3-d192-h6 --prompt='ROMEO:' \
      --max_tokens=200 --temperature=0.8 --top_k=40 --seed=0

Restores the newest readable checkpoint (train/restore.py, the restore training resumes
through) and decodes with a key/value cache under one jit (models/decode.py). Prints the prompt
and its continuation; writes nothing. --temperature=0 is greedy decoding. With learned
positions the prompt and the new tokens must fit model.max_seq_len; a RoPE model may go past it
(to positions it never saw in training). Bad input is one
`error:` line (exit 2) before anything is restored or compiled.
"""

import math
import sys

from absl import app, flags, logging

from core import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run directory.', required=True)
_PROMPT = flags.DEFINE_string('prompt', None, 'Text to continue.', required=True)
_MAX = flags.DEFINE_integer('max_tokens', 200, 'Tokens to generate.')
_TEMP = flags.DEFINE_float('temperature', 1.0, 'Softmax temperature; 0: greedy (argmax).')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely tokens (0: all).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed of the sampler.')


def check(prompt_ids, config, vocab_size: int) -> None:
  """One-line ValueErrors for settings that cannot give a sample."""
  if _MAX.value < 1:
    raise ValueError(f'--max_tokens={_MAX.value} must be >= 1')
  if not math.isfinite(_TEMP.value) or _TEMP.value < 0:
    raise ValueError(f'--temperature={_TEMP.value} must be a finite number >= 0 (0: greedy)')
  if not 0 <= _TOP_K.value <= vocab_size:
    raise ValueError(f'--top_k={_TOP_K.value} must be between 0 (all) and the {vocab_size} tokens')
  if _SEED.value < 0:
    raise ValueError(f'--seed={_SEED.value} must be >= 0')
  if len(prompt_ids) == 0:
    raise ValueError('--prompt is empty (after tokenization); give some text to continue')
  total, table = len(prompt_ids) + _MAX.value, config.model.max_seq_len
  if config.model.pos_emb == 'learned' and total > table:
    raise ValueError(
      f'{len(prompt_ids)} prompt tokens + --max_tokens={_MAX.value} = {total} exceeds the '
      f"model's position table ({table}); shorten one"
    )


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; give every setting as --flag=value')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  from data.tokenizer import load_tokenizer
  from train import restore

  try:
    config = restore.read_config(_WORKDIR.value)
    restore.check_restorable(_WORKDIR.value)
    tokenizer = load_tokenizer(config.data)
    prompt_ids = tokenizer.encode(_PROMPT.value.encode('utf-8'))
    check(prompt_ids, config, tokenizer.vocab_size)
    trained = restore.load(_WORKDIR.value, config)
  except (ValueError, OSError) as e:
    cli.fail(str(e))
  from models import decode

  tokens = decode.generate(
    trained.model,
    [prompt_ids],
    _MAX.value,
    temperature=_TEMP.value,
    top_k=_TOP_K.value,
    seed=_SEED.value,
  )
  text = tokenizer.decode([int(t) for t in tokens[0]])
  sys.stdout.write(_PROMPT.value + text.decode('utf-8', 'replace') + '\n')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
