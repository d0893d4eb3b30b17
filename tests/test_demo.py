"""The demo end to end (short), the TensorBoard output, and the shipped configs."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mind_jax.models.decoder import DecoderConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_builds_trains_mind_evaluates_exports_and_reloads(tmp_path):
  # As on a user's machine: the CPU as one device, not the tests' 8 simulated ones.
  env = dict(os.environ, XLA_FLAGS="")
  result = subprocess.run(
      [sys.executable, "-m", "mind_jax.demo", "--workdir", str(tmp_path), "--questions", "12",
       "--steps", "3", "--warmup_steps", "2", "--eval_size", "3", "--max_new_tokens", "12"],
      capture_output=True, text=True, cwd=REPO, timeout=900, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "transformers_answer:" in result.stdout
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["steps"] == "2 TA warm-up + 3 joint"
  results = json.load(open(tmp_path / "results.json"))
  names = [s["name"] for s in results["suites"]]
  assert names[0].startswith("id") and any("ood" in n for n in names) and len(names) >= 3
  for suite in results["suites"]:
    assert suite["n"] == 3 and 0.0 <= suite["accuracy"] <= 1.0
  for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
    assert os.path.isfile(tmp_path / "hf" / name), name
  assert os.path.isfile(tmp_path / "data" / "manifest.json")
  assert os.path.isfile(tmp_path / "train" / "alpha_per_perspective.png")
  # TensorBoard scalars were written, per perspective too.
  from tensorboard.backend.event_processing import event_accumulator

  events = glob.glob(str(tmp_path / "train" / "tensorboard" / "events.out.tfevents.*"))
  assert events
  acc = event_accumulator.EventAccumulator(os.path.dirname(events[0]))
  acc.Reload()
  tags = set(acc.Tags()["tensors"] + acc.Tags()["scalars"])
  assert {"loss", "l_meta", "l_sft", "l_cons", "alpha/planning", "selection_rate/analogy"} <= tags


def _load(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


TRAIN_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                       if os.path.basename(p) != "experiment.py")  # tests/test_experiment.py


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=os.path.basename)
def test_shipped_configs_are_valid_and_locked(path):
  config = _load(path)
  model = DecoderConfig.from_config(config.model)
  assert model.padded_vocab_size % model.vocab_pad_multiple == 0
  with pytest.raises(AttributeError):
    config.train.no_such_field = 1  # locked: typos fail
  if os.path.basename(path) == "gpu_qwen05b.py":
    # Qwen2.5-0.5B has 494M parameters (tied embeddings, vocab 151936 is already a
    # multiple of 128).
    assert abs(model.num_params() - 494_032_768) / 494_032_768 < 0.001
