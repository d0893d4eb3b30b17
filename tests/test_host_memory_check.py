"""Issue 22: a run on the CPU backend is checked against the host's RAM, which its devices
share (before compiling, and XLA's account of the compiled step before it runs), and every
command caches its compiled programs on disk (mind_jax/compile_cache.py)."""
import os
import re
import subprocess
import sys

import jax
import pytest

from mind_jax import checkpoint, compile_cache, faults, host_memory, perf, train
from mind_jax.config import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(REPO, "configs", "debug_cpu.py")
GIB = 2**30
KNOBS = ("train.batch_size", "train.packed_rows", "model.remat", "train.loss_chunk_tokens",
         "optim.grad_accum_steps")


def _config(steps=1):
  config = load_config_file(DEBUG)
  config.data.num_examples = 64
  config.train.steps, config.train.log_every = steps, 1
  return config


def _fake_available(monkeypatch, value):
  monkeypatch.setattr(host_memory, "available_bytes", lambda: float(value))


def _names_the_knobs(message):
  return all(knob in message for knob in KNOBS)


# ------------------------------------------------------------------ the numbers


def test_host_check_multiplies_by_the_devices_and_names_numbers_and_knobs():
  estimate = dict.fromkeys(perf.ESTIMATE_ROWS, 0.0)
  estimate.update(params=GIB, activations=GIB, total=2 * GIB)
  perf.check_host_memory(estimate, available=16.5 * GIB, devices=8)  # 16 GiB fit
  with pytest.raises(faults.DoesNotFit) as refused:
    perf.check_host_memory(estimate, available=15 * GIB, devices=8)
  message = str(refused.value)
  assert isinstance(refused.value, MemoryError)  # what the device check raised before
  assert "needs about 16.00 GiB of host RAM (8 CPU device(s) x 2.00 GiB" in message
  assert "but 15.00 GiB is available" in message and "train.host_memory_fraction" in message
  assert _names_the_knobs(message) and "\n" not in message


def test_the_host_is_checked_only_on_cpu_without_a_device_limit(monkeypatch):
  _fake_available(monkeypatch, 10 * GIB)
  cpu = jax.devices()[0]
  train_config = _config().train
  assert perf.host_memory_available(cpu, train_config) == 10 * GIB
  train_config.host_memory_fraction = 0.5
  assert perf.host_memory_available(cpu, train_config) == 5 * GIB
  train_config.host_memory_fraction = 0.0  # off
  assert perf.host_memory_available(cpu, train_config) is None
  train_config.host_memory_fraction, train_config.device_memory_gb = 1.0, 4.0
  assert perf.host_memory_available(cpu, train_config) is None  # the per-device limit rules


def test_available_bytes_reads_the_host_and_a_container_limit(tmp_path):
  available = host_memory.available_bytes()
  assert available is not None and 0 < available
  v2 = tmp_path / "v2"
  v2.mkdir()
  (v2 / "memory.max").write_text("1000000\n")
  (v2 / "memory.current").write_text("600000\n")
  (v2 / "memory.stat").write_text("anon 500000\ninactive_file 50000\n")
  assert host_memory._cgroup_left(str(v2)) == 1000000 - 600000 + 50000
  (v2 / "memory.max").write_text("max\n")
  assert host_memory._cgroup_left(str(v2)) is None  # no limit
  v1 = tmp_path / "v1"
  v1.mkdir()
  (v1 / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # v1's "no limit"
  (v1 / "memory.usage_in_bytes").write_text("5\n")
  (v1 / "memory.stat").write_text("total_inactive_file 1\n")
  assert host_memory._cgroup_left(str(v1)) is None
  (v1 / "memory.limit_in_bytes").write_text("100\n")
  assert host_memory._cgroup_left(str(v1)) == 100 - 5 + 1


# ------------------------------------------------------------------ train


def test_train_refuses_before_compiling_when_the_host_is_too_small(tmp_path, monkeypatch):
  _fake_available(monkeypatch, 2**20)  # 1 MiB
  compiled = []
  monkeypatch.setattr(train._CompiledSteps, "__call__", lambda *a: compiled.append(a))
  with pytest.raises(faults.DoesNotFit, match=r"needs about [\d.]+ GiB of host RAM \(8 CPU "
                                              r"device\(s\) x [\d.]+ GiB estimated each: params"):
    train.train(_config(), str(tmp_path))
  assert not compiled and checkpoint.latest_step(str(tmp_path)) is None


def test_train_refuses_a_compiled_step_that_does_not_fit(tmp_path, monkeypatch):
  _fake_available(monkeypatch, 2**20)
  monkeypatch.setattr(perf, "check_host_memory", lambda *args: None)  # let it compile
  with pytest.raises(faults.DoesNotFit) as refused:
    train.train(_config(), str(tmp_path))
  message = str(refused.value)
  assert re.search(r"the compiled sft step needs [\d.]+ GiB more host RAM \(8 CPU device\(s\) "
                   r"x \(temporaries [\d.]+ \+ outputs [\d.]+ - aliased [\d.]+ GiB\), XLA's "
                   r"account\) but 0.00 GiB is available", message), message
  assert _names_the_knobs(message)
  assert checkpoint.latest_step(str(tmp_path)) is None  # no step ran
  history = tmp_path / train.HISTORY
  assert not os.path.exists(history) or not history.read_text().strip()


def test_the_cli_refusal_is_one_line_and_exit_2(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "mind_jax.train", "--config", DEBUG, "--workdir", str(tmp_path),
       "--config.data.num_examples=64", "--config.train.host_memory_fraction=1e-9"],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == faults.EXIT_BAD_INPUT, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines()
            if re.match(r"E\d{4} ", line) or "Traceback" in line]
  assert len(errors) == 1 and "GiB of host RAM" in errors[0], errors
  assert _names_the_knobs(errors[0])


# ------------------------------------------------------------------ compilation cache


def test_cache_dir_settings(monkeypatch, tmp_path):
  monkeypatch.setenv(compile_cache.ENV, "/from/env")
  assert compile_cache.resolve("") == "/from/env"  # the test session's cache wins
  assert compile_cache.resolve("none") is None and compile_cache.resolve("NONE") is None
  assert compile_cache.resolve(str(tmp_path / "c")) == str(tmp_path / "c")
  assert compile_cache.resolve("gs://b/xla") == "gs://b/xla"
  monkeypatch.delenv(compile_cache.ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.resolve("") == str(tmp_path / "mind_jax" / "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert compile_cache.resolve("") == os.path.expanduser("~/.cache/mind_jax/xla")


def test_a_cache_opened_already_is_kept(tmp_path):
  jax.jit(lambda x: x + 1)(1)  # this process has compiled (with the session's cache)
  current = jax.config.jax_compilation_cache_dir
  if current is None:
    pytest.skip("no persistent cache in this test session")
  assert compile_cache.enable(str(tmp_path / "other")) == current
  assert jax.config.jax_compilation_cache_dir == current


def test_an_unwritable_cache_dir_turns_the_cache_off(tmp_path, monkeypatch):
  monkeypatch.setattr(compile_cache.compilation_cache, "_cache", None)  # as if not opened yet
  updates = {}
  monkeypatch.setattr(jax.config, "update", lambda name, value: updates.update({name: value}))
  (tmp_path / "file").write_text("")
  assert compile_cache.enable(str(tmp_path / "file" / "xla")) is None  # under a file
  assert updates == {"jax_compilation_cache_dir": None}


def _cache_files(path):
  return sorted(name for _, _, names in os.walk(path) for name in names)


def test_a_second_run_of_the_same_shapes_loads_its_steps_from_the_cache(tmp_path):
  """Two CLI runs of 2 steps, each into a new workdir: the second adds nothing to the cache
  (every program it compiles is found there). Both are a small config that passes the host
  checks."""
  cache = tmp_path / "xla"

  def run(workdir):
    result = subprocess.run(
        [sys.executable, "-m", "mind_jax.train", "--config", DEBUG, "--workdir", str(workdir),
         "--config.data.num_examples=64", "--config.train.steps=2",
         f"--config.train.compilation_cache_dir={cache}"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]  # a small config passes the host
    assert "host memory: about" in result.stderr  # check, before and after compiling
    assert f"XLA compilation cache: {cache}" in result.stderr

  run(tmp_path / "a")
  first = _cache_files(cache)
  assert any(name.endswith("-cache") for name in first), first
  run(tmp_path / "b")  # a new workdir: the same programs, found in the cache
  assert _cache_files(cache) == first
