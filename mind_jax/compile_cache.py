"""JAX's persistent XLA compilation cache, on by default: a rerun of the same shapes (a
resumed run, the next seed, the demo again, eval of the next checkpoint) loads its
compiled programs from disk instead of compiling them, which takes minutes for a real
model.

Where (train.compilation_cache_dir; eval: --compilation_cache_dir):
  ""      $JAX_COMPILATION_CACHE_DIR when set (e.g. the test session's, tests/conftest.py),
          else the user's cache: $XDG_CACHE_HOME/mind_jax/xla, or ~/.cache/mind_jax/xla
  "none"  off
  a path  that directory (local, or gs://... through etils)
Every compile is kept, however fast: JAX's default skips those under a second, which on
a CPU is every step of a small model. An entry's key covers the program, the XLA flags,
the jax version and the device kind, so a changed config compiles anew; on CPU it does not
name the processor model, so give machines of different CPU kinds that share a home
directory a cache each. The directory only grows, and can be deleted at any time. JAX
runs what it loads from there: do not point it at a directory others can write to.
"""
from __future__ import annotations

import logging
import os

import jax
from jax._src import compilation_cache

from mind_jax import paths

OFF = "none"
ENV = "JAX_COMPILATION_CACHE_DIR"


def default_dir() -> str:
  """The user's cache directory for mind_jax's compiled programs (XDG base directories)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "mind_jax", "xla")


def resolve(setting: str) -> str | None:
  """The directory `setting` names (see the module docstring); None: off."""
  if setting.strip().lower() == OFF:
    return None
  if not setting:
    return os.environ.get(ENV) or default_dir()
  return paths.absolute(os.path.expanduser(setting))


def enable(setting: str = "") -> str | None:
  """Point JAX's persistent cache where `setting` says, caching every compile; returns the
  directory (None: off). JAX opens its cache at the process's first compile and keeps
  it, so call this before: later, another directory is only warned about."""
  path = resolve(setting)
  opened = compilation_cache._cache is not None  # pylint: disable=protected-access
  current = jax.config.jax_compilation_cache_dir
  if opened and path != current:
    logging.warning("XLA compilation cache: this process already uses %s; %s does not apply",
                    current, path or OFF)
    return current
  if path and not _writable(path):
    logging.warning("XLA compilation cache: cannot write to %s; compiling without a cache "
                    "(set train.compilation_cache_dir to a writable directory, or none)", path)
    path = None
  jax.config.update("jax_compilation_cache_dir", path)
  if path:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor
    logging.info("XLA compilation cache: %s", path)
  return path


def _writable(path: str) -> bool:
  """Whether a local `path` is (or can be made) a writable directory; remote ones are
  left to JAX. Else every compile would warn that it cannot read or write an entry."""
  if paths.is_remote(path):
    return True
  try:
    os.makedirs(path, exist_ok=True)  # local: remote ones returned above
  except OSError:
    return False
  return os.access(path, os.W_OK | os.X_OK)
