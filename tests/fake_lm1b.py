"""A tiny dataset shaped like TFDS lm1b: named 'lm1b', feature 'text', splits 'train' and 'test'
only (lm1b has no 'validation'), stored as ArrayRecord in <data_dir>/lm1b/1.1.0/ as
`tfds build lm1b --file_format=array_record` leaves it."""

import numpy as np
import tensorflow_datasets as tfds

WORDS = np.array(['the', 'moon', 'rose', 'over', 'quiet', 'hills', 'and', 'a', 'river'])


class Lm1b(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  VERSION = tfds.core.Version('1.1.0')

  def __init__(self, *, docs: dict[str, list[str]] | None = None, **kwargs):
    self._docs = docs or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self, features=tfds.features.FeaturesDict({'text': tfds.features.Text()})
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(docs) for split, docs in self._docs.items()}

  def _generate_examples(self, docs):
    for i, text in enumerate(docs):
      yield i, {'text': text}


def build(data_dir: str, docs_per_split: int = 6, words_per_doc: int = 3000, seed: int = 0):
  """Prepares the fake lm1b in data_dir (train and test); returns {split: [text, ...]}."""
  rng = np.random.default_rng(seed)
  docs = {
    split: [' '.join(rng.choice(WORDS, words_per_doc)) + '\n' for _ in range(n)]
    for split, n in (('train', docs_per_split), ('test', max(2, docs_per_split // 3)))
  }
  tfds.disable_progress_bar()
  Lm1b(docs=docs, data_dir=data_dir).download_and_prepare(file_format='array_record')
  return docs
