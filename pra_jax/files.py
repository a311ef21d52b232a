"""Writes that a reader never sees half of: the bytes go to a temporary file in the same folder,
which is renamed into place (atomic on POSIX), and is removed if the write fails."""

import json
import os
import uuid
from collections.abc import Callable


def atomic_write(path: str, write: Callable, *, binary: bool = True, durable: bool = False) -> None:
  """Runs write(file) into a temporary twin of `path`, then renames it to `path`. `durable`
  also flushes the bytes to disk before the rename (what a resumable job's commits need)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # Unique per writer (several processes may race for one path); opened as open() would, so
  # the file gets the same permissions as any other the run writes.
  tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
  try:
    with open(tmp, "xb" if binary else "x") as f:
      write(f)
      if durable:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_json(path: str):
  """The JSON at `path`, or None where there is no file."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj, **dump_kwargs) -> None:
  atomic_write(path, lambda f: json.dump(obj, f, **dump_kwargs), binary=False)


def write_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text), binary=False)


def save_png(image, path: str) -> None:
  """A PIL image as PNG."""
  atomic_write(path, lambda f: image.save(f, format="PNG"))
