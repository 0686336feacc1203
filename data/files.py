"""Parquet and JSONL text corpora (local or gs://), the on-disk form of most public corpora.

  --config.data.name=parquet --config.data.text_glob='gs://bucket/c4/*.parquet'
  --config.data.name=jsonl   --config.data.text_glob='/data/corpus/*.jsonl'

The split of a file comes from its name, as Hugging Face datasets lay them out: a usual split
name among the words of the file name (`train-00000-of-00008.parquet`, `test.jsonl`,
`c4-validation.00003-of-00008.jsonl`) or of its folder (`train/part-0.parquet`), else the
first word of the file name. Compressed files (.gz, .zst) are not read. The splits are the
ones present; a missing one is an error that names them. Each document is one row (Parquet,
read with pyarrow) or one line (JSONL, stdlib json) holding `data.text_key`.

A split is a random-access source like the TFDS ones (len() and [i] -> {text_key: bytes}), so
data/pipeline.py packs it the same way: per-host rows and an exactly resumable state of three
integers per row, whatever the source. Document i is the i-th row over the files in sorted
order; Parquet is read one row group at a time, with the most recently used groups kept (up to
_CACHE_BYTES of text), JSONL through an index of line offsets built once when the split opens.
Random document order over a corpus much larger than the cache reads a row group per document:
for large corpora, a prepared ArrayRecord dataset (TFDS) reads faster.
"""

import bisect
import collections
import json
import re

import numpy as np
from etils import epath

from data import text_corpus

FORMATS = ('parquet', 'jsonl')
_CACHE_BYTES = 1 << 30
_SPLIT_RE = re.compile(r'[A-Za-z]+')
_USUAL_SPLITS = ('train', 'validation', 'valid', 'val', 'dev', 'test')


def split_of(path: str) -> str:
  """'train' for .../train-00000-of-00008.parquet, .../test.jsonl, .../c4-train.00001.jsonl or
  .../train/part-0.parquet: a usual split name among the words of the file name, else the
  folder's name if it is one, else the file name's first word, else the folder's name."""
  parts = path.rstrip('/').split('/')
  words = re.split(r'[-_.]', parts[-1].lower())
  known = [w for w in words if w in _USUAL_SPLITS]
  if known:
    return known[0]
  if len(parts) > 1 and parts[-2].lower() in _USUAL_SPLITS:
    return parts[-2].lower()
  m = _SPLIT_RE.match(parts[-1])
  word = m.group(0).lower() if m else ''
  if word and parts[-1][len(word) : len(word) + 1] in ('-', '_', '.'):
    return word
  return parts[-2].lower() if len(parts) > 1 else ''


def split_files(pattern: str) -> dict[str, list[str]]:
  """{split: sorted files} of a glob (local or gs://); raises one line if nothing matches."""
  found = text_corpus.list_files(pattern)
  if not found:
    raise FileNotFoundError(f'no files match {pattern!r}; check the glob (quote it)')
  out: dict[str, list[str]] = collections.defaultdict(list)
  for f in found:
    out[split_of(f)].append(f)
  return {k: sorted(v) for k, v in sorted(out.items())}


class ParquetSource:
  """Rows of a column of Parquet files, by global row index."""

  def __init__(self, paths: list[str], key: str):
    import pyarrow.parquet as pq

    self._pq, self.key, self.paths = pq, key, paths
    self._groups: list[tuple[int, int]] = []  # (file, row group)
    starts = [0]
    for fi, path in enumerate(paths):
      try:
        with epath.Path(path).open('rb') as f:
          meta = pq.ParquetFile(f).metadata
          names = meta.schema.to_arrow_schema().names
      except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise ValueError(f'{path} is not a readable Parquet file ({str(e).strip()})') from None
      if key not in names:
        raise ValueError(f'data.text_key={key!r} is not a column of {path} (columns: {names})')
      for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if n:
          self._groups.append((fi, g))
          starts.append(starts[-1] + n)
    self._starts = starts
    self._cache: collections.OrderedDict[int, list[bytes]] = collections.OrderedDict()
    self._cached_bytes = 0

  def __len__(self) -> int:
    return self._starts[-1]

  def _group(self, g: int) -> list[bytes]:
    if g in self._cache:
      self._cache.move_to_end(g)
      return self._cache[g]
    fi, rg = self._groups[g]
    with epath.Path(self.paths[fi]).open('rb') as f:
      column = self._pq.ParquetFile(f).read_row_group(rg, columns=[self.key]).column(0)
    rows = [_as_bytes(x) for x in column.to_pylist()]
    self._cache[g] = rows
    self._cached_bytes += sum(map(len, rows))
    while self._cached_bytes > _CACHE_BYTES and len(self._cache) > 1:
      self._cached_bytes -= sum(map(len, self._cache.popitem(last=False)[1]))
    return rows

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(i)
    g = bisect.bisect_right(self._starts, i) - 1
    return {self.key: self._group(g)[i - self._starts[g]]}


class JsonlSource:
  """Lines of JSON Lines files (blank lines skipped), by global line index."""

  def __init__(self, paths: list[str], key: str):
    self.key, self.paths = key, paths
    offsets, file_of = [], []
    for fi, path in enumerate(paths):
      data = epath.Path(path).read_bytes()
      starts = np.concatenate([[0], np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1])
      first = len(offsets)
      for s, e in zip(starts, [*starts[1:], len(data)], strict=True):
        if data[s:e].strip():
          offsets.append((s, e))
          file_of.append(fi)
      if len(offsets) > first:  # each file's first record names the text field
        self._check(path, data[offsets[first][0] : offsets[first][1]])
    self._offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
    self._file = np.asarray(file_of, np.int32)
    self._handles: dict[int, object] = {}

  def _check(self, path: str, line: bytes) -> None:
    try:
      record = json.loads(line)
    except ValueError as e:
      raise ValueError(f'{path} is not JSON Lines: its first line does not parse ({e})') from None
    if not isinstance(record, dict) or self.key not in record:
      keys = list(record) if isinstance(record, dict) else type(record).__name__
      raise ValueError(f'data.text_key={self.key!r} is not a field of {path} (first line: {keys})')

  def __len__(self) -> int:
    return len(self._offsets)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    fi = int(self._file[i])
    s, e = (int(x) for x in self._offsets[i])
    f = self._handles.get(fi)
    if f is None:
      f = self._handles[fi] = epath.Path(self.paths[fi]).open('rb')
    f.seek(s)
    line = f.read(e - s)
    try:
      return {self.key: _as_bytes(json.loads(line)[self.key])}
    except (ValueError, KeyError, TypeError) as err:
      raise ValueError(f'{self.paths[fi]}: document {i} has no {self.key!r} text ({err})') from None


def _as_bytes(x) -> bytes:
  if isinstance(x, bytes):
    return x
  return (x if isinstance(x, str) else '').encode('utf-8')


def open_split(data_cfg, split: str):
  """The documents of `split` of a Parquet or JSONL corpus (data.name = 'parquet' | 'jsonl')."""
  if not data_cfg.text_glob:
    raise ValueError(f'data.name={data_cfg.name!r} needs data.text_glob (a local or gs:// glob)')
  splits = split_files(data_cfg.text_glob)
  if split not in splits:
    raise ValueError(
      f'split {split!r} not in {data_cfg.text_glob} (its files make the splits {list(splits)}; '
      'a file belongs to the split its name starts with, or to its folder); set '
      'data.train_split and data.eval_split to splits it has'
    )
  source = (ParquetSource if data_cfg.name == 'parquet' else JsonlSource)(
    splits[split], data_cfg.text_key
  )
  if len(source) == 0:
    raise ValueError(f'the {split} split of {data_cfg.text_glob} holds no documents')
  return source
