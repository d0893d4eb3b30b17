"""Every file the project reads or writes goes through here, so any path may be local or
on an object store (gs://bucket/...): workdirs, records, eval and experiment outputs,
exports.

`etils.epath` does the work: local paths through the os, gs:// through tf.io.gfile
(TensorFlow is installed with the project). Orbax uses the same epath for checkpoints,
and the records' tf.data reader uses tf.io.gfile, so one setting reaches all three. On a
TPU VM the credentials are the VM's service account (no keys in any config).

Libraries that want a local directory (transformers' from_pretrained / save_pretrained,
safetensors) get one: `local_copy` downloads a remote directory into a temporary one, and
`staged` gives a temporary directory whose files are uploaded on success.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator

from etils import epath

REMOTE_SCHEMES = ("gs://", "s3://")


def is_remote(path: str) -> bool:
  return str(path).startswith(REMOTE_SCHEMES)


def absolute(path: str) -> str:
  """A local path made absolute; a remote one without a trailing "/" (as abspath drops a
  local one), so that basename and dirname see its last name."""
  return str(path).rstrip("/") if is_remote(path) else os.path.abspath(path)


def of(path: str) -> epath.Path:
  return epath.Path(path)


def exists(path: str) -> bool:
  return of(path).exists()


def isdir(path: str) -> bool:
  return of(path).is_dir()


def isfile(path: str) -> bool:
  return of(path).is_file()


def makedirs(path: str) -> None:
  of(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names in a directory ([] when it does not exist), sorted."""
  p = of(path)
  return sorted(child.name for child in p.iterdir()) if p.is_dir() else []


def open(path: str, mode: str = "r"):  # noqa: A001 (the one open of the project)
  return of(path).open(mode)


def read_text(path: str) -> str:
  return of(path).read_text()


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def write_whole(path: str, data: str | bytes) -> None:
  """`path` replaced by `data`, never seen half-written: locally a temporary file renamed;
  on an object store one upload (an object appears whole when its upload ends), which
  spares the copy and delete a rename costs there."""
  mode = "w" if isinstance(data, str) else "wb"
  if is_remote(path):
    with open(path, mode) as f:
      f.write(data)
    return
  tmp = f"{path}.tmp"
  with open(tmp, mode) as f:
    f.write(data)
  of(tmp).replace(path)


class Rewriter:
  """A file that grows, kept by rewriting it whole (write_whole) with `content()`: for one
  on an object store, which appends nothing. Rewriting all of it at every change would
  upload ever more bytes, so `sync` writes at most every `every_s` seconds unless forced;
  a kill loses at most that much."""

  def __init__(self, path: str, content: Callable[[], str | bytes], every_s: float,
               clock: Callable[[], float] = time.monotonic):
    self.path, self.content, self.every_s, self.clock = path, content, every_s, clock
    self.written_at, self.unwritten = clock(), False

  def changed(self) -> None:
    """`content()` now holds more than the file: the next sync writes it."""
    self.unwritten = True

  def sync(self, force: bool = False) -> None:
    """The file rewritten if it lags `content()` and, unless `force`, `every_s` passed
    since the last write."""
    if self.unwritten and (force or self.clock() - self.written_at >= self.every_s):
      write_whole(self.path, self.content())
      self.unwritten, self.written_at = False, self.clock()


def write_json(path: str, value: Any, indent: int | None = 2) -> None:
  """`value` as JSON (UTF-8, not escaped), written whole (write_whole); a local parent
  directory is made first (an object store has none to make)."""
  if not is_remote(path):
    makedirs(os.path.dirname(absolute(path)))
  write_whole(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def remove(path: str) -> None:
  of(path).unlink(missing_ok=True)


def rmtree(path: str) -> None:
  p = of(path)
  if p.is_dir():
    p.rmtree()


def replace(source: str, target: str) -> None:
  of(source).replace(target)


def size(path: str) -> int:
  return int(of(path).stat().length)


def copy_tree(source: str, target: str) -> None:
  """Every file under `source` to the same place under `target` (either may be remote)."""
  makedirs(target)
  for child in of(source).iterdir():
    destination = os.path.join(target, child.name)
    if child.is_dir():
      copy_tree(str(child), destination)
    else:
      child.copy(destination, overwrite=True)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
  """A local directory holding what `path` holds: `path` itself when local, else a
  temporary download (for transformers, which reads local files only)."""
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="mind_jax_download_") as tmp:
    copy_tree(path, tmp)
    yield tmp


@contextlib.contextmanager
def staged(path: str) -> Iterator[str]:
  """A local directory to write `path`'s files into: `path` itself when local, else a
  temporary one uploaded to `path` when the block ends without an error."""
  if not is_remote(path):
    makedirs(path)
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="mind_jax_upload_") as tmp:
    yield tmp
    copy_tree(tmp, path)


def local_tree_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def copy_local_file(source: str, target: str) -> None:
  """A local file to `target`, local or remote."""
  if is_remote(target):
    of(source).copy(target, overwrite=True)
  else:
    shutil.copyfile(source, target)


def move_tree(source: str, target: str) -> None:
  """A directory moved to `target` (which must not exist): a rename when local. An object
  store renames no directory (tf.io.gfile's rename of one fails), so there every file is
  copied, then `source` deleted: not atomic, and a move cut short leaves both."""
  if not is_remote(source) and not is_remote(target):
    of(source).rename(target)
    return
  copy_tree(source, target)
  rmtree(source)
