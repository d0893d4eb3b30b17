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
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from mind_jax import faults

LOCK = "train.lock"
HEARTBEATS_PER_STALE = 10  # heartbeats within train.lock_stale_s: a live holder is never
                           # judged dead because one write came late


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
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
                   host=socket.gethostname(), started=time.time())
    self._stop = threading.Event()
    self._held = False

  # -------------------------------------------------------------- the holder file

  def _write(self, exclusive: bool) -> None:
    record = json.dumps(dict(self.me, heartbeat=time.time()))
    if exclusive:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      with os.fdopen(fd, "w") as f:
        f.write(record)
      return
    tmp = f"{self.path}.{self.me['pid']}.tmp"
    with open(tmp, "w") as f:
      f.write(record)
    os.replace(tmp, self.path)

  def _read(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # half written or garbage: judged by its age below

  def _alive(self, holder: dict) -> bool:
    if holder.get("host") == self.me["host"] and "pid" in holder:
      return _alive_here(holder)
    heartbeat = holder.get("heartbeat")
    if heartbeat is None:
      heartbeat = os.path.getmtime(self.path) if os.path.exists(self.path) else 0.0
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
      if (self._read() or {}).get("pid") == self.me["pid"]:
        return

  def _beat(self) -> None:
    while not self._stop.wait(self.stale_s / HEARTBEATS_PER_STALE):
      try:
        self._write(exclusive=False)
      except OSError as e:  # a full disk must not kill the run from this thread
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
      threading.Thread(target=self._beat, name="workdir-lock", daemon=True).start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._held and (self._read() or {}).get("pid") == self.me["pid"]:
      os.remove(self.path)
    self._held = False
