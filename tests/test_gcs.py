"""Every path on gs://, against a local GCS emulator (tests/gcs_emulator.py): records built
into gs://bucket/records, a MIND run in gs://bucket/run preempted and resumed, evaluated,
and exported to gs://bucket/export; plus the grep check that no module of mind_jax/ calls
a local-only file function on a user-given path (mind_jax/paths.py is the one door)."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests import gcs_emulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bucket"

# Calls that only reach the local disk. A line may keep one when it is local by
# construction; it then says why, with a trailing `# local: <why>`.
LOCAL_ONLY = re.compile(
    r"(?<![\w.])open\(|\bos\.makedirs\(|\bos\.path\.(exists|isfile|isdir|abspath|getsize)\("
    r"|\bos\.listdir\(|\bglob\.glob\(|\bos\.(replace|rename|remove|unlink|walk|scandir)\("
    r"|\bshutil\.\w+\(")


def test_no_local_only_file_calls_outside_the_path_layer():
  offenders = []
  for root, _, names in os.walk(os.path.join(REPO, "mind_jax")):
    for name in names:
      path = os.path.join(root, name)
      if not name.endswith(".py") or path.endswith(os.path.join("mind_jax", "paths.py")):
        continue
      with open(path) as f:
        for number, line in enumerate(f, start=1):
          code = line.split("#", 1)[0] if "# local:" not in line else ""
          if LOCAL_ONLY.search(code):
            offenders.append(f"{os.path.relpath(path, REPO)}:{number}: {line.strip()}")
  assert not offenders, "local-only file calls (use mind_jax.paths, or say `# local: why`):\n" \
      + "\n".join(offenders)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator, with bucket `bucket`; yields (info, env for client processes)."""
  emulator = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"),
       str(tmp_path_factory.mktemp("gcs")), BUCKET],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  info = json.loads(emulator.stdout.readline())
  env = dict(os.environ, **gcs_emulator.client_env(info))
  yield info, env
  emulator.stdin.close()
  emulator.wait(timeout=30)


def _run(env, *args, check=0, timeout=900):
  result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)
  assert result.returncode == check, result.stderr[-4000:]
  return result


# A tiny student on the demo config: the records' tokenizer, K=8, packed rows.
TRAIN = ["--config", os.path.join(REPO, "configs", "mind_demo.py"),
         "--config.data.records_dir=gs://bucket/records", "--config.model.hidden_size=32",
         "--config.model.intermediate_size=64", "--config.model.num_layers=1",
         "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
         "--config.model.head_dim=16", "--config.ta.hidden_size=16",
         "--config.ta.score_hidden_size=8", "--config.train.batch_size=4",
         "--config.train.steps=3", "--config.mind.ta_warmup_steps=1",
         "--config.train.log_every=1", "--config.train.checkpoint_every=100",
         "--config.mesh.data=1"]


def test_build_train_preempt_resume_evaluate_export_all_on_gcs(gcs, tmp_path):
  info, env = gcs
  _run(env, "-m", "mind_jax.data.build", "--config", "configs/data/demo.py",
       "--out", "gs://bucket/records", "--config.questions.rg_size=12")
  records = gcs_emulator.list_objects(info, BUCKET, "records/")
  assert "records/manifest.json" in records and "records/tokenizer/tokenizer.json" in records
  assert any(name.endswith(".tfrecord") or "tfrecord" in name for name in records)

  # Preempted after step 2 (SIGTERM to itself from the step callback), then resumed.
  script = textwrap.dedent(f"""
      import os, signal, sys
      from absl import app
      from mind_jax import train
      sys.argv = ["train", "--workdir", "gs://bucket/run", *{TRAIN!r}]
      real_train = train.train
      def preempt(step, state):
        if step == 2:
          os.kill(os.getpid(), signal.SIGTERM)
      train.train = lambda config, workdir: real_train(config, workdir, step_callback=preempt)
      app.run(train.main)
      """)
  first = _run(env, "-c", script, check=75)
  assert "checkpoint 3 is committed in gs://bucket/run/checkpoints" in first.stderr
  run = gcs_emulator.list_objects(info, BUCKET, "run/")
  assert "run/train.lock" not in run
  for expected in ("run/metrics.jsonl", "run/tokenizer/tokenizer_config.json"):
    assert expected in run, run
  assert any(name.startswith("run/checkpoints/3/") for name in run)
  assert any(name.startswith("run/tensorboard/events.out.tfevents") for name in run)

  _run(env, "-m", "mind_jax.train", "--workdir", "gs://bucket/run", *TRAIN,
       "--config.train.steps=4")
  history = gcs_emulator.read_object(info, BUCKET, "run/metrics.jsonl").decode()
  steps = [json.loads(line)["step"] for line in history.splitlines()]
  assert steps == sorted(set(steps)) and steps[-1] == 5  # 1 warm-up + 4 joint, each once
  assert "run/alpha_per_perspective.png" in gcs_emulator.list_objects(info, BUCKET, "run/")

  _run(env, "-m", "mind_jax.eval.run", "--checkpoint", "gs://bucket/run", "--suites", "id",
       "--id_size", "3", "--max_new_tokens", "8", "--batch_size", "4",
       "--out", "gs://bucket/eval/results.json")
  results = json.loads(gcs_emulator.read_object(info, BUCKET, "eval/results.json"))
  assert results["step"] == 5 and results["suites"][0]["n"] == 3

  _run(env, "-m", "mind_jax.export_hf", "--checkpoint", "gs://bucket/run",
       "--out", "gs://bucket/export")
  exported = gcs_emulator.list_objects(info, BUCKET, "export/")
  for name in ("config.json", "model.safetensors", "tokenizer.json"):
    assert f"export/{name}" in exported, exported
  local = tmp_path / "export"
  local.mkdir()
  for name in exported:
    if not name.endswith("/"):  # tf.io.gfile's directory markers
      (local / os.path.basename(name)).write_bytes(gcs_emulator.read_object(info, BUCKET, name))
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(str(local))
  assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
