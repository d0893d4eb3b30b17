"""Every test process sees 8 simulated CPU devices, so sharded and single-device
runs can be compared in one process (single-device runs use a 1-device mesh).

One persistent XLA cache serves the whole session: many tests (and the subprocesses they
start, which inherit the variable) compile the same tiny steps, and each is compiled once.
A loaded executable is the compiled one, so bitwise comparisons are unaffected. The
directory is new per session (nothing stale from another checkout) and removed after."""
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_OWN_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # pytest-xdist workers inherit the parent's
  _OWN_XLA_CACHE = tempfile.mkdtemp(prefix="mind_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_XLA_CACHE


def pytest_unconfigure(config):
  if _OWN_XLA_CACHE:
    shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)
