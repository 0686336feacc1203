"""The GPT-3 family of Brown et al. 2020 (Table 2.1), at full and at reduced size.

`GPT3_TABLE` holds the published rows verbatim. `full(name)` and `reduced(name, factor)`
return `config.model` overrides for `models.transformer`.

Two rows are inconsistent as printed, and the registry resolves them like this:
* XL prints 24 heads x d_head 128 = 3072, but d_model = 2048. The published 1.3B parameters
  are what a model whose attention width equals d_model has (12 * 24 * 2048^2 + embeddings =
  1.31B; with a 3072-wide attention it would be 1.52B). We build 16 heads x 128 = 2048, as
  most replications of this size do; `full('XL', as_printed=True)` gives 24 x 128 instead
  (head_dim set on its own, attention width 3072).
* 13B prints d_model 5140 with 40 heads x 128 = 5120; 5140 is not divisible by 40. We build
  d_model = 5120 (= 40 x 128), which gives 12.9B parameters.

Reduced size keeps each model's layer count and head count (the quantities a
scaling-by-shape study varies) and shrinks width: head_dim -> max(min_head_dim,
round(head_dim / factor)), d_model = num_heads * head_dim, d_ff = 4 * d_model. The
context and the vocabulary come from the run's data config.
"""

import dataclasses

from models import shapes

GPT3_VOCAB = 50257  # GPT-2 BPE, which GPT-3 reuses.
GPT3_CONTEXT = 2048


@dataclasses.dataclass(frozen=True)
class GPT3Row:
  name: str
  n_params: float  # as published
  n_layers: int
  d_model: int
  n_heads: int
  d_head: int
  batch_tokens: float  # batch size in tokens
  lr: float


GPT3_TABLE: dict[str, GPT3Row] = {
  r.name: r
  for r in [
    GPT3Row('Small', 125e6, 12, 768, 12, 64, 0.5e6, 6.0e-4),
    GPT3Row('Medium', 350e6, 24, 1024, 16, 64, 0.5e6, 3.0e-4),
    GPT3Row('Large', 760e6, 24, 1536, 16, 96, 0.5e6, 2.5e-4),
    GPT3Row('XL', 1.3e9, 24, 2048, 24, 128, 1e6, 2.0e-4),
    GPT3Row('2.7B', 2.7e9, 32, 2560, 32, 80, 1e6, 1.6e-4),
    GPT3Row('6.7B', 6.7e9, 32, 4096, 32, 128, 2e6, 1.2e-4),
    GPT3Row('13B', 13.0e9, 40, 5140, 40, 128, 2e6, 1.0e-4),
    GPT3Row('175B', 175.0e9, 96, 12288, 96, 128, 3.2e6, 0.6e-4),
  ]
}


def _resolved(row: GPT3Row, as_printed: bool) -> tuple[int, int, int]:
  """(d_model, num_heads, head_dim) that the registry builds for a row."""
  if as_printed or row.n_heads * row.d_head == row.d_model:
    return row.d_model, row.n_heads, row.d_head
  if row.name == 'XL':
    return row.d_model, row.d_model // row.d_head, row.d_head
  # 13B: keep heads and head_dim, make d_model their product.
  return row.n_heads * row.d_head, row.n_heads, row.d_head


def _lookup(name: str) -> GPT3Row:
  if name not in GPT3_TABLE:
    raise ValueError(f'unknown GPT-3 model {name!r}; choose one of {list(GPT3_TABLE)}')
  return GPT3_TABLE[name]


def full(name: str, as_printed: bool = False) -> dict:
  """`config.model` overrides for a full-size GPT-3 model."""
  row = _lookup(name)
  shape = _shape(row, *_resolved(row, as_printed))
  return dict(shape, vocab_size=GPT3_VOCAB, max_seq_len=GPT3_CONTEXT, tie_embeddings=True)


def _shape(row, d_model: int, heads: int, head_dim: int) -> dict:
  """A row's layers at the given widths: GPT-3's dense MLP (4 d_model), learned positions."""
  return dict(
    d_model=d_model,
    num_layers=row.n_layers,
    num_heads=heads,
    num_kv_heads=0,
    head_dim=head_dim,
    d_ff=shapes.default_d_ff(d_model, 'gelu'),
    pos_emb='learned',
  )


def reduced(name: str, factor: float, min_head_dim: int = 4) -> dict:
  """`config.model` overrides for GPT-3 `name` with its width divided by `factor`.

  Layer and head counts are kept; vocab and context are left to the run's config.
  """
  if factor < 1:
    raise ValueError(f'width factor must be >= 1, got {factor}')
  row = _lookup(name)
  _, heads, head_dim = _resolved(row, as_printed=False)
  head_dim = max(min_head_dim, round(head_dim / factor))
  return _shape(row, heads * head_dim, heads, head_dim)
