r"""Where a trained model's attention goes in one sentence, read at the level of words.

  python -m launch.attention --workdir=runs/demo/runs/<run> --query=it
  python -m launch.attention --workdir=... --layers=0,2 --heads=1,3      # the word grid
  python -m launch.attention --workdir=... --text="..." --query=it --target=animal

Byte (or subword) attention is read per word: the weight that word i gives to word j is the
weight from the LAST token of word i (in a causal model, the one token that has read the
whole word) summed over the tokens of word j. Whitespace between words is its own column
('(space)'), so every row still sums to 1.

* `--query=WORD`: one bar chart per layer and head of where WORD looks, the `--target` word
  (default 'animal', the article's example) highlighted; prints the head that puts the most
  weight on the target, or says that no head prefers it to every other word.
* otherwise: the word-by-word heatmap of each selected layer and head (`--layers`, `--heads`).
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

from experiments.attention_words import (
  SPACE,
  find_word,
  normalize_word,
  verdict,
  word_maps,
  words_of,
)

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run directory.', required=True)
_TEXT = flags.DEFINE_string(
  'text', "The animal didn't cross the street because it was too tired", 'Sentence.'
)
_QUERY = flags.DEFINE_string('query', '', 'Draw where this word looks (per layer and head).')
_TARGET = flags.DEFINE_string('target', 'animal', 'With --query: the word to look for.')
_OUT = flags.DEFINE_string('out', '', 'PNG path (default: WORKDIR/attention[_QUERY].png).')
_LAYERS = flags.DEFINE_list('layers', [], 'Only these layers (default: all).')
_HEADS = flags.DEFINE_list('heads', [], 'Only these heads (default: all).')


# -- Words (pure numpy: tested without a model) ---------------------------------------------


def select(values: list[str], count: int, what: str) -> list[int]:
  """Indices from a --layers/--heads list, checked against `count`; empty: all."""
  if not values:
    return list(range(count))
  try:
    idx = [int(v) for v in values]
  except ValueError:
    raise ValueError(f'--{what} takes integers, got {",".join(values)}') from None
  bad = [i for i in idx if not 0 <= i < count]
  if bad:
    raise ValueError(f'--{what}={",".join(values)}: the model has {what} 0..{count - 1}')
  return idx


# -- The model -------------------------------------------------------------------------------


def read_config(workdir: str):
  import ml_collections

  from train import files

  config_path = files.join(workdir, 'config.json')  # local or gs://
  if not files.exists(config_path):
    raise FileNotFoundError(f'{workdir} is not a training run (no config.json)')
  return ml_collections.ConfigDict(json.loads(files.read_text(config_path)))


def load_model(workdir: str):
  """(config, model, tokenizer, step) of the newest readable checkpoint in a run directory."""
  import jax
  from flax import nnx

  from data.tokenizer import load_tokenizer
  from models.transformer import ModelConfig
  from train import checkpoint, sharding
  from train.step import make_trainer

  config = read_config(workdir)
  if not checkpoint.existing_steps(workdir):
    raise FileNotFoundError(f'{workdir} has no checkpoint yet; train it first')
  tokenizer = load_tokenizer(config.data)
  model_cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size)
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  trainer = make_trainer(config, model_cfg, mesh)
  mngr = checkpoint.manager(workdir, config.checkpoint)
  abstract = checkpoint.abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
  try:
    step, state, _ = checkpoint.restore_latest(mngr, abstract)
  finally:
    mngr.close()
  model = nnx.merge(trainer.graphdef, state['params'])
  return config, model, tokenizer, step


# -- Drawing ---------------------------------------------------------------------------------


def draw_query(maps, spans, query, target, layers, heads, title, out):
  import matplotlib.pyplot as plt

  q = find_word(spans, query, '--query')
  t = find_word(spans, target, '--target')
  labels = [w for w, *_ in spans[: q + 1]] + [SPACE]
  cols = [*range(q + 1), len(spans)]
  fig, axes = plt.subplots(
    len(layers),
    len(heads),
    figsize=(1.6 + 0.28 * len(labels) * len(heads), 1.9 * len(layers)),
    squeeze=False,
    sharey=True,
  )
  for r, layer in enumerate(layers):
    for c, head in enumerate(heads):
      ax = axes[r][c]
      colors = ['C3' if j == t else ('C1' if j == q else 'C0') for j in cols]
      ax.bar(range(len(cols)), maps[layer, head, q, cols], color=colors)
      ax.set_ylim(0, 1)
      ax.set_title(f'L{layer} H{head}', fontsize=7)
      ax.set_xticks(
        range(len(cols)), labels if r == len(layers) - 1 else [], rotation=90, fontsize=6
      )
      ax.tick_params(axis='y', labelsize=6)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  save_figure(fig, out, dpi=100)


def draw_grid(maps, spans, layers, heads, title, out):
  import matplotlib.pyplot as plt

  labels = [w for w, *_ in spans]
  n = len(labels)
  size = max(2.5, 0.32 * n)
  fig, axes = plt.subplots(
    len(layers), len(heads), figsize=(size * len(heads), size * len(layers)), squeeze=False
  )
  for r, layer in enumerate(layers):
    for c, head in enumerate(heads):
      ax = axes[r][c]
      ax.imshow(maps[layer, head, :, :n], cmap='viridis', vmin=0, vmax=1)
      ax.set_title(f'layer {layer} head {head}', fontsize=8)
      ax.set_xticks(range(n), labels, fontsize=7, rotation=90)
      ax.set_yticks(range(n), labels, fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  save_figure(fig, out, dpi=90)


def save_figure(fig, out: str, dpi: int) -> None:
  """Writes a figure to a local or gs:// path."""
  import matplotlib.pyplot as plt
  from etils import epath

  with epath.Path(out).open('wb') as f:
    fig.savefig(f, dpi=dpi, format=os.path.splitext(out)[1][1:] or 'png')
  plt.close(fig)


def main(argv: list[str]) -> None:
  del argv
  try:
    config = read_config(_WORKDIR.value)
    n_layers, n_heads = config.model.num_layers, config.model.num_heads
    layers = select(_LAYERS.value, n_layers, 'layers')
    heads = select(_HEADS.value, n_heads, 'heads')
    spans = words_of(_TEXT.value)
    if not spans:
      raise ValueError('--text has no words')
    if _QUERY.value:
      find_word(spans, _QUERY.value, '--query')
      find_word(spans, _TARGET.value, '--target')
    config, model, tokenizer, step = load_model(_WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  import matplotlib

  from train import files

  matplotlib.use('Agg')
  spans, maps = word_maps(model, tokenizer, _TEXT.value)
  import jax

  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx_state(model)))
  run = os.path.basename(os.path.normpath(_WORKDIR.value))
  if _QUERY.value:
    name = f'attention_{normalize_word(_QUERY.value)}.png'
    out = _OUT.value or files.join(_WORKDIR.value, name)
    title = f'where {_QUERY.value!r} looks (red: {_TARGET.value!r}) - {run} @ step {step}'
    draw_query(maps, spans, _QUERY.value, _TARGET.value, layers, heads, title, out)
    print(verdict(maps, spans, _QUERY.value, _TARGET.value, layers, heads, n_params))
  else:
    out = _OUT.value or files.join(_WORKDIR.value, 'attention.png')
    title = f'{_TEXT.value!r}: word-level attention (rows look at columns) - {run} @ step {step}'
    draw_grid(maps, spans, layers, heads, title, out)
  print(out)


def nnx_state(model):
  from flax import nnx

  return nnx.state(model, nnx.Param)


if __name__ == '__main__':
  app.run(main)
