"""Tokenizers: raw bytes (default) and SentencePiece trained on a corpus's training split.

Both map bytes -> int ids and reserve one id as the end-of-document separator that packing
puts between documents. Bytes: ids 0..255 are the byte values (any byte, not only UTF-8),
256 is the separator. SentencePiece: its own ids, separator = its EOS id.

Train a SentencePiece vocabulary beside the dataset:
  python -m data.tokenizer --config=experiments/configs/default.py --vocab_size=1024
and use it with --config.data.tokenizer=<the printed path>.
"""

import os
import sys
import tempfile

import numpy as np

# SentencePiece with byte fallback needs 256 byte pieces, <unk>, <s>, </s>, and then the
# corpus's characters: a vocabulary below this can never be trained.
MIN_VOCAB = 260


class ByteTokenizer:
  vocab_size = 257
  eos_id = 256

  def encode(self, text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> bytes:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256)

  def num_bytes(self, ids: np.ndarray) -> int:
    return int(np.count_nonzero(np.asarray(ids) < 256))


class SentencePieceTokenizer:
  def __init__(self, path: str):
    import sentencepiece as spm

    if not os.path.exists(path):
      raise FileNotFoundError(
        f'tokenizer file {path} does not exist; train one with python -m data.tokenizer'
      )
    self.path = path
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
      raise ValueError(
        f'data.tokenizer={path} is not a SentencePiece model ({str(e).strip()}); '
        'train one with python -m data.tokenizer'
      ) from e
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    # Byte length of every piece, for bits-per-byte ('▁' is a space; <0xNN> is one byte).
    lengths = np.zeros(self.vocab_size, np.int64)
    for i in range(self.vocab_size):
      if self._sp.is_control(i) or self._sp.is_unknown(i):
        continue
      piece = self._sp.id_to_piece(i)
      lengths[i] = 1 if self._sp.is_byte(i) else len(piece.replace('\u2581', ' ').encode())
    self._piece_bytes = lengths

  def encode(self, text: bytes) -> np.ndarray:
    return np.asarray(self._sp.encode(text.decode('utf-8', 'replace')), np.int32)

  def decode(self, ids) -> bytes:
    return self._sp.decode([int(i) for i in ids]).encode()

  def num_bytes(self, ids: np.ndarray) -> int:
    return int(self._piece_bytes[np.asarray(ids)].sum())


def load_tokenizer(data_cfg):
  """The tokenizer a data config names: 'bytes' or a SentencePiece .model path."""
  name = data_cfg.tokenizer
  if name == 'bytes':
    return ByteTokenizer()
  if name.endswith('.model'):
    return SentencePieceTokenizer(name)
  raise ValueError(f"data.tokenizer={name!r}: use 'bytes' or the path of a SentencePiece .model")


def train_sentencepiece(texts, vocab_size: int, out_prefix: str) -> str:
  """Trains a BPE SentencePiece model on an iterable of bytes documents; returns its path."""
  import sentencepiece as spm

  os.makedirs(os.path.dirname(out_prefix) or '.', exist_ok=True)
  with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False, encoding='utf-8') as f:
    for text in texts:
      f.write(text.decode('utf-8', 'replace').replace('\r', '') + '\n')
  try:
    _train(spm, f.name, out_prefix, vocab_size)
  finally:
    os.unlink(f.name)
  return out_prefix + '.model'


def _train(spm, text_path: str, out_prefix: str, vocab_size: int) -> None:
  try:
    spm.SentencePieceTrainer.train(
      input=text_path,
      model_prefix=out_prefix,
      vocab_size=vocab_size,
      model_type='bpe',
      byte_fallback=True,
      character_coverage=1.0,
      max_sentence_length=1 << 16,
      minloglevel=2,
      num_threads=os.cpu_count() or 1,
    )
  except RuntimeError as e:  # e.g. 'Vocabulary size is smaller than required_chars. 262 vs 270'
    detail = str(e).split(']')[-1].strip()
    raise ValueError(
      f'SentencePiece could not train a vocabulary of {vocab_size}: {detail}; '
      f'use a --vocab_size of at least {MIN_VOCAB} and above the number of distinct characters'
    ) from e


def main(argv) -> None:
  from data import cli, sources

  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; give every setting as --flag=value')
  config = _CONFIG.value
  try:
    src = sources.open_split(config.data, config.data.train_split)
    texts = (src[i][config.data.text_key] for i in range(len(src)))
    prefix = os.path.join(sources.dataset_dir(config.data), f'spm_bpe_{_VOCAB.value}')
    path = train_sentencepiece(texts, _VOCAB.value, prefix)
  except (ValueError, OSError) as e:
    cli.fail(str(e))
  print(path)
  print(f'use it with: --config.data.tokenizer={path}', file=sys.stderr)


if __name__ == '__main__':
  from absl import app, flags

  from data import cli

  _CONFIG = cli.define_config_file('config', 'experiments/configs/default.py', 'Config.')
  _VOCAB = flags.DEFINE_integer(
    'vocab_size', 1024, 'SentencePiece vocabulary size.', lower_bound=MIN_VOCAB
  )
  app.run(main, flags_parser=cli.parse_flags)
