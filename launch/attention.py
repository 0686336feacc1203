"""Draw the attention weights of a trained model for one sentence, every layer and head.

  python -m launch.attention --workdir=runs/demo/runs/<run> \
      --text="The animal didn't cross the street because it was too tired" --out=attn.png

Rows of each heatmap are query positions, columns are the keys they attend to (causal: upper
triangle empty). The example sentence is the one from the article this project grew from:
which word does "it" attend to?
"""

import json
import os
import sys

from absl import app, flags
from etils import epath

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run directory.', required=True)
_TEXT = flags.DEFINE_string(
  'text', "The animal didn't cross the street because it was too tired", 'Sentence.'
)
_OUT = flags.DEFINE_string('out', '', 'PNG path (default: WORKDIR/attention.png).')
_LAYERS = flags.DEFINE_list('layers', [], 'Only these layers (default: all).')


def load_model(workdir: str):
  """(config, model) of the newest readable checkpoint in a run directory."""
  import jax
  import ml_collections
  from flax import nnx

  from models.transformer import ModelConfig
  from train import checkpoint, files, sharding
  from train.step import make_trainer

  config_path = files.join(workdir, 'config.json')
  if not files.exists(config_path):
    raise FileNotFoundError(f'{workdir} is not a training run (no config.json)')
  config = ml_collections.ConfigDict(json.loads(files.read_text(config_path)))
  if not checkpoint.existing_steps(workdir):
    raise FileNotFoundError(f'{workdir} has no checkpoint yet; train it first')
  tokenizer = _tokenizer(config)
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


def _tokenizer(config):
  from data.tokenizer import load_tokenizer

  return load_tokenizer(config.data)


def main(argv: list[str]) -> None:
  del argv
  import jax.numpy as jnp
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  try:
    config, model, tokenizer, step = load_model(_WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  ids = tokenizer.encode(_TEXT.value.encode('utf-8'))
  ids = ids[: model.cfg.max_seq_len]
  labels = [tokenizer.decode([i]).decode('utf-8', 'replace') for i in ids]
  w_LxBxHxTxT = model.attention_weights(jnp.asarray([ids], jnp.int32))
  layers = [int(x) for x in _LAYERS.value] or list(range(w_LxBxHxTxT.shape[0]))
  heads = w_LxBxHxTxT.shape[2]
  size = max(2.0, 0.12 * len(ids))
  fig, axes = plt.subplots(
    len(layers), heads, figsize=(size * heads, size * len(layers)), squeeze=False
  )
  for r, layer in enumerate(layers):
    for h in range(heads):
      ax = axes[r][h]
      ax.imshow(w_LxBxHxTxT[layer, 0, h], cmap='viridis', vmin=0, vmax=1)
      ax.set_title(f'layer {layer} head {h}', fontsize=8)
      ax.set_xticks(range(len(ids)), labels, fontsize=5, rotation=90)
      ax.set_yticks(range(len(ids)), labels, fontsize=5)
  fig.suptitle(f'{_TEXT.value!r} - {_WORKDIR.value} @ step {step}', fontsize=10)
  fig.tight_layout()
  from train import files

  out = _OUT.value or files.join(_WORKDIR.value, 'attention.png')
  with epath.Path(out).open('wb') as f:  # local or gs://
    fig.savefig(f, dpi=80, format=os.path.splitext(out)[1][1:] or 'png')
  print(out)


if __name__ == '__main__':
  app.run(main)
