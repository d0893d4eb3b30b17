"""Checkpoints: a run killed with SIGKILL resumes to bitwise the same params,
an interrupted write is never restored, restore works onto another mesh, and
a checkpoint of another shape fails listing the mismatched shapes."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from mind_jax import checkpoint, faults, sharding, state as state_lib
from mind_jax.config import default_config
from mind_jax.models.decoder import DecoderConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 6  # checkpoint every N steps; the straight run goes to 2N
COMMON = ["--config", os.path.join(REPO, "configs", "debug_cpu.py"),
          f"--config.train.checkpoint_every={N}", "--config.train.log_every=2",
          "--config.train.keep_checkpoints=10", "--config.data.num_examples=64",
          f"--config.optim.decay_steps={2 * N}"]


def _train(workdir, *overrides, check=True):
  cmd = [sys.executable, "-m", "mind_jax.train", "--workdir", str(workdir), *COMMON, *overrides]
  result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"{cmd} failed:\n{result.stderr[-3000:]}")
  return result


def _train_then_sigkill(workdir, kill_at_step, wait_for_commit):
  """Train towards 10N steps, SIGKILL the process after step `kill_at_step`.

  With wait_for_commit, the kill comes once checkpoint N is committed; without,
  it comes right after the asynchronous save of that step started, mid-write.
  """
  script = textwrap.dedent(f"""
      import importlib.util, os, signal, time
      from mind_jax import train
      spec = importlib.util.spec_from_file_location("cfg", {COMMON[1]!r})
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      config = module.get_config()
      for override in {COMMON[2:]!r} + ["--config.train.steps={10 * N}"]:
        key, value = override[len("--config."):].split("=")
        *parents, last = key.split(".")
        node = config
        for name in parents:
          node = node[name]
        node[last] = type(node[last])(value)
      def kill(step, state):
        if step == {kill_at_step}:
          while {wait_for_commit} and not os.path.isdir("{workdir}/checkpoints/{N}"):
            time.sleep(0.01)
          os.kill(os.getpid(), signal.SIGKILL)
      train.train(config, "{workdir}", step_callback=kill)
      """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def _final_params(workdir):
  step, meta = checkpoint.read_meta(str(workdir))
  assert step == 2 * N
  model_config = DecoderConfig(**meta["model"])
  mesh = sharding.make_mesh(default_config().mesh, jax.devices()[:1])
  abstract, shardings = state_lib.abstract_state_and_shardings(
      model_config, state_lib.make_optimizer(default_config().optim, 1), mesh,
      default_config().mesh.rules)
  target = sharding.with_shardings(abstract, shardings)
  _, items = checkpoint.restore(str(workdir), step, {"params": target.params})
  return jax.device_get(items["params"])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  _train(workdir, f"--config.train.steps={2 * N}")
  return _final_params(workdir)


@pytest.mark.parametrize("wait_for_commit,kill_at_step", [(True, N + 2), (False, N)],
                         ids=["kill-after-commit", "kill-during-write"])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, straight_run, wait_for_commit,
                                                  kill_at_step):
  _train_then_sigkill(tmp_path, kill_at_step, wait_for_commit)
  committed = checkpoint.latest_step(str(tmp_path))
  if wait_for_commit:
    assert committed == N
  result = _train(tmp_path, f"--config.train.steps={2 * N}")
  if committed:
    assert f"resumed from step {committed}" in result.stderr
  resumed = _final_params(tmp_path)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight_run)):
    assert np.array_equal(a, b)


def _steps_logged(workdir):
  path = os.path.join(str(workdir), "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def test_sigterm_commits_the_step_reached_and_the_resume_is_bitwise(tmp_path, straight_run):
  """What a preemptible TPU VM or a scheduler does: SIGTERM from outside, mid-training."""
  script = textwrap.dedent(f"""
      import sys, time
      from mind_jax import faults, train
      sys.argv = ["train", "--workdir", {str(tmp_path)!r}, *{COMMON!r},
                  "--config.train.steps={2 * N}"]
      from absl import app
      slow = lambda step, state: time.sleep(0.3)  # room for the signal to land mid-run
      real_train = train.train
      train.train = lambda config, workdir: real_train(config, workdir, step_callback=slow)
      app.run(train.main)
      """)
  run = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while not _steps_logged(tmp_path) and time.time() < deadline and run.poll() is None:
    time.sleep(0.05)
  run.send_signal(signal.SIGTERM)
  output, _ = run.communicate(timeout=300)
  assert run.returncode == faults.EXIT_PREEMPTED, output[-3000:]
  committed = checkpoint.latest_step(str(tmp_path))
  assert 1 <= committed < 2 * N, output[-3000:]
  assert f"preempted (SIGTERM) at step {committed}: checkpoint {committed} is committed" in output
  assert "Traceback" not in output
  assert not os.path.exists(tmp_path / "train.lock")  # released on the way out

  result = _train(tmp_path, f"--config.train.steps={2 * N}")
  assert f"resumed from step {committed}" in result.stderr
  for a, b in zip(jax.tree.leaves(_final_params(tmp_path)), jax.tree.leaves(straight_run)):
    assert np.array_equal(a, b)
  logged = _steps_logged(tmp_path)
  assert logged == sorted(set(logged)) and logged[-1] == 2 * N  # no step written twice


def test_interrupted_write_is_never_restored(tmp_path):
  _train(tmp_path, f"--config.train.steps={N}")
  # What a write killed half-way leaves behind: Orbax's temporary directory.
  partial = tmp_path / "checkpoints" / f"{2 * N}.orbax-checkpoint-tmp-1234"
  (partial / "params").mkdir(parents=True)
  (partial / "params" / "garbage").write_bytes(b"\0" * 100)
  assert checkpoint.latest_step(str(tmp_path)) == N
  result = _train(tmp_path, f"--config.train.steps={N + 2}")
  assert f"resumed from step {N}" in result.stderr


def test_restore_onto_another_mesh(tmp_path):
  _train(tmp_path, f"--config.train.steps={N}", "--config.mesh.data=8")
  config = default_config()
  step, meta = checkpoint.read_meta(str(tmp_path))
  model_config = DecoderConfig(**meta["model"])
  optimizer = state_lib.make_optimizer(config.optim, 1)
  values = {}
  for mesh_shape in [(1, 1, 1), (1, 2, 4)]:
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:int(np.prod(mesh_shape))])
    abstract, shardings = state_lib.abstract_state_and_shardings(model_config, optimizer, mesh,
                                                                 config.mesh.rules)
    target = sharding.with_shardings(abstract, shardings)
    _, items = checkpoint.restore(str(tmp_path), step, {
        "params": target.params,
        "opt": dict(opt_state=target.opt_state, step=target.step, rng=target.rng)})
    kernel = items["params"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.mesh.shape == dict(zip(sharding.MESH_AXES, mesh_shape))
    # The optimizer state comes back as optax's own types, not plain lists.
    assert type(items["opt"]["opt_state"]) is type(abstract.opt_state)
    values[mesh_shape] = jax.device_get(items)
  for a, b in zip(jax.tree.leaves(values[(1, 1, 1)]), jax.tree.leaves(values[(1, 2, 4)])):
    assert np.array_equal(a, b)


def test_checkpoint_of_another_shape_lists_mismatches(tmp_path):
  _train(tmp_path, "--config.train.steps=2")
  result = _train(tmp_path, "--config.train.steps=4", "--config.model.hidden_size=32",
                  check=False)
  assert result.returncode != 0
  assert "does not match the model config" in result.stderr
  assert "embed_tokens: checkpoint (512, 64), config expects (512, 32)" in result.stderr


def test_unknown_override_names_the_field(tmp_path):
  result = _train(tmp_path, "--config.train.stepz=3", check=False)
  assert result.returncode != 0
  assert "stepz" in result.stderr and "steps" in result.stderr
