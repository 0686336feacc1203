r"""Reference levels of a byte corpus: what unigram and bigram byte models score on held-out text.

  python -m data.levels                                  # the embedded Shakespeare
  python -m data.levels --name=text_folder --text_glob='/path/to/texts/*.txt'

prints one line: the held-out (validation split) cross-entropy, in nats per byte, of

* unigram: byte frequencies of the training split;
* bigram: P(b | a) from the training split's byte pairs (pairs never cross a document);

both with add-1/2 (Jeffreys) smoothing, so a byte or a pair never seen in training still has
a finite cost. A language model that ends near the bigram level has learned letter pairs and
little more; use these numbers as the floor a scaling sweep must get under.
"""

import contextlib
import sys

import numpy as np

PRIOR = 0.5  # add-1/2 smoothing of every count


def _as_arrays(docs) -> list[np.ndarray]:
  return [np.frombuffer(d, dtype=np.uint8) for d in docs]


def byte_counts(docs) -> tuple[np.ndarray, np.ndarray]:
  """(unigram counts [256], bigram counts [256, 256]) of documents given as bytes."""
  uni = np.zeros(256, np.int64)
  bi = np.zeros(256 * 256, np.int64)
  for a in _as_arrays(docs):
    uni += np.bincount(a, minlength=256)
    if len(a) > 1:
      bi += np.bincount(a[:-1].astype(np.int64) * 256 + a[1:], minlength=256 * 256)
  return uni, bi.reshape(256, 256)


def cross_entropy(train_docs, eval_docs) -> dict:
  """Held-out nats per byte of the unigram and bigram models fitted on `train_docs`.

  The first byte of each evaluated document is scored by the unigram model (it has no
  predecessor), every later byte by the bigram model given the byte before it.
  """
  uni, bi = byte_counts(train_docs)
  log_p1 = np.log((uni + PRIOR) / (uni.sum() + 256 * PRIOR))
  log_p2 = np.log((bi + PRIOR) / (bi.sum(axis=1, keepdims=True) + 256 * PRIOR))
  n = nll1 = nll2 = 0.0
  for a in _as_arrays(eval_docs):
    if not len(a):
      continue
    n += len(a)
    nll1 -= log_p1[a].sum()
    nll2 -= log_p1[a[0]] + log_p2[a[:-1], a[1:]].sum()
  if not n:
    raise ValueError('the evaluated documents are empty')
  return {'bytes': int(n), 'unigram': nll1 / n, 'bigram': nll2 / n}


def corpus_levels(name: str = 'shakespeare', text_glob: str = '', data_dir: str = '') -> dict:
  """Levels of a corpus that data/sources.py opens (its 'train' and 'validation' splits)."""
  import ml_collections

  from data import sources

  cfg = ml_collections.ConfigDict(
    {'name': name, 'text_glob': text_glob, 'data_dir': data_dir, 'text_key': 'text'}
  )
  splits = {}
  # A first use prepares the dataset, and TFDS says so on stdout: keep stdout to one line.
  with contextlib.redirect_stdout(sys.stderr):
    for split in ('train', 'validation'):
      src = sources.open_split(cfg, split)
      splits[split] = [src[i]['text'] for i in range(len(src))]
  out = cross_entropy(splits['train'], splits['validation'])
  out['documents'] = {k: len(v) for k, v in splits.items()}
  return out


def format_line(label: str, lv: dict) -> str:
  return (
    f'{label}: unigram {lv["unigram"]:.3f}, bigram {lv["bigram"]:.3f} nats/byte on '
    f'{lv["bytes"]:,} held-out bytes ({lv["documents"]["validation"]} of '
    f'{sum(lv["documents"].values())} documents; counts from the rest, add-1/2)'
  )


if __name__ == '__main__':
  from absl import app, flags

  _NAME = flags.DEFINE_string('name', 'shakespeare', "'shakespeare' or 'text_folder'.")
  _GLOB = flags.DEFINE_string('text_glob', '', "For --name=text_folder: the text files' glob.")
  _DIR = flags.DEFINE_string('data_dir', '', 'Prepared-dataset folder (default: the cache).')

  def _main(argv):
    del argv
    try:
      lv = corpus_levels(_NAME.value, _GLOB.value, _DIR.value)
    except (ValueError, FileNotFoundError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    label = _NAME.value if not _GLOB.value else f'{_NAME.value} {_GLOB.value}'
    print(format_line(label, lv))

  app.run(_main)
