"""Every test process sees 8 simulated CPU devices, so sharded and single-device
runs can be compared in one process (single-device runs use a 1-device mesh).

One persistent XLA cache serves the whole session: many tests (and the subprocesses they
start, which inherit the variable) compile the same tiny steps, and each is compiled once.
A loaded executable is the compiled one, so bitwise comparisons are unaffected. The
directory is new per session (nothing stale from another checkout) and removed after.

Tests compile with LLVM's optimizations off: they check what a step computes, not how fast,
and compiling is most of their time (tests/test_step.py: 70 s instead of 135-158 s on 2
cores). The flags change no arithmetic (no fast-math either way), and every run a test
compares, subprocesses included, is compiled the same way."""
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           + " --xla_backend_optimization_level=0"
                           + " --xla_llvm_disable_expensive_passes=true").strip()
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


# The test files that take longest, summed over their tests (--junitxml of the README
# command on 2 cores, 2026-11-30: 352 s for test_mind_train.py down to 51 s), longest first.
# pytest-xdist (--dist loadfile) hands out whole files in collection order, by default the
# files with the most tests first; a long file handed out last keeps one process running
# alone at the end. Longest first, then the rest as collected, ends the two together.
LONGEST_FILES = ("test_mind_train.py", "test_gcs.py", "test_resume.py", "test_mind.py",
                 "test_packing.py", "test_faults.py", "test_experiment.py",
                 "test_paper_configs.py", "test_demo.py", "test_benchmarks.py",
                 "test_real_model.py", "test_recipe.py",
                 "test_step.py", "test_lora.py", "test_openai_teacher.py", "test_gpu_check.py")


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
  items.sort(key=rank)  # stable: tests keep their order within a file
