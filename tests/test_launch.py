"""The launch scripts' dry runs print exactly the commands they would run."""
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry(script, *args, **env):
  result = subprocess.run(["bash", os.path.join(REPO, "launch", script), "--dry-run", *args],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
  assert result.returncode == 0, result.stderr
  return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_gpu_local_dry_run():
  lines = _dry("gpu_local.sh", "/tmp/w", "--config.train.steps=3")
  assert lines[-1] == (".venv/bin/python -m mind_jax.train --config configs/gpu_qwen05b.py "
                       "--workdir /tmp/w --config.train.steps=3")
  assert any('jax[cuda12]==0.10.2' in line for line in lines)


def test_gpu_multi_dry_run_puts_all_gpus_on_fsdp():
  lines = _dry("gpu_multi.sh", "/tmp/w", CONFIG="configs/mind_demo.py")
  assert lines[-1] == (".venv/bin/python -m mind_jax.train --config configs/mind_demo.py "
                       "--workdir /tmp/w --config.mesh.data=1 --config.mesh.fsdp=-1")


@pytest.mark.parametrize("action,expected", [
    ("create", "gcloud compute tpus tpu-vm create pod1 --zone zz --accelerator-type "
               "v5litepod-16 --version v2-alpha-tpuv5-lite"),
    ("delete", "gcloud compute tpus tpu-vm delete pod1 --zone zz --quiet"),
    ("logs", "gcloud compute tpus tpu-vm ssh pod1 --zone zz --worker=0 --command "
             "tail -f mind_jax/train.log"),
])
def test_tpu_pod_dry_runs(action, expected):
  assert _dry("tpu_pod.sh", action, TPU_NAME="pod1", ZONE="zz") == [expected]


def test_tpu_pod_train_runs_the_same_command_on_every_worker():
  (line,) = _dry("tpu_pod.sh", "train", TPU_NAME="pod1", ZONE="zz", WORKDIR="gs://b/run",
                 OVERRIDES="--config.train.steps=5")
  assert "--worker=all" in line
  assert ("python -m mind_jax.train --config configs/tpu_v5e16.py --workdir gs://b/run "
          "--config.train.steps=5") in line


def test_tpu_pod_unknown_action_fails():
  result = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), "--dry-run",
                           "explode"], capture_output=True, text=True, timeout=60)
  assert result.returncode != 0 and "unknown action" in result.stderr


def test_process_layout_checks(monkeypatch):
  from mind_jax import distributed

  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "h0,h1,h2,h3")
  assert distributed.expected_process_count() == 4
  distributed.check_processes(3, 4, 4)
  with pytest.raises(RuntimeError, match="2 JAX processes joined but the environment announces 4"):
    distributed.check_processes(0, 2, 4)
  with pytest.raises(RuntimeError, match="process id 4 is outside 0..3"):
    distributed.check_processes(4, 4, 4)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  assert distributed.expected_process_count() is None
  distributed.initialize("auto", 5)  # single host: nothing to start
  with pytest.raises(ValueError, match="train.distributed='maybe'"):
    distributed.initialize("maybe", 5)
