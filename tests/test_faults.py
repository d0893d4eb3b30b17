"""The fault matrix (README, "Reliability"): what a user meets on a pod, and what is kept.

Preemption: tests/test_resume.py (SIGTERM from outside, SFT) and tests/test_mind_train.py
(SIGINT, MIND) resume bitwise. Corrupt checkpoints and the export: test_checkpoint_faults.
Here: the NaN guard, the workdir lock, a second signal, early errors and a full disk.
"""
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mind_jax import checkpoint, checkpoint_errors, faults, nonfinite, train, workdir_lock
from mind_jax.config import load_config_file
from mind_jax.state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(REPO, "configs", "debug_cpu.py")
FAST = ["--config.data.num_examples=64", "--config.train.log_every=1"]


def _config(**train_fields):
  config = load_config_file(DEBUG)
  config.data.num_examples = 64
  config.train.log_every = 1
  for name, value in train_fields.items():
    config.train[name] = value
  return config


def _cli(workdir, *overrides, timeout=300):
  cmd = [sys.executable, "-m", "mind_jax.train", "--config", DEBUG, "--workdir", str(workdir),
         *FAST, *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _errors(output: str) -> list[str]:
  """ERROR log lines (absl's "E<mmdd> ..."), and any traceback."""
  return [line for line in output.splitlines()
          if re.match(r"E\d{4} ", line) or "Traceback" in line]


def _params(workdir, step):
  """A checkpoint's params as saved (numpy), without a config to shape them."""
  with checkpoint.manager(str(workdir), read_only=True) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  return jax.device_get(restored["params"])


def _steps_logged(workdir):
  with open(os.path.join(str(workdir), train.HISTORY)) as f:
    return [json.loads(line)["step"] for line in f]


# ------------------------------------------------------------------ NaN / inf


def _toy_state(value):
  return TrainState(step=jnp.array(3), params={"w": jnp.full((2,), value)},
                    opt_state=({"mu": jnp.zeros((2,))}, jnp.array(7)), rng=jnp.zeros(2, jnp.uint32))


def test_guard_keeps_the_old_state_on_a_nonfinite_loss_or_state():
  old = _toy_state(1.0)
  for new, loss, bad in [(_toy_state(2.0).replace(step=jnp.array(4)), jnp.array(0.5), 0.0),
                         (_toy_state(2.0).replace(step=jnp.array(4)), jnp.array(jnp.nan), 1.0),
                         (_toy_state(jnp.inf).replace(step=jnp.array(4)), jnp.array(0.5), 1.0)]:
    kept, flag = jax.jit(nonfinite.guard)(old, new, loss)
    assert float(flag) == bad
    expected = old if bad else new
    assert np.array_equal(kept.params["w"], expected.params["w"])
    assert int(kept.opt_state[1]) == 7
    assert int(kept.step) == 4  # the batch was read: the position moves on either way


def test_skip_policy_counts_nonfinite_steps_in_a_row():
  watch = nonfinite.Watch("skip", max_skips=2)
  for step, bad in enumerate([0, 1, 1, 0, 1, 1, 0], start=1):
    watch.add(step, {"nonfinite": jnp.array(float(bad))})
  assert watch.check() is None and watch.skipped == 4
  for step, bad in enumerate([1, 1, 1], start=8):
    watch.add(step, {"nonfinite": jnp.array(float(bad))})
  assert watch.check() == (10, 8)  # the third in a row stops, and its streak began at 8
  assert "3 non-finite steps in a row (steps 8..10)" in watch.message(10, 8, "step 6")
  stop = nonfinite.Watch("stop", max_skips=2)
  stop.add(1, {"nonfinite": jnp.array(0.0)})
  stop.add(2, {"nonfinite": jnp.array(1.0)})
  assert stop.check() == (2, 2)


def test_nan_run_stops_with_its_step_and_keeps_every_good_checkpoint(tmp_path):
  """Before: a run at learning rate 1e6 went on to `done` with rc=0, and its NaN checkpoints
  rotated the good ones away. Now it stops (exit 3) naming the step and the last good
  checkpoint, saves nothing non-finite, and keeps the good checkpoints."""
  train.train(_config(steps=6, checkpoint_every=2, keep_checkpoints=3), str(tmp_path))
  good = {step: _params(tmp_path, step) for step in (2, 4, 6)}
  result = _cli(tmp_path, "--config.train.steps=40", "--config.train.checkpoint_every=2",
                "--config.train.keep_checkpoints=3", "--config.optim.learning_rate=1e6")
  assert result.returncode == faults.EXIT_NONFINITE, result.stderr[-3000:]
  (line,) = _errors(result.stderr)
  last = checkpoint.latest_step(str(tmp_path))
  assert "non-finite loss or state at step" in line and f"last good checkpoint: step {last}" in line
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  for step in saved:  # whatever was saved before the blow-up is finite
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(tmp_path, step)))
  for step in set(good) & set(saved):
    for a, b in zip(jax.tree.leaves(good[step]), jax.tree.leaves(_params(tmp_path, step))):
      assert np.array_equal(a, b)
  assert 6 in saved or min(saved) > 6  # rotation removed only older good ones


def test_skip_policy_stops_after_too_many_in_a_row(tmp_path):
  config = _config(steps=30, checkpoint_every=100, on_nonfinite="skip", max_nonfinite_skips=3)
  config.optim.learning_rate = 1e6
  with pytest.raises(faults.NonFinite, match=r"4 non-finite steps in a row .*"
                                             r"max_nonfinite_skips=3"):
    train.train(config, str(tmp_path))
  assert checkpoint.latest_step(str(tmp_path)) is None


# ------------------------------------------------------------------ early errors


@pytest.mark.parametrize("field,value", [
    ("checkpoint_every", 0), ("steps", -5), ("log_every", 0), ("keep_checkpoints", 0),
    ("max_nonfinite_skips", -1), ("on_nonfinite", "ignore")])
def test_bad_counts_fail_before_anything_runs(tmp_path, field, value):
  with pytest.raises(faults.BadInput, match=f"train.{field}={value!r}"):
    train.train(_config(**{field: value}), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")  # nothing written, nothing compiled


def test_a_bad_count_on_the_command_line_is_one_line_and_exit_2(tmp_path):
  result = _cli(tmp_path, "--config.train.checkpoint_every=0", timeout=120)
  assert result.returncode == faults.EXIT_BAD_INPUT
  assert _errors(result.stderr) == [line for line in result.stderr.splitlines()
                                    if "train.checkpoint_every=0: expected an integer >= 1"
                                    in line]


def _small_disk(path, size: str):
  """A tmpfs of `size` at `path` (we run as root here; unprivileged, through a user
  namespace); the command prefix to run inside it, and how to unmount."""
  os.makedirs(path)
  if os.geteuid() == 0:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    return [], lambda: subprocess.run(["umount", str(path)], check=False)
  probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
  if probe.returncode:
    pytest.skip("needs root or user namespaces to mount a small tmpfs")
  mount = f"mount -t tmpfs -o size={size} tmpfs {path} && exec \"$@\""
  return ["unshare", "-rm", "sh", "-c", mount, "sh"], lambda: None


def test_a_full_disk_is_one_line_naming_the_path_and_the_size(tmp_path):
  """Before: ~800 lines of Orbax and asyncio tracebacks. A 1 MiB disk holds the tokenizer
  but not the first checkpoint (1.8 MiB)."""
  disk = tmp_path / "disk"
  prefix, unmount = _small_disk(disk, "1m")
  try:
    cmd = [*prefix, sys.executable, "-m", "mind_jax.train", "--config", DEBUG, "--workdir",
           str(disk / "w"), *FAST, "--config.train.steps=4", "--config.train.checkpoint_every=2"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
  finally:
    unmount()
  assert result.returncode == faults.EXIT_DISK_FULL, result.stderr[-3000:]
  (line,) = _errors(result.stderr)
  assert f"disk full writing {disk}/w/checkpoints/2.orbax-checkpoint-tmp" in line
  assert "a checkpoint needs about 1.8 MiB" in line
  assert len(result.stderr.splitlines()) < 30


def test_orbax_noise_goes_to_debug_and_the_rest_passes(caplog):
  """One filter, two uses on Orbax's loggers: always, the background copies of a failure;
  during a checkpoint read, every record (our one line says it all)."""
  faults.quiet_background_errors()
  faults.quiet_background_errors()  # twice: still one filter
  absl = logging.getLogger("absl")
  with caplog.at_level(logging.DEBUG):
    absl.error("Task exception was never retrieved")
    absl.warning("a warning of the run")
    with checkpoint_errors.orbax_quiet():
      absl.warning('Item "params" was found in the checkpoint, but could not be restored')
    absl.warning("another warning of the run")
  shown = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
  assert shown == ["a warning of the run", "another warning of the run"]
  debug = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
  assert "never retrieved" in debug and "could not be restored" in debug
  assert sum(isinstance(f, faults.ToDebug) for f in absl.filters) == 1


# ------------------------------------------------------------------ the workdir lock


def _holder(path, **fields):
  with open(os.path.join(str(path), workdir_lock.LOCK), "w") as f:
    json.dump(fields, f)


def test_lock_of_a_holder_on_another_host_is_judged_by_its_heartbeat(tmp_path):
  _holder(tmp_path, pid=1, host="elsewhere", started=0, heartbeat=time.time())
  with pytest.raises(faults.WorkdirLocked, match="in use by pid 1 on host elsewhere"):
    with workdir_lock.WorkdirLock(str(tmp_path), stale_s=60):
      pass
  _holder(tmp_path, pid=1, host="elsewhere", started=0, heartbeat=time.time() - 61)
  with workdir_lock.WorkdirLock(str(tmp_path), stale_s=60) as lock:
    with open(lock.path) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert not os.path.exists(lock.path)


def test_lock_of_a_reused_pid_is_stale(tmp_path):
  """Our own pid with another start time: a dead holder whose pid came back."""
  _holder(tmp_path, pid=os.getpid(), start_time="1", host=socket.gethostname(), started=0,
          heartbeat=time.time())
  with workdir_lock.WorkdirLock(str(tmp_path), stale_s=60):
    pass


def test_two_runs_on_one_workdir_then_a_second_signal_then_a_stale_lock(tmp_path):
  """Run A trains (slowly). B, started on the same workdir, fails at once naming A's pid
  and host (before: both trained, crashed inside Orbax, and wrote every step twice). Two
  SIGTERMs end A at once (exit 143), keeping the committed checkpoints; its lock is left
  behind, and C takes it over as stale and finishes, with every step logged once."""
  script = textwrap.dedent(f"""
      import sys, time
      from absl import app
      from mind_jax import train
      sys.argv = ["train", "--config", {DEBUG!r}, "--workdir", {str(tmp_path)!r}, *{FAST!r},
                  "--config.train.steps=40", "--config.train.checkpoint_every=2",
                  "--config.train.keep_checkpoints=20"]
      real_train = train.train
      slow = lambda step, state: time.sleep(1.0)
      train.train = lambda config, workdir: real_train(config, workdir, step_callback=slow)
      app.run(train.main)
      """)
  run_a = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while checkpoint.latest_step(str(tmp_path)) is None and time.time() < deadline:
    assert run_a.poll() is None, run_a.stdout.read()[-3000:]
    time.sleep(0.1)

  run_b = _cli(tmp_path, "--config.train.steps=40", timeout=120)
  assert run_b.returncode == faults.EXIT_LOCKED, run_b.stderr[-3000:]
  (line,) = _errors(run_b.stderr)
  assert f"is in use by pid {run_a.pid} on host {socket.gethostname()}" in line

  run_a.send_signal(signal.SIGTERM)
  time.sleep(0.2)  # A is inside its 1 s step callback: the second one lands before the save
  run_a.send_signal(signal.SIGTERM)
  output, _ = run_a.communicate(timeout=120)
  assert run_a.returncode == 128 + signal.SIGTERM, output[-3000:]
  assert "second signal (SIGTERM): exiting now" in output
  committed = checkpoint.latest_step(str(tmp_path))
  assert committed is not None and committed % 2 == 0  # only periodic saves: no preemption one
  assert os.path.exists(tmp_path / workdir_lock.LOCK)  # os._exit released nothing

  run_c = _cli(tmp_path, "--config.train.steps=40", "--config.train.checkpoint_every=2")
  assert run_c.returncode == 0, run_c.stderr[-3000:]
  assert f"holder (pid {run_a.pid} on {socket.gethostname()}) is gone; taking it over" \
      in run_c.stderr
  assert f"resumed from step {committed}" in run_c.stderr
  logged = _steps_logged(tmp_path)
  assert logged == sorted(set(logged)) and logged[-1] == 40


# ------------------------------------------------------------------ two processes

MULTI_HOST = textwrap.dedent("""
    import os, signal, sys, time
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process, port, workdir, signum = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process)
    import orbax.checkpoint as ocp
    from mind_jax import faults, preemption, workdir_lock
    try:
      with workdir_lock.WorkdirLock(workdir, stale_s=60):
        mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
        with preemption.PreemptionWatch() as watch:
          for step in range(1, 2000):
            time.sleep(0.02)
            if watch.reached(step, mngr):
              print(f"process {process} stops at step {step}", flush=True)
              break
            if step == 20 and process == 1:
              os.kill(os.getpid(), getattr(signal, signum))
    except faults.WorkdirLocked as e:
      print(f"process {process}: {e}", flush=True)
    """)


def _two_processes(workdir, signum):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  runs = [subprocess.Popen([sys.executable, "-c", MULTI_HOST, str(p), port, str(workdir),
                            signum], cwd=REPO, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT) for p in (0, 1)]
  return [run.communicate(timeout=120)[0] for run in runs]


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_two_processes_agree_on_the_preemption_step(tmp_path, signum):
  """Process 1 alone gets the signal; through JAX's preemption service (SIGINT passed on
  to it) both processes stop at the same step, so both can save it. Only process 0 takes
  the workdir lock."""
  outputs = _two_processes(tmp_path, signum)
  steps = [re.search(r"process \d stops at step (\d+)", out) for out in outputs]
  assert all(steps), outputs
  assert steps[0].group(1) == steps[1].group(1) and int(steps[0].group(1)) > 20
  assert not os.path.exists(tmp_path / workdir_lock.LOCK)  # released by process 0


def test_two_processes_both_fail_on_a_locked_workdir(tmp_path):
  _holder(tmp_path, pid=1, host="elsewhere", started=0, heartbeat=time.time())
  outputs = _two_processes(tmp_path, "SIGTERM")
  assert "process 0: " in outputs[0] and "in use by pid 1 on host elsewhere" in outputs[0]
  assert "process 1: process 0 could not lock" in outputs[1]
