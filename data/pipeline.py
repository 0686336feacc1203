"""Packed, per-host, exactly resumable batches of token sequences.

Row r of every global batch is fed by its own packing stream r. In epoch e, stream r reads
the documents perm_e[r], perm_e[r + B], perm_e[r + 2B], ... (B = global batch rows, perm_e a
permutation seeded by (seed, e)), tokenizes them, ends each document with a separator, and
cuts the token stream into chunks of seq_len + 1 (inputs = chunk[:-1], targets = chunk[1:]).
Consecutive chunks share one token, so every token is a target exactly once.

Why streams: a row's content depends only on (seed, r), never on how many processes there
are, so each process reads and tokenizes only its own rows and the global batch is the same
for 1 or 100 hosts. A stream's state is three integers (epoch, document index within the
stream, token offset within that document): a restore continues at exactly the next token,
in the middle of a document if need be (nanodo's packer drops the rest of the document).

Small corpora (fewer than 4 documents per stream: 38 Shakespeare plays and 16 rows) are cut
into pieces at line breaks so that every stream has several; the separator still marks only
true document ends, and segment ids (1, 2, ... within a row) change after each separator.
"""

import math

import numpy as np

from data import sources
from data.tokenizer import load_tokenizer

STATE_FIELDS = ('epoch', 'index', 'offset')
EVAL_SEED = 1234  # the held-out batches do not depend on the training seed
_MAX_BPT_DOCS = 2000  # documents used to measure bytes per token


class _Units:
  """The packing units of a split: whole documents, or pieces of them for small corpora."""

  def __init__(self, source, text_key: str, tokenizer, min_units: int):
    self.source, self.text_key, self.tok = source, text_key, tokenizer
    n = len(source)
    self._texts = None
    if n >= min_units:
      self.units = [(i, 0, None, True) for i in range(n)]  # read lazily
      return
    self._texts = [bytes(source[i][text_key]) for i in range(n)]
    total = sum(len(t) for t in self._texts)
    piece = max(1, math.ceil(total / min_units))
    self.units = self._pieces(piece, at_lines=True)
    if len(self.units) < min_units:  # few line breaks: cut anywhere
      self.units = self._pieces(piece, at_lines=False)

  def _pieces(self, piece: int, at_lines: bool) -> list[tuple]:
    units = []
    for i, text in enumerate(self._texts):
      start = 0
      while start < len(text):
        end = min(start + piece, len(text))
        if at_lines and end < len(text):
          end = (text.find(b'\n', end) + 1) or len(text)
        units.append((i, start, end, end == len(text)))
        start = end
      if not text:
        units.append((i, 0, 0, True))
    return units

  def __len__(self) -> int:
    return len(self.units)

  def text(self, u: int) -> bytes:
    doc, start, end, _ = self.units[u]
    text = self._texts[doc] if self._texts is not None else bytes(self.source[doc][self.text_key])
    return text[start:end]

  def tokens(self, u: int) -> np.ndarray:
    ids = self.tok.encode(self.text(u))
    if self.units[u][3]:
      ids = np.append(ids, np.int32(self.tok.eos_id))
    return ids.astype(np.int32)

  def total_tokens(self) -> int | None:
    """Tokens in the split when it is held in memory (small corpora), else None."""
    if self._texts is None:
      return None
    return sum(len(self.tokens(u)) for u in range(len(self)))


class PackedIterator:
  """Rows [first_row, first_row + rows) of every global batch, packed from their streams."""

  def __init__(
    self, units: _Units, num_streams: int, first_row: int, rows: int, seq_len: int, seed: int
  ):
    self.units, self.num_streams, self.seq_len, self.seed = units, num_streams, seq_len, seed
    self.rows = list(range(first_row, first_row + rows))
    self.state = np.zeros((rows, len(STATE_FIELDS)), np.int32)
    self._perms: dict[int, np.ndarray] = {}
    self._cache: dict[int, tuple[int, np.ndarray]] = {}  # row -> (unit, its tokens)

  def _order(self, epoch: int, row: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= 4:  # rows drift apart by at most an epoch or so
        self._perms.pop(min(self._perms))
      self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
    return self._perms[epoch][row :: self.num_streams]

  def _unit_tokens(self, row: int, unit: int) -> np.ndarray:
    cached = self._cache.get(row)
    if cached is None or cached[0] != unit:
      cached = (unit, self.units.tokens(unit))
      self._cache[row] = cached
    return cached[1]

  def _chunk(self, i: int) -> np.ndarray:
    """seq_len + 1 tokens of stream row i; leaves its state on the chunk's last token."""
    row = self.rows[i]
    epoch, index, offset = (int(x) for x in self.state[i])
    need, parts, empty_epochs = self.seq_len + 1, [], 0
    while True:
      order = self._order(epoch, row)
      if index >= len(order):  # this stream's share of the epoch is used up
        epoch, index, offset = epoch + 1, 0, 0
        empty_epochs += 1
        if empty_epochs > 2 and not any(len(p) for p in parts):
          raise ValueError(f'packing stream {row} gets no tokens: the corpus is too small')
        continue
      toks = self._unit_tokens(row, int(order[index]))
      take = toks[offset : offset + need]
      parts.append(take)
      need -= len(take)
      offset += len(take)
      if need == 0:
        break
      index, offset = index + 1, 0
    self.state[i] = (epoch, index, offset - 1)  # the next chunk starts on this last token
    return np.concatenate(parts)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    chunks_BxL1 = np.stack([self._chunk(i) for i in range(len(self.rows))])
    inputs_BxL = chunks_BxL1[:, :-1]
    eos = inputs_BxL == self.units.tok.eos_id
    # The separator belongs to the document it ends; the next token starts a new segment.
    segment_ids_BxL = 1 + np.cumsum(eos, axis=1) - eos
    return {
      'inputs': np.ascontiguousarray(inputs_BxL, dtype=np.int32),
      'targets': np.ascontiguousarray(chunks_BxL1[:, 1:], dtype=np.int32),
      'segment_ids': segment_ids_BxL.astype(np.int32),
    }

  def get_state(self) -> np.ndarray:
    """int32 [rows, 3]: (epoch, index, offset) of each of this process's rows."""
    return self.state.copy()

  def set_state(self, state: np.ndarray) -> None:
    state = np.asarray(state, np.int32)
    if state.shape != self.state.shape:
      raise ValueError(f'data state has shape {state.shape}, expected {self.state.shape}')
    self.state = state.copy()


class DataPipeline:
  """Training and evaluation batches for one process, as configured by `config.data`."""

  def __init__(
    self,
    data_cfg,
    global_batch: int,
    seq_len: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if global_batch < 1 or seq_len < 1:  # either would loop forever looking for tokens
      raise ValueError(
        f'global batch {global_batch} and sequence length {seq_len} must both be >= 1'
      )
    if global_batch % process_count:
      raise ValueError(f'global batch {global_batch} does not split over {process_count} processes')
    self.cfg, self.global_batch, self.seq_len, self.seed = data_cfg, global_batch, seq_len, seed
    self.process_index, self.process_count = process_index, process_count
    self.tokenizer = load_tokenizer(data_cfg)
    self.vocab_size = self.tokenizer.vocab_size
    train, self._eval_source = sources.open_splits(data_cfg)
    self._train = _Units(train, data_cfg.text_key, self.tokenizer, 4 * global_batch)
    self._eval_units: dict[int, _Units] = {}
    total = self._train.total_tokens()
    if total is not None and total < seq_len + 1:
      raise ValueError(
        f'the training split of {data_cfg.name} has {total} tokens, fewer than one sequence '
        f'({seq_len + 1}); use more text or a shorter data.seq_len'
      )
    self.bytes_per_token = self._measure_bytes_per_token()

  def _measure_bytes_per_token(self) -> float:
    n_bytes = n_tokens = 0
    for i in range(min(len(self._eval_source), _MAX_BPT_DOCS)):
      text = bytes(self._eval_source[i][self.cfg.text_key])
      n_bytes += len(text)  # UTF-8 bytes of the text itself, not characters, not pieces
      n_tokens += len(self.tokenizer.encode(text)) + 1  # + the separator, also predicted
    if n_tokens <= self.seq_len:
      raise ValueError(
        f'the {self.cfg.eval_split} split has {n_tokens} tokens, fewer than one sequence'
      )
    return n_bytes / n_tokens

  def _rows(self, batch: int) -> tuple[int, int]:
    per = batch // self.process_count
    return self.process_index * per, per

  def train_iterator(self) -> PackedIterator:
    first, rows = self._rows(self.global_batch)
    return PackedIterator(self._train, self.global_batch, first, rows, self.seq_len, self.seed)

  def eval_batches(self, num_batches: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The same held-out batches on every call (this process's rows of each)."""
    if batch_size < 1 or num_batches < 1:
      raise ValueError(f'{num_batches} eval batches of {batch_size}: both must be >= 1')
    if batch_size % self.process_count:
      raise ValueError(
        f'eval batch {batch_size} does not split over {self.process_count} processes'
      )
    if batch_size not in self._eval_units:
      self._eval_units[batch_size] = _Units(
        self._eval_source, self.cfg.text_key, self.tokenizer, 4 * batch_size
      )
    first, rows = self._rows(batch_size)
    it = PackedIterator(
      self._eval_units[batch_size], batch_size, first, rows, self.seq_len, EVAL_SEED
    )
    return [next(it) for _ in range(num_batches)]
