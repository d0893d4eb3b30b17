"""One live run per workdir: <workdir>/train.lock names its holder.

Two runs on one workdir would write the same checkpoint steps (and crash inside Orbax),
append every step to metrics.jsonl twice, or with different configs overwrite each other.
On a pod this is what re-running `--worker=all` while the old job lives does. So the run
takes the lock before touching the workdir, and a second one fails at once, naming the
holder's pid and host.

The lock is a JSON file created exclusively (O_EXCL), holding the pid, the process's start
time (so a reused pid is not mistaken for the holder), the host and a heartbeat that a
daemon thread refreshes. A holder is dead when, on this host, its process is gone, or, on
another host, its heartbeat is older than train.lock_stale_s; a dead holder's lock is taken
over with a log line. Multi-host runs lock on process 0 only, and every process learns the
outcome from it, so none waits on a lock forever.

On gs:// there is no O_EXCL (nor a rename that fails on an existing target). The best
tf.io.gfile allows: look, write our record (one upload: the object appears whole) if none
is there, wait LOCK_SETTLE_S, then read it back and hold the lock only if it is still
ours (records carry a random token). GCS reads see every finished write, so of two runs
that race, the later writer wins and the earlier one sees that on its re-read, except
when one run's look and its write straddle the other's whole write-wait-read, i.e. its
look-to-write gap (one request) exceeds LOCK_SETTLE_S: the race window. The heartbeat
rewrites the object; the pid check applies only to a holder on this host, as locally.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from mind_jax import faults, paths

LOCK = "train.lock"
LOCK_SETTLE_S = 2.0  # gs:// only: from writing the lock to reading it back (see above)
BEAT_JOIN_S = 10.0   # at most this long on the way out for a heartbeat write in flight
HEARTBEATS_PER_STALE = 10  # heartbeats within train.lock_stale_s: a live holder is never
                           # judged dead because one write came late


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
  try:
    with open(f"/proc/{pid}/stat") as f:  # local: this host's process table
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive_here(holder: dict) -> bool:
  try:
    os.kill(int(holder["pid"]), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  started = _start_time(int(holder["pid"]))
  return started is None or holder.get("start_time") in (None, started)


class WorkdirLock:
  """`with WorkdirLock(workdir, stale_s):` holds <workdir>/train.lock for the run."""

  def __init__(self, workdir: str, stale_s: float):
    self.path = os.path.join(workdir, LOCK)
    self.stale_s = stale_s
    self.me = dict(pid=os.getpid(), start_time=_start_time(os.getpid()),
                   host=socket.gethostname(), started=time.time(),
                   token=secrets.token_hex(8))
    self.remote = paths.is_remote(workdir)
    self._stop = threading.Event()
    self._beats = None
    self._held = False

  # -------------------------------------------------------------- the holder file

  def _write(self, exclusive: bool) -> None:
    record = json.dumps(dict(self.me, heartbeat=time.time()))
    if self.remote:
      self._write_remote(record, exclusive)
      return
    if exclusive:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # local: remote above
      with os.fdopen(fd, "w") as f:  # local: the descriptor just opened
        f.write(record)
      return
    tmp = f"{self.path}.{self.me['pid']}.tmp"
    with paths.open(tmp, "w") as f:
      f.write(record)
    paths.replace(tmp, self.path)

  def _write_remote(self, record: str, exclusive: bool) -> None:
    """One upload (an object appears whole). exclusive: only if no lock is there, and
    then only ours if it still is after LOCK_SETTLE_S (the race window: module doc)."""
    if exclusive and paths.exists(self.path):
      raise FileExistsError(self.path)
    with paths.open(self.path, "w") as f:
      f.write(record)
    if exclusive:
      time.sleep(LOCK_SETTLE_S)
      if not self._mine(self._read()):
        raise FileExistsError(self.path)  # another run wrote after us: it holds the lock

  def _mine(self, holder: dict | None) -> bool:
    return (holder or {}).get("token") == self.me["token"]

  def _read(self) -> dict | None:
    try:
      with paths.open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except Exception:  # noqa: BLE001 (OSError, a gfile error, a JSON error)
      return {}  # half written or garbage: judged by its age below

  def _alive(self, holder: dict) -> bool:
    if holder.get("host") == self.me["host"] and "pid" in holder:
      return _alive_here(holder)
    heartbeat = holder.get("heartbeat")
    if heartbeat is None:
      try:
        heartbeat = paths.of(self.path).stat().mtime
      except FileNotFoundError:
        heartbeat = 0.0
    return time.time() - float(heartbeat) < self.stale_s

  # -------------------------------------------------------------- take, keep, give back

  def _take(self) -> None:
    while True:
      try:
        self._write(exclusive=True)
        return
      except FileExistsError:
        pass
      holder = self._read()
      if holder is None:
        continue  # released meanwhile: try again
      if self._alive(holder):
        raise faults.WorkdirLocked(
            f"{os.path.dirname(self.path)} is in use by pid {holder.get('pid')} on host "
            f"{holder.get('host')} (since {time.ctime(holder.get('started', 0))}): stop that "
            f"run first, or train into another workdir. The lock is {self.path}")
      logging.warning("workdir lock %s: its holder (pid %s on %s) is gone; taking it over",
                      self.path, holder.get("pid"), holder.get("host"))
      self._write(exclusive=False)
      if self.remote:
        time.sleep(LOCK_SETTLE_S)  # another run taking it over at once wins if it wrote later
      if self._mine(self._read()):
        return

  def _beat(self) -> None:
    while not self._stop.wait(self.stale_s / HEARTBEATS_PER_STALE):
      try:
        self._write(exclusive=False)
      except Exception as e:  # noqa: BLE001 (a full disk, a store error: not from this thread)
        logging.warning("workdir lock heartbeat failed: %s", e)

  def __enter__(self) -> "WorkdirLock":
    error = None
    if jax.process_index() == 0:
      try:
        self._take()
        self._held = True
      except faults.WorkdirLocked as e:
        error = e
    if jax.process_count() > 1:  # every process learns process 0's outcome
      took = multihost_utils.broadcast_one_to_all(np.int32(error is None))
      if not took and error is None:
        error = faults.WorkdirLocked(f"process 0 could not lock {self.path}: see its log")
    if error is not None:
      raise error
    if self._held:
      self._beats = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
      self._beats.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._beats is not None:  # a heartbeat in flight would write the lock back
      self._beats.join(timeout=BEAT_JOIN_S)
    if self._held and self._mine(self._read()):
      paths.remove(self.path)
    self._held = False
