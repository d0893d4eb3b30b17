"""Keep freed host memory in the process, so XLA:CPU does not page-fault every step.

XLA:CPU gives each execution one fresh temp buffer holding all of the step's
intermediates (0.7 GB for the 10M-parameter model of benchmarks/train_step_vs_torch.py
at batch 8 x 256). glibc serves an allocation that large with mmap and gives it
back with munmap when freed, so every step maps it anew and the kernel zero-fills
it page by page: ~180k page faults a step there. On 2 idle cores that costs ~15%
of the step (0.68 s -> 0.58 s); while other processes load the machine, faults get
much dearer (we measured 1.6 s -> 0.63 s a step with 1-2 cores busy elsewhere).

`keep_freed_memory()` tells glibc to serve every allocation from the one main
heap and never to return freed memory to the OS, so the buffer freed by step n
is reused by step n+1 with no page faults. The cost: the process keeps its peak
host memory for its lifetime, and all threads share one malloc arena. It only
matters for the CPU backend (on GPU/TPU the big buffers live in device memory).

It must run before the JAX backend starts (the first `jax.devices()`, mesh or
computation): XLA's worker threads start then, and a thread keeps the malloc
arena it first used; called later it changes nothing (measured). Likewise before
torch does any work if torch shares the process. The first few steps after it
still fault while the heap grows to its steady size. mallopt takes an int, so
freed memory beyond 2 GiB at the top of the heap is still returned; for larger
temp buffers set the same from the shell, before Python starts, with N in bytes:
  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=N
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """Make glibc malloc keep and reuse freed memory; True if it applied (glibc only)."""
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl...): nothing to do
    logging.info("host_memory: no glibc mallopt; allocator left as it is")
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  ok = (mallopt(_M_ARENA_MAX, 1)  # every thread allocates from the main heap (brk) ...
        and mallopt(_M_MMAP_MAX, 0)  # ... never from a private mmap, however large ...
        and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))  # ... and freed memory stays mapped.
  if not ok:
    logging.warning("host_memory: mallopt refused a setting; allocator may be unchanged")
  return bool(ok)
