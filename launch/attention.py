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

import os

from absl import app, flags, logging

from experiments.attention_words import (
  SPACE,
  find_word,
  normalize_word,
  select,
  verdict,
  word_maps,
  words_of,
)
from launch import shell
from train import restore

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run directory.', required=True)
_TEXT = flags.DEFINE_string(
  'text', "The animal didn't cross the street because it was too tired", 'Sentence.'
)
_QUERY = flags.DEFINE_string('query', '', 'Draw where this word looks (per layer and head).')
_TARGET = flags.DEFINE_string('target', 'animal', 'With --query: the word to look for.')
_OUT = flags.DEFINE_string('out', '', 'PNG path (default: WORKDIR/attention[_QUERY].png).')
_LAYERS = flags.DEFINE_list('layers', [], 'Only these layers (default: all).')
_HEADS = flags.DEFINE_list('heads', [], 'Only these heads (default: all).')


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
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  with shell.exit_on_error():
    config = restore.read_config(_WORKDIR.value)
    n_layers, n_heads = config.model.num_layers, config.model.num_heads
    layers = select(_LAYERS.value, n_layers, 'layers')
    heads = select(_HEADS.value, n_heads, 'heads')
    spans = words_of(_TEXT.value)
    if not spans:
      raise ValueError('--text has no words')
    if _QUERY.value:
      find_word(spans, _QUERY.value, '--query')
      find_word(spans, _TARGET.value, '--target')
    t = restore.load(_WORKDIR.value, config)
    config, model, tokenizer, step = t.config, t.model, t.tokenizer, t.step
  import matplotlib

  from core import files
  from models import accounting

  matplotlib.use('Agg')
  spans, maps = word_maps(model, tokenizer, _TEXT.value)
  n_params = accounting.param_counts(model.cfg)['total']
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


if __name__ == '__main__':
  app.run(main)
