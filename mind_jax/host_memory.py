"""Host memory: what this process can still get (`available_bytes`, for the CPU backend's
memory check in mind_jax/perf.py), and keeping freed memory in the process, so that
XLA:CPU does not page-fault every step (`keep_freed_memory`, below).

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
import os

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL:
  """The C library (OSError or TypeError where there is none to load)."""
  return ctypes.CDLL(ctypes.util.find_library("c"))


def keep_freed_memory() -> bool:
  """Make glibc malloc keep and reuse freed memory; True if it applied (glibc only)."""
  try:
    mallopt = _libc().mallopt
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


# ------------------------------------------------------------------ what is available

# A cgroup's memory limit, usage, and the memory.stat key of its page cache that the
# kernel reclaims before it kills anything: cgroup v2, then v1.
CGROUP_FILES = (("memory.max", "memory.current", "inactive_file"),
                ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
# Where /proc/self/cgroup's hierarchies are mounted: v2 ("0::/path"), v1's memory controller.
CGROUP_ROOTS = {"": "/sys/fs/cgroup", "memory": "/sys/fs/cgroup/memory"}
NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def available_bytes() -> float | None:
  """Host RAM this process can still get without swapping or being killed: the kernel's
  MemAvailable (the whole machine), at most what a container's limit leaves, plus what
  the process's own malloc heap holds freed (keep_freed_memory keeps it all, and the
  kernel counts it as used). None where nothing is known (not Linux, no sysconf)."""
  machine = _meminfo_available()
  if machine is None:
    return None
  container = _cgroup_available()
  if container is not None:
    machine = min(machine, container)
  return float(machine + free_heap_bytes())


def _meminfo_available() -> int | None:
  """/proc/meminfo's MemAvailable (free memory plus reclaimable caches); else the free
  physical pages (os.sysconf), which leave the caches out."""
  try:
    with open("/proc/meminfo") as f:  # local: the kernel's file
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024  # in kB
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, AttributeError):
    return None


def _cgroup_available() -> int | None:
  """What the memory limits of this process's cgroup and its ancestors leave (limit -
  usage + reclaimable page cache), the least; None without a limit (MemAvailable then)."""
  left = [n for n in map(_cgroup_left, _cgroup_dirs()) if n is not None]
  return min(left) if left else None


def _cgroup_dirs() -> list[str]:
  """This process's memory cgroup directories, innermost first, up to the mount point (a
  container without its own cgroup namespace lists a host path but mounts its own cgroup
  there: the mount point then holds its limit)."""
  try:
    with open("/proc/self/cgroup") as f:  # local: the kernel's file
      entries = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
  except OSError:
    return []
  dirs = []
  for _, controllers, relative in entries:
    root = CGROUP_ROOTS.get("memory" if "memory" in controllers.split(",") else controllers)
    if root is None:
      continue
    path = os.path.join(root, relative.lstrip("/")).rstrip("/")
    while len(path) > len(root):
      dirs.append(path)
      path = os.path.dirname(path)
    dirs.append(root)
  return dirs


def _cgroup_left(directory: str) -> int | None:
  """Bytes the memory limit of one cgroup directory leaves; None: no limit or no files."""
  for limit_name, usage_name, cache_key in CGROUP_FILES:
    try:
      with open(os.path.join(directory, limit_name)) as f:  # local: cgroup files
        limit = f.read().strip()
      with open(os.path.join(directory, usage_name)) as f:  # local: cgroup files
        usage = int(f.read())
      with open(os.path.join(directory, "memory.stat")) as f:  # local: cgroup files
        stat = dict(line.split()[:2] for line in f if len(line.split()) >= 2)
    except (OSError, ValueError):
      continue
    if limit == "max" or int(limit) >= NO_LIMIT:
      return None
    return int(limit) - usage + int(stat.get(cache_key, 0))
  return None


class _MallInfo2(ctypes.Structure):
  """glibc's struct mallinfo2 (glibc 2.33+): ten size_t counters."""
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]


def free_heap_bytes() -> int:
  """Bytes freed into this process's malloc heap and not returned to the OS (fordblks):
  a later allocation reuses them. 0 without glibc's mallinfo2."""
  try:
    mallinfo2 = _libc().mallinfo2
  except (OSError, AttributeError, TypeError):
    return 0
  mallinfo2.restype = _MallInfo2
  return int(mallinfo2().fordblks)
