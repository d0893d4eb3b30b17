"""How a command ends when a run cannot go on: one log line and a distinct exit code.

Every CLI runs its main through `exit_cleanly`. A `RunStopped` (preempted, non-finite,
workdir locked, a bad config count, an unreadable checkpoint) and a full disk end as one
ERROR line naming what happened, what is kept and what to do; the full traceback goes to
the DEBUG log. Anything else is a bug and keeps its traceback.

Exit codes (README, "Reliability"):
  0   done
  1   a bug (a Python traceback)
  2   bad input: config (one whose step cannot fit in memory too), flags, a missing or
      unreadable checkpoint
  3   a non-finite loss or gradient (train.on_nonfinite)
  4   the workdir is in use by another live run
  5   the disk is full
  75  preempted (SIGTERM or SIGINT): a checkpoint was committed, run the same command again
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shutil
import sys
from typing import Callable

from mind_jax import paths

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_LOCKED = 4
EXIT_DISK_FULL = 5
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: try again


class RunStopped(Exception):
  """A run that ends on purpose: the message is the whole story, no traceback needed."""
  exit_code = EXIT_BAD_INPUT


class BadInput(RunStopped, ValueError):
  exit_code = EXIT_BAD_INPUT


class Preempted(RunStopped):
  exit_code = EXIT_PREEMPTED

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class NonFinite(RunStopped):
  exit_code = EXIT_NONFINITE


class WorkdirLocked(RunStopped):
  exit_code = EXIT_LOCKED


class DiskFull(RunStopped):
  exit_code = EXIT_DISK_FULL


class DoesNotFit(RunStopped, MemoryError):
  """A config whose step cannot fit in device or host memory, refused before it runs
  (mind_jax.perf). Still a MemoryError, as before it ended in one line."""
  exit_code = EXIT_BAD_INPUT


DISK_FULL_TEXTS = ("No space left on device", "ENOSPC")


def causes(exc: BaseException):
  """`exc`, its causes and contexts, and the members of exception groups."""
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])


def is_disk_full(exc: BaseException) -> bool:
  """Whether a full disk is the cause, however deep Orbax or tensorstore wrapped it."""
  for e in causes(exc):
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if any(text in str(e) for text in DISK_FULL_TEXTS):
      return True
  return False


def free_bytes(path: str) -> int | None:
  """Free bytes on the file system holding `path` (or its nearest existing parent); None
  for a remote path (an object store has no free space to report)."""
  if paths.is_remote(path):
    return None
  path = os.path.abspath(path)  # local: a remote path returned above
  while not os.path.exists(path) and os.path.dirname(path) != path:  # local: as above
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free  # local: statvfs of a local disk
  except OSError:
    return None


def failed_path(exc: BaseException) -> str | None:
  """The file a failed write names: OSError.filename, or tensorstore's `file "..."`."""
  for e in causes(exc):
    if isinstance(e, OSError) and e.filename:
      return str(e.filename)
    match = re.search(r'file "([^"]+)"', str(e))
    if match:
      return match.group(1)
  return None


def disk_full_message(path: str, needed_bytes: int | None = None,
                      exc: BaseException | None = None, what: str = "it") -> str:
  """One line: the file that failed (else `path`), what `what` needs, what is free."""
  path = (failed_path(exc) if exc is not None else None) or path
  free = free_bytes(path)
  need = f"; {what} needs about {needed_bytes / 2**20:.1f} MiB" if needed_bytes else ""
  have = f", {free / 2**20:.1f} MiB free there" if free is not None else ""
  return f"disk full writing {path}{need}{have}: free space, then run the same command"


def exit_cleanly(main: Callable) -> Callable:
  """Wrap a CLI main: RunStopped and a full disk end as one line and their exit code."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except RunStopped as e:
      logging.debug("traceback of the stop", exc_info=True)
      (logging.warning if isinstance(e, Preempted) else logging.error)("%s", e)
      sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 (only a full disk is reduced; the rest re-raises)
      if not is_disk_full(e):
        raise
      logging.debug("traceback of the full disk", exc_info=True)
      logging.error("disk full: %s", first_line(e))
      sys.exit(EXIT_DISK_FULL)

  return wrapped


def first_line(exc: BaseException, limit: int = 300) -> str:
  text = str(exc).strip().splitlines()
  line = text[0] if text else type(exc).__name__
  return line if len(line) <= limit else line[:limit] + "..."


# What Orbax's background writers print after one of their writes failed, besides the
# error that reaches the caller (and is reported there): their own tracebacks, futures
# nobody awaited any more, and tensorstore callbacks into an event loop already closed.
# A failed read also leaves each other array's own error ("Encountered error while reading
# array index", ~60 lines of spec) unretrieved.
BACKGROUND_NOISE = ("raised an exception", "exception was never retrieved",
                    "Event loop is closed", "Encountered error while reading array index")


def _is_background_noise(text: str) -> bool:
  return any(noise in text for noise in BACKGROUND_NOISE)


# The loggers through which Orbax (absl) and its event loop (asyncio) report.
ORBAX_LOGGERS = ("absl", "asyncio")


class ToDebug(logging.Filter):
  """Moves the records `moves` picks to DEBUG, one line each; the others pass. Two uses on
  ORBAX_LOGGERS: always, the background copies of a failure (quiet_background_errors);
  during a checkpoint read, every record (checkpoint_errors.orbax_quiet)."""

  def __init__(self, moves: Callable[[logging.LogRecord], bool]):
    super().__init__()
    self.moves = moves

  def filter(self, record: logging.LogRecord) -> bool:
    if not self.moves(record):
      return True
    logging.getLogger("mind_jax.background").debug(
        "%s %s: %s", record.name, record.levelname, record.getMessage())
    return False


def _is_background_failure(record: logging.LogRecord) -> bool:
  """An ERROR of a background writer: Orbax's traceback (its caller gets the same error
  raised) or BACKGROUND_NOISE."""
  orbax_traceback = record.exc_info is not None and "orbax" in record.pathname
  return record.levelno >= logging.ERROR and (
      orbax_traceback or _is_background_noise(record.getMessage()))


_BACKGROUND_TO_DEBUG = ToDebug(_is_background_failure)


def quiet_background_errors() -> None:
  """One failure, one line: background copies of it go to DEBUG (see BACKGROUND_NOISE)."""
  for name in ORBAX_LOGGERS:
    logging.getLogger(name).addFilter(_BACKGROUND_TO_DEBUG)  # added once: addFilter checks
  previous = sys.unraisablehook  # tensorstore reports failed callbacks through it
  if getattr(previous, "quiets_background", False):
    return

  def unraisablehook(unraisable):
    if _is_background_noise(str(unraisable.exc_value)):
      logging.debug("background error: %s", first_line(unraisable.exc_value))
      return
    previous(unraisable)

  unraisablehook.quiets_background = True
  sys.unraisablehook = unraisablehook

