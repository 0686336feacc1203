r"""Loss and bits per byte of a trained model on any corpus and split, written as JSON.

  python -m launch.eval --workdir=RUN                              # the run's own held-out split
  python -m launch.eval --workdir=RUN --data.name=kjv --label=kjv  # another corpus
  python -m launch.eval --workdir=RUN --data.name=text_folder --data.text_glob='/texts/*.txt' \
      --data.eval_split=validation --batches=32 --batch_size=16

`--data.<key>` are the trainer's data options (experiments/configs/default.py, `data`); keys
not given keep the run's own values. The tokenizer and the sequence length must stay the
model's. The checkpoint is restored by train/restore.py and evaluated by training's own eval
step and `train/loop.evaluate`: mean per-sequence loss over fixed batches of the split, its
standard error, and bits per byte from the bytes per token measured on that split. Writes
`--out` (default RUN/eval_<label>.json, label default <data.name>_<split>), which
`launch.compare --loss_to_loss=X,Y` reads across a sweep. Bad input is one `error:` line
(exit 2) before anything is restored, compiled or written.
"""

import json
import os
import re
import sys

from absl import app, flags, logging

from core import cli


def _data_defaults():
  from experiments.configs import default

  return default.get_config().data


_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run directory.', required=True)
_BATCHES = flags.DEFINE_integer('batches', 16, 'Fixed batches of the split to evaluate.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Sequences per batch.')
_LABEL = flags.DEFINE_string('label', '', 'Name of this evaluation (default: <name>_<split>).')
_OUT = flags.DEFINE_string('out', '', 'JSON path (default: WORKDIR/eval_<label>.json).')


def _define_data():
  """--data.KEY=VALUE flags; ml_collections applies them while defining: errors are one line."""
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_dict('data', _data_defaults(), 'Data options (overrides).')
  except Exception as e:  # noqa: BLE001 - a typo or a bad value: the one-line message
    cli.fail(cli.describe(e, sys.argv))


_DATA = _define_data()


def eval_data(run_data, overrides: dict):
  """The run's data config with the command line's `--data.*` values; one-line errors."""
  data = run_data.copy_and_resolve_references()
  with data.unlocked():
    data.update_from_flattened_dict(overrides)
  for key in ('tokenizer', 'seq_len'):
    if data[key] != run_data[key]:
      raise ValueError(
        f'--data.{key}={data[key]!r}: the model was trained with {run_data[key]!r}; '
        'evaluate with its own'
      )
  if 'train_split' not in overrides:
    data.train_split = data.eval_split  # nothing is trained: no other split need exist
  return data


def output_path(workdir: str, label: str, out: str) -> str:
  """Where the JSON goes; its folder must exist already (checked before any work)."""
  from etils import epath

  from core import rundir

  if not re.fullmatch(r'[\w.+-]+', label):
    raise ValueError(f'--label={label!r}: use letters, digits, . _ + - (it names a file)')
  path = out or rundir.RunDir(workdir).eval_path(label)
  parent = os.path.dirname(path) or '.'
  if not epath.Path(parent).is_dir() or epath.Path(path).is_dir():
    raise ValueError(f'cannot write --out={path}: its folder does not exist or it is a folder')
  return path


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; give every setting as --flag=value')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  from ml_collections import config_flags

  from core import files
  from data.pipeline import DataPipeline
  from train import loop, restore

  try:
    if _BATCHES.value < 1 or _BATCH_SIZE.value < 1:
      sizes = f'--batches={_BATCHES.value} and --batch_size={_BATCH_SIZE.value}'
      raise ValueError(f'{sizes} must both be >= 1')
    config = restore.read_config(_WORKDIR.value)
    restore.check_restorable(_WORKDIR.value)
    data = eval_data(config.data, config_flags.get_override_values(flags.FLAGS['data']))
    label = _LABEL.value or f'{data.name}_{data.eval_split}'
    out = output_path(_WORKDIR.value, label, _OUT.value)
    pipe = DataPipeline(data, global_batch=_BATCH_SIZE.value, seq_len=data.seq_len, seed=0)
    batches = pipe.eval_batches(_BATCHES.value, _BATCH_SIZE.value)
    trained = restore.load(_WORKDIR.value, config)
  except (ValueError, OSError, KeyError) as e:
    cli.fail(str(e))
  result = loop.evaluate(trained.trainer, trained.params, batches, pipe.bytes_per_token)
  record = {
    'label': label,
    'workdir': _WORKDIR.value,
    'step': trained.step,
    **result,
    'bytes_per_token': pipe.bytes_per_token,
    'sequences': _BATCHES.value * _BATCH_SIZE.value,
    'tokens': _BATCHES.value * _BATCH_SIZE.value * data.seq_len,
    'data': data.to_dict(),
  }
  files.write_text(out, json.dumps(record, indent=2))
  print(
    f'{label}: loss {result["eval_loss"]:.4f} ± {result["eval_loss_sem"]:.4f} nats/token, '
    f'{result["eval_bpb"]:.4f} bits/byte (step {trained.step}) -> {out}'
  )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
