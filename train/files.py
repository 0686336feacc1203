"""Small text files of a run (config, metrics, summary) on a local path or on gs://.

Orbax writes checkpoints to either by itself; these are the few files the trainer writes
directly. gs:// goes through etils.epath, which needs `gcsfs` (installed by launch/tpu.py's
setup; `pip install gcsfs` elsewhere). Cloud Storage objects cannot be appended to, so an
append there rewrites the object: fine for files of a few thousand lines.
"""

import os
import threading

from etils import epath


def is_remote(path: str) -> bool:
  return '://' in path


def join(*parts: str) -> str:
  return (
    str(epath.Path(parts[0]).joinpath(*parts[1:])) if is_remote(parts[0]) else os.path.join(*parts)
  )


def makedirs(path: str) -> None:
  if is_remote(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
  return epath.Path(path).exists() if is_remote(path) else os.path.exists(path)


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def write_text(path: str, text: str) -> None:
  if is_remote(path):
    epath.Path(path).write_text(text)
  else:
    tmp = f'{path}.{os.getpid()}.{threading.get_ident()}.tmp'  # one per writer: no collisions
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, path)  # atomic: a reader never sees half a summary


class AppendFile:
  """A line-oriented log: real appends locally, whole-object rewrites on gs://."""

  def __init__(self, path: str):
    self.path = path
    self._remote = is_remote(path)
    if self._remote:
      self._lines = read_text(path).splitlines(keepends=True) if exists(path) else []
    else:
      self._f = open(path, 'a')

  def write_line(self, line: str) -> None:
    if self._remote:
      self._lines.append(line + '\n')
      write_text(self.path, ''.join(self._lines))
    else:
      self._f.write(line + '\n')
      self._f.flush()

  def close(self) -> None:
    if not self._remote:
      self._f.close()
