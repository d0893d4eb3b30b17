"""transformers -> import_hf -> our Decoder -> export_hf -> transformers, on tiny random models.

Run with `pytest -s` to see the measured differences.
"""
import json
import os

import jax
import numpy as np
import pytest

from mind_jax import export_hf, import_hf, inference, sharding
from mind_jax.models import decoder, hf

VOCAB = 300  # pads to 384: the padding rows are exercised
SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
BOS, EOS, PAD = 0, 1, 2  # the trainer puts the special tokens first, in this order
TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Seven sheep sleep soundly; six sleek swans swim swiftly.",
         "Tom has 3 apples and buys 4 more, so Tom has 7 apples."] * 4
# (family, tied): llama untied uses Llama-3 RoPE scaling, the others the default RoPE.
@pytest.fixture(autouse=True, scope="module")
def _no_progress_bars():
  from transformers.utils import logging as hf_logging
  hf_logging.disable_progress_bar()


CASES = [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True)]


def save_tokenizer(path: str) -> None:
  """A byte-level BPE trained in a fraction of a second, saved as a HF fast tokenizer."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIAL_TOKENS.values()),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(TEXTS, trainer=trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
  assert fast.convert_tokens_to_ids(list(SPECIAL_TOKENS.values())) == [BOS, EOS, PAD]
  assert len(fast) <= VOCAB
  fast.save_pretrained(path)


def tiny_hf_model(family: str, tied: bool, seed: int = 0):
  """A random 2-layer LlamaForCausalLM / Qwen2ForCausalLM (fp32, eval mode)."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
  shape = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               rms_norm_eps=1e-5, tie_word_embeddings=tied,
               bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
  torch.manual_seed(seed)
  if family == "llama":
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if not tied:
      rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 16}
    model = LlamaForCausalLM(LlamaConfig(rope_parameters=rope, **shape))
  else:
    model = Qwen2ForCausalLM(Qwen2Config(rope_parameters={"rope_type": "default",
                                                          "rope_theta": 1e6}, **shape))
    with torch.no_grad():  # transformers initialises biases to zero: make them matter
      for name, p in model.named_parameters():
        if name.endswith(".bias"):
          p.normal_(0.0, 0.02)
  return model.eval()


def save_hf_dir(model, path: str) -> str:
  model.save_pretrained(path)  # safetensors by default
  save_tokenizer(path)
  return path


def padded_batch(seed: int = 0):
  """Token ids [4, 24] with right padding (rows 1, 3), left padding (row 2), and the
  position ids transformers' generate would use (cumsum of the mask, from 0)."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, VOCAB, size=(4, 24))
  mask = np.ones_like(ids)
  mask[1, 16:] = 0
  mask[2, :7] = 0
  mask[3, 5:] = 0
  ids[mask == 0] = PAD
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return ids, mask, positions


def torch_logits(model, ids, mask, positions) -> np.ndarray:
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions))
  return out.logits.float().numpy()


def our_logits(workdir: str, cfg: decoder.DecoderConfig, ids, mask, positions,
               params=None) -> np.ndarray:
  if params is None:
    _, _, params = inference.restore_params(workdir, None)
  apply = jax.jit(decoder.Decoder(cfg).apply)
  logits = apply({"params": params}, ids, positions, mask)
  return np.asarray(logits)[..., :cfg.vocab_size]


def max_diff_at_tokens(a, b, mask) -> float:
  """Largest |a - b| over the non-padded positions only."""
  return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.mark.parametrize("family,tied", CASES, ids=[f"{f}-{'tied' if t else 'untied'}"
                                                    for f, t in CASES])
def test_import_export_roundtrip(tmp_path, family, tied):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  name = f"{family}-{'tied' if tied else 'untied'}"
  original = tiny_hf_model(family, tied)
  hf_dir = save_hf_dir(original, str(tmp_path / "hf"))
  ids, mask, positions = padded_batch()

  # Import (all 8 simulated devices on fsdp) and compare logits with PyTorch.
  workdir = str(tmp_path / "run")
  cfg = import_hf.import_hf(hf_dir, workdir)
  assert (cfg.family, cfg.tie_embeddings, cfg.padded_vocab_size) == (family, tied, 384)
  assert (cfg.qkv_bias, cfg.rope_scaling) == (family == "qwen2",
                                              "llama3" if name == "llama-untied" else "none")
  ours = our_logits(workdir, cfg, ids, mask, positions)
  reference = torch_logits(original, ids, mask, positions)
  import_diff = max_diff_at_tokens(ours, reference, mask)
  print(f"\n[{name}] import: max |logits ours - torch| = {import_diff:.3g}")
  assert import_diff < 1e-4

  # Export and reload with transformers: identical weights, logits and greedy tokens.
  out = export_hf.export_hf(workdir, str(tmp_path / "export"))
  assert sorted(os.listdir(out)) == sorted(os.listdir(hf_dir))  # the files transformers writes
  reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(reloaded) is type(original)
  original_weights, reloaded_weights = original.state_dict(), reloaded.state_dict()
  assert sorted(original_weights) == sorted(reloaded_weights)
  for key, value in original_weights.items():
    assert torch.equal(value, reloaded_weights[key]), key
  reload_diff = max_diff_at_tokens(torch_logits(reloaded, ids, mask, positions), reference, mask)
  print(f"[{name}] export: max |logits reloaded - original| = {reload_diff:.3g}")
  assert reload_diff < 1e-5

  tokenizer = AutoTokenizer.from_pretrained(out, padding_side="left")
  assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(hf_dir).get_vocab()
  prompts = tokenizer(["Tom has 3 apples", "The quick brown fox jumps"], return_tensors="pt",
                      padding=True)
  greedy = dict(do_sample=False, max_new_tokens=20, pad_token_id=PAD)
  with torch.no_grad():
    expected = original.generate(**prompts, **greedy)
    got = reloaded.generate(**prompts, **greedy)
  assert torch.equal(expected, got)
  print(f"[{name}] generate: {expected.shape[1] - prompts['input_ids'].shape[1]} greedy tokens "
        "identical")


def test_sharded_export_and_cli(tmp_path):
  import torch
  from transformers import AutoModelForCausalLM
  original = tiny_hf_model("llama", tied=False)
  hf_dir = save_hf_dir(original, str(tmp_path / "hf"))
  workdir = str(tmp_path / "run")
  import_hf.main(["--hf_dir", hf_dir, "--out", workdir])
  step_dir = os.path.join(workdir, "checkpoints", "0")  # a step dir is accepted too
  out = str(tmp_path / "export")
  export_hf.main(["--checkpoint", step_dir, "--out", out, "--max_shard_size", "40KB"])

  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    index = json.load(f)
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 1 and not os.path.exists(os.path.join(out, "model.safetensors"))
  assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  file_bytes = sum(os.path.getsize(os.path.join(out, shard)) for shard in shards)
  assert file_bytes > index["metadata"]["total_size"]  # tensor bytes + one header per file
  reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
  for key, value in original.state_dict().items():
    assert torch.equal(value, reloaded.state_dict()[key]), key
  ids, mask, positions = padded_batch()
  diff = max_diff_at_tokens(torch_logits(reloaded, ids, mask, positions),
                            torch_logits(original, ids, mask, positions), mask)
  print(f"\n[sharded export, {len(shards)} shards] max |logits reloaded - original| = {diff:.3g}")
  assert diff < 1e-5

  # The sharded directory imports again (through the index), to the same params.
  cfg = import_hf.import_hf(out, str(tmp_path / "reimported"))
  _, _, params = inference.restore_params(workdir, None)
  _, _, params_again = inference.restore_params(str(tmp_path / "reimported"), None)
  assert cfg == import_hf.read_config(hf_dir)
  jax.tree.map(np.testing.assert_array_equal, params, params_again)


def test_import_onto_fsdp_tensor_mesh(tmp_path):
  original = tiny_hf_model("qwen2", tied=False)
  hf_dir = save_hf_dir(original, str(tmp_path / "hf"))
  mesh = sharding.device_mesh(data=1, fsdp=2, tensor=4)
  cfg = import_hf.read_config(hf_dir)
  params = import_hf.load_params(hf.SafetensorsReader(hf_dir), cfg, mesh)

  # [layers, embed, heads, head_dim]: the scanned layers' axis is never sharded.
  q_kernel = params["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q_kernel.sharding.mesh.shape == {"data": 1, "fsdp": 2, "tensor": 4}
  assert not q_kernel.sharding.is_fully_replicated
  assert q_kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert len({shard.device for shard in q_kernel.addressable_shards}) == 8

  ids, mask, positions = padded_batch()
  ours = our_logits(None, cfg, ids, mask, positions, params=params)
  diff = max_diff_at_tokens(ours, torch_logits(original, ids, mask, positions), mask)
  print(f"\n[qwen2 on a (1,2,4) mesh] import: max |logits ours - torch| = {diff:.3g}")
  assert diff < 1e-4
