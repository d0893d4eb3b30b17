"""import_hf refuses what it cannot import faithfully, naming the cause; bf16 files import.
Bad input to the import_hf and export_hf CLIs ends in one line and exit code 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mind_jax import checkpoint, export_hf, faults, import_hf, inference
from mind_jax.models import hf
from tests.test_cli_overrides import REPO, _fails
from tests.test_hf_parity import (max_diff_at_tokens, our_logits, padded_batch, save_hf_dir,
                                  tiny_hf_model, torch_logits)


def test_unsupported_architecture_is_named(tmp_path):
  config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 300}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"gpt2.*GPT2LMHeadModel") as error:
    import_hf.import_hf(str(tmp_path), str(tmp_path / "run"))
  assert str(tmp_path / "config.json") in str(error.value)


@pytest.mark.parametrize("field,value", [("mlp_bias", True), ("hidden_act", "gelu"),
                                         ("rope_parameters", {"rope_type": "yarn",
                                                              "rope_theta": 1e4,
                                                              "factor": 4.0})])
def test_unsupported_llama_field_is_named(tmp_path, field, value):
  model = tiny_hf_model("llama", tied=True)
  config = model.config.to_dict() | {field: value}
  with pytest.raises(ValueError, match=field):
    hf.decoder_config_from_hf(config, "config.json")


def test_qwen2_sliding_window_is_refused():
  config = tiny_hf_model("qwen2", tied=True).config.to_dict()
  config.update(use_sliding_window=True, sliding_window=8, max_window_layers=1)
  config.pop("layer_types")  # let transformers derive them from the sliding-window fields
  with pytest.raises(ValueError, match="use_sliding_window"):
    hf.decoder_config_from_hf(config, "config.json")


def test_missing_tensor_is_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  hf_dir = save_hf_dir(tiny_hf_model("llama", tied=False), str(tmp_path / "hf"))
  weights_file = os.path.join(hf_dir, "model.safetensors")
  tensors = load_file(weights_file)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, weights_file, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight") as error:
    import_hf.import_hf(hf_dir, str(tmp_path / "run"))
  assert hf_dir in str(error.value)
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "0")


def test_unexpected_tensor_is_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  hf_dir = save_hf_dir(tiny_hf_model("qwen2", tied=True), str(tmp_path / "hf"))
  weights_file = os.path.join(hf_dir, "model.safetensors")
  tensors = load_file(weights_file)
  tensors["model.layers.0.mlp.down_proj.bias"] = np.zeros(64, np.float32)
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)  # harmless
  save_file(tensors, weights_file, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.bias") as error:
    import_hf.import_hf(hf_dir, str(tmp_path / "run"))
  assert "inv_freq" not in str(error.value)


def test_bfloat16_checkpoint_imports(tmp_path):
  import torch
  from safetensors import safe_open
  from transformers import AutoModelForCausalLM
  model = tiny_hf_model("qwen2", tied=False).to(torch.bfloat16)
  hf_dir = save_hf_dir(model, str(tmp_path / "hf"))
  with safe_open(os.path.join(hf_dir, "model.safetensors"), framework="numpy") as f:
    assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
  workdir = str(tmp_path / "run")
  import_hf.main(["--hf_dir", hf_dir, "--out", workdir])  # params upcast to float32

  _, cfg, params = inference.restore_params(workdir, None)
  embedding = np.asarray(params["embed_tokens"])
  assert embedding.dtype == np.float32
  expected = model.model.embed_tokens.weight.detach().float().numpy()
  np.testing.assert_array_equal(embedding[:cfg.vocab_size], expected)
  assert not embedding[cfg.vocab_size:].any()  # zero padding rows

  # The same bf16 weights computed in fp32 on both sides (a fresh load: model.float()
  # would keep RoPE inverse frequencies rounded to bf16 by .to(bfloat16)).
  ids, mask, positions = padded_batch()
  fp32_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  reference = torch_logits(fp32_model, ids, mask, positions)
  diff = max_diff_at_tokens(our_logits(workdir, cfg, ids, mask, positions, params=params),
                            reference, mask)
  print(f"\n[qwen2 bf16 checkpoint] import: max |logits ours - torch(fp32)| = {diff:.3g}")
  assert diff < 1e-4

  # Exported back as bf16: bit-identical to the original file's weights.
  out = export_hf.export_hf(workdir, str(tmp_path / "export"), dtype="bfloat16")
  reloaded = AutoModelForCausalLM.from_pretrained(out)
  assert reloaded.dtype == torch.bfloat16
  for key, value in model.state_dict().items():
    assert torch.equal(value, reloaded.state_dict()[key]), key


# ------------------------------------------------------------------ the CLIs' bad input


def _hf_dir(tmp_path, config: dict | str | None) -> str:
  """A directory holding `config` as config.json (none when None)."""
  os.makedirs(tmp_path / "hf", exist_ok=True)
  if config is not None:
    text = config if isinstance(config, str) else json.dumps(config)
    (tmp_path / "hf" / "config.json").write_text(text)
  return str(tmp_path / "hf")


def _qwen2_config() -> dict:
  return tiny_hf_model("qwen2", tied=True).config.to_dict()


GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 300}


@pytest.mark.parametrize("config,says", [
    (None, ": no config.json"), ("{bad", "/config.json: not valid JSON"),
    (GPT2, "/config.json: model_type='gpt2'")], ids=["no config.json", "bad JSON", "gpt2"])
def test_import_cli_names_a_bad_hf_dir(caplog, tmp_path, config, says):
  hf_dir = _hf_dir(tmp_path, config)
  line = _fails(caplog, import_hf.main, ["--hf_dir", hf_dir, "--out", str(tmp_path / "run")])
  assert line.startswith(f"--hf_dir {hf_dir}{says}")
  assert not os.path.exists(tmp_path / "run")


def test_import_cli_names_a_missing_hf_dir(caplog, tmp_path):
  line = _fails(caplog, import_hf.main, ["--hf_dir", str(tmp_path / "nope"), "--out",
                                         str(tmp_path / "run")])
  assert line.startswith(f"--hf_dir {tmp_path / 'nope'}: no such directory")


def test_import_cli_refuses_an_out_with_a_checkpoint(caplog, monkeypatch, tmp_path):
  monkeypatch.setattr(checkpoint, "latest_step", lambda workdir: 7)
  out = str(tmp_path / "run")
  line = _fails(caplog, import_hf.main, ["--hf_dir", _hf_dir(tmp_path, _qwen2_config()),
                                         "--out", out])
  assert line == f"--out {out} already holds a checkpoint (step 7): import into a new workdir"


def test_import_cli_names_a_mesh_that_does_not_fit(caplog, tmp_path):
  line = _fails(caplog, import_hf.main, ["--hf_dir", _hf_dir(tmp_path, _qwen2_config()),
                                         "--out", str(tmp_path / "run"), "--mesh_tensor", "7"])
  assert line.startswith("--mesh_data/--mesh_fsdp/--mesh_tensor (1, -1, 7): ")
  assert not os.path.exists(tmp_path / "run")


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=120, cwd=REPO)


def test_import_cli_ends_bad_input_in_one_line(tmp_path):
  result = _cli("mind_jax.import_hf", "--hf_dir", _hf_dir(tmp_path, GPT2),
                "--out", str(tmp_path / "run"))
  assert result.returncode == faults.EXIT_BAD_INPUT, result.stderr
  assert "Traceback" not in result.stderr
  (line,) = result.stderr.strip().splitlines()
  assert "config.json: model_type='gpt2'" in line


def test_export_refuses_a_bad_dtype_before_reading(tmp_path):
  with pytest.raises(faults.BadInput, match=r"--dtype 'fp16': expected one of float32, bfloat16"):
    export_hf.export_hf(str(tmp_path / "nope"), str(tmp_path / "out"), dtype="fp16")
  result = _cli("mind_jax.export_hf", "--checkpoint", str(tmp_path / "nope"),
                "--out", str(tmp_path / "out"), "--dtype", "fp16")
  assert result.returncode == faults.EXIT_BAD_INPUT, result.stderr
  assert "Traceback" not in result.stderr  # argparse: its usage, then one error line
  assert result.stderr.strip().splitlines()[-1].endswith(
      "argument --dtype: invalid choice: 'fp16' (choose from 'float32', 'bfloat16')")
  assert not os.path.exists(tmp_path / "out")


def test_export_cli_names_a_bad_shard_size(caplog, tmp_path):
  line = _fails(caplog, export_hf.main, ["--checkpoint", str(tmp_path / "nope"), "--out",
                                         str(tmp_path / "out"), "--max_shard_size", "2XB"])
  assert line.startswith("--max_shard_size '2XB': expected bytes")
  assert not os.path.exists(tmp_path / "out")
