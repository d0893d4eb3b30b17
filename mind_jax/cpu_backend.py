"""The CPU backend's settings that only take effect before JAX starts its backend (the
first `jax.devices()`, mesh or computation): kept host memory (host_memory.py) and
XLA:CPU flags (`train.xla_cpu_flags`). Every command calls `prepare` first."""
from __future__ import annotations

import logging
import os

from jax._src import xla_bridge

from mind_jax import host_memory


def add_xla_flags(flags: str) -> None:
  """Appends `flags` to XLA_FLAGS (those already there are kept; a flag given twice takes
  the last value). XLA reads XLA_FLAGS when the backend starts, so later they change
  nothing (a process that already ran JAX code, e.g. a test): that is said in a warning.
  They only tune speed, so the run goes on."""
  new = [flag for flag in flags.split() if flag not in os.environ.get("XLA_FLAGS", "").split()]
  if not new:
    return
  if xla_bridge.backends_are_initialized():
    logging.warning("train.xla_cpu_flags %s: the JAX backend has already started in this "
                    "process, so they do not apply", new)
    return
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *new]).strip()
  logging.info("XLA_FLAGS: %s", os.environ["XLA_FLAGS"])


def prepare(train_config) -> None:
  """`train_config` (config.train)'s backend settings, before the backend starts."""
  if train_config.keep_freed_host_memory:
    host_memory.keep_freed_memory()
  if train_config.xla_cpu_flags:
    add_xla_flags(train_config.xla_cpu_flags)
