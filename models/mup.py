"""Maximal update parametrization (muP; Yang et al. 2022, Tensor Programs V, Table 8, Adam).

`model.parametrization='mup'` makes the best hyperparameters of a model of width
`model.mup_base_width` the best ones at every width, so a learning rate tuned on a narrow
model transfers. With m = d_model / mup_base_width (the width multiplier) and every other
width (d_ff, heads x head_dim) growing with d_model:

| parameter (by its logical axes)                    | init std          | Adam lr    |
|---|---|---|
| hidden: 'embed' plus another width axis            | init_std / sqrt(m) | lr / m    |
|   (Q, K, V, O, MLP in and out)                     |                    |           |
| vector-like: no second width axis (token embedding, | init_std           | lr        |
|   position table, biases, norms, unembedding)      |                    |           |

and in the forward pass the logits are multiplied by 1/m (the output multiplier, so the
unembedding is initialized and trained like the embedding) and attention scores are QK^T / Dh
instead of QK^T / sqrt(Dh). At m = 1 and Dh = 1 every rule is the identity: the model is the
standard parametrization (SP) exactly (tested).

Tied embeddings (the default) are supported as the `mup` package's MuSharedReadout does it:
the one (vocab, embed) table is vector-like on both sides (init_std, lr unscaled), and the
output multiplier 1/m keeps the logits' update O(1).

The rule reads only the logical axis names every parameter is born with (models/layers.py),
as the weight-decay mask does: a model with new layers needs no list of names here.
The Adam multipliers are applied by train/optim.py to the whole update, decoupled weight decay
included (as per-group learning rates do in torch's AdamW); Lion and Adafactor (absolute steps)
have Adam's per-coordinate update size, so the same multipliers apply.
"""

import math

import jax
from flax import nnx

# Logical axes whose size grows with the width; 'vocab' and unnamed (position) axes do not.
WIDTH_AXES = ('embed', 'mlp', 'heads', 'kv_heads', 'head_dim')


def is_hidden(logical_axes) -> bool:
  """A matrix from width to width: an 'embed' axis and at least one other width axis."""
  axes = tuple(logical_axes or ())
  others = [a for a in axes if a != 'embed']
  return len(others) < len(axes) and any(a in WIDTH_AXES for a in others)


def _params(module: nnx.Module):
  return [v for _, v in nnx.iter_graph(module) if isinstance(v, nnx.Param)]


def scale_hidden_init(module: nnx.Module, m: float) -> None:
  """Hidden matrices' init std divided by sqrt(m), in place (var ~ 1/fan_in)."""
  factor = 1.0 / math.sqrt(m)
  for var in _params(module):
    if is_hidden(var.get_metadata().get('logical_axes')):
      var[...] = var[...] * jax.numpy.asarray(factor, var[...].dtype)


def lr_multipliers(abstract_model: nnx.Module, m: float) -> dict:
  """Adam lr multiplier per parameter (1/m for hidden matrices, else 1), as a pure dict."""

  def one(var):
    return 1.0 / m if is_hidden(var.get_metadata().get('logical_axes')) else 1.0

  tree = jax.tree.map(one, nnx.state(abstract_model), is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.State(tree).to_pure_dict() if not isinstance(tree, dict) else tree
