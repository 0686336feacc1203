"""Tokenizers: raw bytes (default), SentencePiece, and Hugging Face `tokenizers` JSON files.

Each maps bytes -> int ids and reserves one id as the end-of-document separator that packing
puts between documents. Bytes: ids 0..255 are the byte values (any byte, not only UTF-8),
256 is the separator. SentencePiece (a .model file): its own ids, separator = its EOS id. A
`tokenizers` JSON file (.json: GPT-2/Llama-style byte-level BPE and the like): its own ids,
separator = the first of SEPARATORS that it defines as a special token. A tokenizer path may
be local or gs://.

Bits per byte divide by the UTF-8 bytes of the original text (data/pipeline.py), whatever the
tokenizer: SentencePiece normalizes text (runs of spaces, NFKC) and adds a leading space, so
its pieces do not add up to the text's bytes.

Train a vocabulary on the training split, stored beside the dataset:
  python -m data.tokenizer --config=experiments/configs/default.py --vocab_size=1024
  python -m data.tokenizer --config=... --vocab_size=1024 --kind=bpe_json   # byte-level BPE
and use it with --config.data.tokenizer=<the printed path>.
"""

import os
import sys
import tempfile

import numpy as np
from etils import epath

# SentencePiece with byte fallback needs 256 byte pieces, <unk>, <s>, </s>, and then the
# corpus's characters: a vocabulary below this can never be trained.
MIN_VOCAB = 260
# Special tokens that end a document, in the order they are looked for in a JSON tokenizer.
SEPARATORS = ('<|endoftext|>', '</s>', '<|end_of_text|>', '<eos>', '<|im_end|>')


def _read(path: str, how: str) -> bytes:
  """The bytes of a tokenizer file, local or gs://."""
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f'tokenizer file {path} does not exist; {how}')
  return p.read_bytes()


class ByteTokenizer:
  vocab_size = 257
  eos_id = 256

  def encode(self, text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> bytes:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256)


class SentencePieceTokenizer:
  def __init__(self, path: str):
    import sentencepiece as spm

    proto = _read(path, 'train one with python -m data.tokenizer')
    self.path = path
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError) as e:
      raise ValueError(
        f'data.tokenizer={path} is not a SentencePiece model ({str(e).strip()}); '
        'train one with python -m data.tokenizer'
      ) from e
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()

  def encode(self, text: bytes) -> np.ndarray:
    return np.asarray(self._sp.encode(text.decode('utf-8', 'replace')), np.int32)

  def decode(self, ids) -> bytes:
    return self._sp.decode([int(i) for i in ids]).encode()


class JsonTokenizer:
  """A Hugging Face `tokenizers` JSON file (e.g. a GPT-2-style byte-level BPE)."""

  def __init__(self, path: str):
    from tokenizers import Tokenizer

    text = _read(path, 'train one with python -m data.tokenizer --kind=bpe_json')
    self.path = path
    try:
      self._tok = Tokenizer.from_str(text.decode('utf-8', 'replace'))
    except Exception as e:  # the Rust side raises a bare Exception for a malformed file
      raise ValueError(
        f'data.tokenizer={path} is not a tokenizers JSON file ({str(e).strip()[:200]})'
      ) from None
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    special = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    sep = next((t for t in SEPARATORS if t in special), None)
    if sep is None:
      raise ValueError(
        f'data.tokenizer={path} defines none of the end-of-document tokens {list(SEPARATORS)} '
        f'as a special token (it has {sorted(special)}); add one when training it'
      )
    self.eos_id = special[sep]

  def encode(self, text: bytes) -> np.ndarray:
    enc = self._tok.encode(text.decode('utf-8', 'replace'), add_special_tokens=False)
    return np.asarray(enc.ids, np.int32)

  def decode(self, ids) -> bytes:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True).encode()


def load_tokenizer(data_cfg):
  """The tokenizer a data config names: 'bytes', a SentencePiece .model or a tokenizers .json."""
  name = data_cfg.tokenizer
  if name == 'bytes':
    return ByteTokenizer()
  if name.endswith('.model'):
    return SentencePieceTokenizer(name)
  if name.endswith('.json'):
    return JsonTokenizer(name)
  raise ValueError(
    f"data.tokenizer={name!r}: use 'bytes', the path of a SentencePiece .model, or of a "
    'Hugging Face tokenizers .json file'
  )


def _copy_out(local: str, dest: str) -> str:
  """Copies a file written locally to `dest` (local or gs://); returns dest."""
  epath.Path(dest).parent.mkdir(parents=True, exist_ok=True)
  epath.Path(dest).write_bytes(epath.Path(local).read_bytes())
  return dest


def train_bpe_json(texts, vocab_size: int, out_path: str) -> str:
  """Trains a GPT-2-style byte-level BPE (tokenizers) on bytes documents; writes JSON to
  out_path (local or gs://) and returns it. The separator is '<|endoftext|>'."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[SEPARATORS[0]],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator((t.decode('utf-8', 'replace') for t in texts), trainer=trainer)
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, 'tokenizer.json')
    tok.save(local)
    return _copy_out(local, out_path)


def train_sentencepiece(texts, vocab_size: int, out_prefix: str) -> str:
  """Trains a BPE SentencePiece model on an iterable of bytes documents; returns its path
  (out_prefix + '.model', local or gs://: trained in a local temporary folder, then copied)."""
  import sentencepiece as spm

  with tempfile.TemporaryDirectory() as tmp:
    text_path = os.path.join(tmp, 'corpus.txt')
    with open(text_path, 'w', encoding='utf-8') as f:
      for text in texts:
        f.write(text.decode('utf-8', 'replace').replace('\r', '') + '\n')
    _train(spm, text_path, os.path.join(tmp, 'spm'), vocab_size)
    return _copy_out(os.path.join(tmp, 'spm.model'), out_prefix + '.model')


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
  from core import cli
  from data import sources

  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; give every setting as --flag=value')
  config = _CONFIG.value
  try:
    src = sources.open_split(config.data, config.data.train_split)
    texts = (src[i][config.data.text_key] for i in range(len(src)))
    where = epath.Path(sources.dataset_dir(config.data))
    if _KIND.value == 'bpe_json':
      path = train_bpe_json(texts, _VOCAB.value, str(where / f'bpe_{_VOCAB.value}.json'))
    else:
      path = train_sentencepiece(texts, _VOCAB.value, str(where / f'spm_bpe_{_VOCAB.value}'))
  except (ValueError, OSError) as e:
    cli.fail(str(e))
  print(path)
  print(f'use it with: --config.data.tokenizer={path}', file=sys.stderr)


if __name__ == '__main__':
  from absl import app, flags

  from core import cli

  _CONFIG = cli.define_config_file('config', 'experiments/configs/default.py', 'Config.')
  _VOCAB = flags.DEFINE_integer('vocab_size', 1024, 'Vocabulary size.', lower_bound=MIN_VOCAB)
  _KIND = flags.DEFINE_enum(
    'kind',
    'sentencepiece',
    ['sentencepiece', 'bpe_json'],
    'sentencepiece: a BPE .model with byte fallback; bpe_json: a byte-level BPE tokenizers .json.',
  )
  app.run(main, flags_parser=cli.parse_flags)
