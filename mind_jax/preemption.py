"""SIGTERM and SIGINT end a run at a step boundary, with a committed checkpoint.

Spot and preemptible TPU VMs, and most schedulers, send SIGTERM some time before the
kill; Ctrl-C sends SIGINT. On the first one the loop finishes its step, saves a checkpoint
(data position, TA and inertia table included), waits for the commit and exits with
faults.EXIT_PREEMPTED. A second signal exits at once: the committed checkpoints are whole
either way (Orbax renames a step directory only once every file of it is written).

Multi-host runs must all save at the same step. There JAX's preemption service (started by
jax.distributed.initialize) catches SIGTERM on any host and picks the step every process
stops at; Orbax asks it through `CheckpointManager.reached_preemption(step)`. We leave
SIGTERM to it, and a SIGINT is passed on to it as a SIGTERM to ourselves.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

import jax


class PreemptionWatch:
  """`with PreemptionWatch() as watch:` ... `if watch.reached(step, mngr): save, exit`."""

  def __init__(self):
    self.received: str | None = None   # the first signal's name
    self.multi_host = jax.process_count() > 1
    self._previous = {}

  def __enter__(self) -> "PreemptionWatch":
    if threading.current_thread() is not threading.main_thread():
      logging.debug("not the main thread: SIGTERM/SIGINT keep their handlers")
      return self
    signals = (signal.SIGINT,) if self.multi_host else (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    name = signal.Signals(signum).name
    if self.received is not None:
      logging.warning("second signal (%s): exiting now; committed checkpoints are kept", name)
      os._exit(128 + signum)
    self.received = name
    logging.warning("received %s: finishing this step, saving a checkpoint, then exiting "
                    "(send it again to exit at once)", name)
    if self.multi_host and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service, so all hosts agree

  def reached(self, step: int, mngr) -> bool:
    """Whether to save at `step` and stop; the same answer on every process."""
    if self.multi_host:
      return mngr.reached_preemption(step)
    return self.received is not None
