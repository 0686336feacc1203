"""Random-access document sources for a data config, all through tensorflow-datasets.

* data.name='shakespeare': the embedded corpus, prepared on first use into data_dir.
* data.name='text_folder' with data.text_glob: your text files (local or gs://), ditto.
* data.name='parquet' or 'jsonl' with data.text_glob: Parquet or JSON Lines files (local or
  gs://), split by file name (data/files.py).
* any other name ('lm1b', 'c4/en', 'wikitext/wikitext-103-raw-v1', ...): a dataset already
  prepared in data.data_dir (local or gs://) in ArrayRecord format, read with
  builder_from_directory(...).as_data_source(): no TensorFlow, no dataset code needed.
"""

import hashlib
import json

import tensorflow_datasets as tfds
from etils import epath

from data import files, text_corpus

EMBEDDED = ('shakespeare', 'text_folder')


def data_dir(data_cfg) -> str:
  return data_cfg.data_dir or text_corpus.default_data_dir()


def _prepared_dir(data_cfg) -> epath.Path:
  """The newest version folder of a prepared TFDS dataset (holding dataset_info.json)."""
  root = epath.Path(data_dir(data_cfg))
  base = root.joinpath(*data_cfg.name.replace(':', '/').split('/'))
  how = f'prepare it with: tfds build {data_cfg.name} --data_dir={root} --file_format=array_record'
  if not root.exists():
    raise FileNotFoundError(f'data.data_dir {root} does not exist; {how}')
  if not base.exists():
    raise FileNotFoundError(f'dataset {data_cfg.name!r} not found in {root}; {how}')
  # <name>/<version>/ or <name>/<config>/<version>/ (no recursive glob: slow on GCS).
  infos = sorted([*base.glob('*/dataset_info.json'), *base.glob('*/*/dataset_info.json')], key=str)
  if not infos:
    raise FileNotFoundError(f'{base} holds no prepared dataset (no dataset_info.json); {how}')
  return infos[-1].parent


def open_split(data_cfg, split: str):
  """A random-access source of documents: len() and [i] -> {text_key: bytes, ...}."""
  tfds.disable_progress_bar()
  if data_cfg.name in files.FORMATS:
    return files.open_split(data_cfg, split)
  if data_cfg.name in EMBEDDED:
    if data_cfg.name == 'text_folder' and not data_cfg.text_glob:
      raise ValueError("data.name='text_folder' needs data.text_glob (a folder glob or gs:// glob)")
    builder = text_corpus.prepare(data_cfg.name, data_cfg.text_glob, data_dir(data_cfg))
  else:
    path = _prepared_dir(data_cfg)
    info = json.loads((path / 'dataset_info.json').read_text())
    fmt = info.get('fileFormat', 'tfrecord')
    if fmt != 'array_record':
      raise ValueError(
        f'{path} is stored as {fmt}, which needs TensorFlow to read; convert it once with: '
        f'tfds convert_format --dataset_version_dir={path} --out_file_format=array_record '
        '(or rebuild with tfds build ... --file_format=array_record)'
      )
    builder = tfds.builder_from_directory(str(path))
  splits = builder.info.splits
  if split not in splits:
    raise ValueError(
      f'split {split!r} not in {data_cfg.name} (its splits: {list(splits)}); set '
      'data.train_split and data.eval_split to splits it has'
    )
  source = builder.as_data_source(split)
  if len(source) == 0:
    raise ValueError(f'the {split} split of {data_cfg.name} is empty')
  if data_cfg.text_key not in builder.info.features:
    raise ValueError(
      f'data.text_key={data_cfg.text_key!r} is not a feature of {data_cfg.name} '
      f'(features: {list(builder.info.features)})'
    )
  return source


def open_splits(data_cfg) -> tuple:
  """(train, eval) sources of a run: data.train_split and data.eval_split, each checked."""
  return open_split(data_cfg, data_cfg.train_split), open_split(data_cfg, data_cfg.eval_split)


def dataset_dir(data_cfg) -> str:
  """Where files that belong to the dataset (e.g. a tokenizer) are kept (local or gs://)."""
  if data_cfg.name in files.FORMATS:  # beside the prepared datasets, one folder per glob
    tag = hashlib.sha256(data_cfg.text_glob.encode()).hexdigest()[:12]
    return str(epath.Path(data_dir(data_cfg)) / f'{data_cfg.name}_{tag}')
  if data_cfg.name in EMBEDDED:
    b = text_corpus.prepare(data_cfg.name, data_cfg.text_glob, data_dir(data_cfg))
    return str(b.data_path)
  return str(_prepared_dir(data_cfg))
