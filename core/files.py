"""Small text files of a run (config, metrics, summary, logs) on a local path or on gs://.

Orbax writes checkpoints to either by itself; these are the few files the trainer writes
directly. gs:// goes through etils.epath, which needs `gcsfs` (pinned in requirements.txt).
Paths are kept as given: a remote path is never made absolute, which would turn
`gs://bucket/run` into the local folder `<cwd>/gs:/bucket/run`.

Cloud Storage objects cannot be appended to, and an object takes about one write per second,
so an append there is buffered and the object rewritten at most once per `min_interval_s`
(and at close).
"""

import os
import threading
import time

from etils import epath


def is_remote(path: str) -> bool:
  return '://' in path


def absolute(path: str) -> str:
  """An absolute local path, or a remote one unchanged."""
  return path if is_remote(path) else os.path.abspath(path)


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


def listdir(path: str) -> list[str]:
  """The names in a folder, sorted ([] if there is none)."""
  if not exists(path):
    return []
  if is_remote(path):
    return sorted(p.name for p in epath.Path(path).iterdir())
  return sorted(os.listdir(path))


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
  """A line-oriented log: real appends locally; buffered whole-object rewrites on gs://."""

  def __init__(self, path: str, min_interval_s: float = 1.0):
    self.path = path
    self.min_interval_s = min_interval_s
    self._remote = is_remote(path)
    if self._remote:
      self._lines = read_text(path).splitlines(keepends=True) if exists(path) else []
      self._dirty = False
      self._last_write = float('-inf')
    else:
      self._f = open(path, 'a')

  def write_line(self, line: str) -> None:
    if self._remote:
      self._lines.append(line + '\n')
      self._dirty = True
      if time.monotonic() - self._last_write >= self.min_interval_s:
        self.flush()
    else:
      self._f.write(line + '\n')
      self._f.flush()

  def flush(self) -> None:
    if self._remote and self._dirty:
      write_text(self.path, ''.join(self._lines))
      self._dirty = False
      self._last_write = time.monotonic()

  def close(self) -> None:
    if self._remote:
      self.flush()
    else:
      self._f.close()
