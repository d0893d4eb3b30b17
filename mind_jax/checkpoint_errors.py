"""Orbax and tensorstore errors of a checkpoint read, as one line.

A failed read prints hundreds of lines (interleaved asyncio tracebacks, array specs) with
the cause buried inside. `as_damage` turns it into one exception naming the step, the
item, the array or file and the storage status; the full trace goes to DEBUG:
  CheckpointDamaged     the stored bytes are wrong or gone (truncated, deleted, garbage):
                        a resume moves the step aside and falls back (checkpoint.py)
  CheckpointUnreadable  the store refused (permission, unavailable): nothing is moved
`orbax_quiet` keeps Orbax's own warnings of such a read at DEBUG.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re

from mind_jax import faults


class CheckpointMismatchError(faults.BadInput, ValueError):
  """A checkpoint whose arrays do not have the shapes the config asks for."""


class CheckpointError(faults.BadInput):
  """A checkpoint that cannot be read: missing, damaged or unreadable."""


class NoCheckpoint(CheckpointError, FileNotFoundError):
  """No committed checkpoint (or not the stated step); still a FileNotFoundError for the
  callers that treat "no checkpoint yet" as a normal case."""


class CheckpointUnreadable(CheckpointError):
  """The storage refused a read for a reason that says nothing of the data (permission,
  unavailable, out of memory): the step is not moved aside."""


class NoReadableCheckpoint(CheckpointError):
  """Every committed step of a workdir was damaged."""


class CheckpointDamaged(CheckpointError):
  """A committed step whose files are truncated, missing or not what Orbax wrote."""

  def __init__(self, checkpoints: str, step: int, item: str, where: str, cause: str):
    self.step, self.item, self.where, self.cause = step, item, where, cause
    super().__init__(f"checkpoint step {step} in {checkpoints} is damaged: "
                     f"{item} {where}: {cause}")

  def summary(self) -> str:
    return f"{self.step} ({self.item} {self.where})"


# ------------------------------------------------------------------ readable errors

# absl status codes, as tensorstore prefixes its errors with them.
_STATUS = re.compile(r"\b(CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|"
                     r"ALREADY_EXISTS|PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|"
                     r"ABORTED|OUT_OF_RANGE|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|"
                     r"UNAUTHENTICATED): ")
# The statuses that say the stored bytes are wrong or gone (a truncated file reads out of
# range, a deleted one as a truncated zstd stream): the step is damaged. The others
# (permission, unavailable, out of memory) say nothing of the data.
DAMAGE_STATUSES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "FAILED_PRECONDITION",
                   "INVALID_ARGUMENT")
# The array key tensorstore names ("layers_1.mlp.up_proj.kernel/0.0"), or the array path
# in the spec Orbax appends to its own wrapper error.
_ARRAY_KEY = re.compile(r'(?:Error reading|Metadata at) "([^"/]+)/?([^"]*)"')
_SPEC_PATH = re.compile(r"'path': '([^'/][^']*?)/?'")
_STORE_DETAIL = re.compile(r' in OCDBT database at [^"]*"[^"]*"| \[tensorstore_spec=.*$')
_ITEM_MISSING = 'was not found in the checkpoint'  # Orbax's KeyError for a missing item dir
CAUSE_CHARS = 300  # a cause longer than this is cut: the full text is in the DEBUG trace


def _status(exc: BaseException) -> tuple[str, str] | None:
  """(code, message) of the first tensorstore status in the exception's chain."""
  for e in faults.causes(exc):
    match = _STATUS.search(str(e))
    if match:
      text = _STORE_DETAIL.sub("", str(e)[match.end():].splitlines()[0])
      return match.group(1), text
  return None


def _array_key(exc: BaseException) -> str | None:
  for pattern in (_ARRAY_KEY, _SPEC_PATH):
    for e in faults.causes(exc):
      match = pattern.search(str(e))
      if match:
        return match.group(1)
  return None


def _item_of(exc: BaseException, checkpoints: str, step: int) -> str | None:
  """The item whose directory the error names (…/checkpoints/<step>/<item>/)."""
  pattern = re.compile(re.escape(os.path.join(checkpoints, str(step)) + os.sep) + r"(\w+)")
  for e in faults.causes(exc):
    match = pattern.search(str(e))
    if match:
      return match.group(1)
  return None


def _is_damage(exc: BaseException) -> bool:
  for e in faults.causes(exc):
    if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError)):
      return True
    if isinstance(e, KeyError) and _ITEM_MISSING in str(e):
      return True
  status = _status(exc)
  return status is not None and status[0] in DAMAGE_STATUSES


def _cut(text: str) -> str:
  text = " ".join(text.split())
  return text if len(text) <= CAUSE_CHARS else text[:CAUSE_CHARS] + "..."


def _cause(exc: BaseException) -> str:
  status = _status(exc)
  if status is not None:
    return _cut(f"{status[0]}: {status[1]}")
  for e in faults.causes(exc):
    if isinstance(e, json.JSONDecodeError):
      return _cut(f"not valid JSON ({e})")
    if isinstance(e, (FileNotFoundError, KeyError)):
      return _cut(f"missing ({e.args[0] if e.args else type(e).__name__})")
  return _cut(f"{type(exc).__name__}: {faults.first_line(exc)}")


@contextlib.contextmanager
def as_damage(checkpoints: str, step: int, item: str, where: str):
  """Orbax and tensorstore errors of a read as one line: CheckpointDamaged (the data is
  bad), CheckpointUnreadable (the store refused); the full trace goes to DEBUG."""
  try:
    yield
  except (CheckpointError, CheckpointMismatchError):
    raise
  except Exception as e:  # noqa: BLE001 (unknown errors re-raise unchanged below)
    status = _status(e)
    if not _is_damage(e) and status is None:
      raise
    faults.quiet_background_errors()  # the failed read's leftovers, to DEBUG
    logging.debug("reading checkpoint step %d (%s) failed", step, item, exc_info=True)
    key = _array_key(e)
    item = _item_of(e, checkpoints, step) or item
    where = f"array {key}" if key else where
    if not _is_damage(e):
      raise CheckpointUnreadable(f"cannot read checkpoint step {step} in {checkpoints}: "
                                 f"{item} {where}: {_cause(e)}") from e
    raise CheckpointDamaged(checkpoints, step, item, where, _cause(e)) from e


# ------------------------------------------------------------------ quiet Orbax

@contextlib.contextmanager
def orbax_quiet():
  """Every record of faults.ORBAX_LOGGERS to DEBUG while a read runs: warnings such as
  'Item "params" was found in the checkpoint, but could not be restored', and "Task
  exception was never retrieved" tracebacks. Our one line (as_damage) says it all."""
  loggers = [logging.getLogger(name) for name in faults.ORBAX_LOGGERS]
  to_debug = faults.ToDebug(lambda record: True)  # one per read: a nested read keeps its own
  for logger in loggers:
    logger.addFilter(to_debug)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeFilter(to_debug)
