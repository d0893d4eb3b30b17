"""The demo end to end (short), the TensorBoard output, and the shipped configs."""
import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from mind_jax.models.decoder import DecoderConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_trains_exports_reloads_and_round_trips(tmp_path):
  result = subprocess.run([sys.executable, "-m", "mind_jax.demo", "--workdir", str(tmp_path),
                           "--steps", "20"], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "round_trip_exact: True" in result.stdout
  assert "model_answer:" in result.stdout
  for name in ("config.json", "generation_config.json", "model.safetensors",
               "tokenizer.json"):
    assert os.path.isfile(tmp_path / "hf" / name), name
  # TensorBoard scalars were written with the loss in them.
  from tensorboard.backend.event_processing import event_accumulator

  events = glob.glob(str(tmp_path / "train" / "tensorboard" / "events.out.tfevents.*"))
  assert events
  acc = event_accumulator.EventAccumulator(os.path.dirname(events[0]))
  acc.Reload()
  tags = acc.Tags()["tensors"] + acc.Tags()["scalars"]
  assert {"loss", "tokens_per_s", "learning_rate"} <= set(tags), tags


def _load(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))),
                         ids=os.path.basename)
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
