"""FLOPs per token, MFU, and the memory estimate and check that refuses a config that
cannot fit."""
import jax
import numpy as np
import pytest

from mind_jax import perf, sharding, state as state_lib
from mind_jax.config import default_config
from mind_jax.models import lora
from mind_jax.models.decoder import DecoderConfig


def test_flops_per_token_by_hand():
  cfg = DecoderConfig(vocab_size=256, vocab_pad_multiple=128, hidden_size=64,
                      intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, tie_embeddings=True)
  # Per layer: q 64*64, k and v 64*32 each, o 64*64, MLP 3*64*128; the head 256*64.
  layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128
  n = 2 * layer + 256 * 64
  assert perf.matmul_params(cfg) == n
  assert perf.flops_per_token(cfg, seq_len=100) == 6 * n + 12 * 2 * 4 * 16 * 100
  assert perf.mfu(cfg, 100, tokens_per_s=1000, num_devices=2, peak_per_device=1e9) == \
      pytest.approx(perf.flops_per_token(cfg, 100) * 1000 / 2e9)
  assert perf.mfu(cfg, 100, 1000, 1, None) is None


def test_peak_flops_lookup_and_override():
  class Fake:
    device_kind = "TPU v5 lite"
  assert perf.peak_flops_per_device(Fake()) == 197e12
  Fake.device_kind = "cpu"
  assert perf.peak_flops_per_device(Fake()) is None
  assert perf.peak_flops_per_device(Fake(), override=5e10) == 5e10


def _config(mesh_shape=(1, 1, 1), **model):
  config = default_config()
  for key, value in model.items():
    config.model[key] = value
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
  return config


def _estimate(mesh_shape, **model):
  config = _config(mesh_shape, **model)
  config.train.batch_size, config.train.seq_len = 8, 128
  return perf.estimate_memory(config, dict(zip(("data", "fsdp", "tensor"), mesh_shape)))


def test_memory_estimate_shards_params_and_refuses_what_cannot_fit():
  one = _estimate((1, 1, 1), hidden_size=128, intermediate_size=256)
  eight = _estimate((1, 8, 1), hidden_size=128, intermediate_size=256)
  assert one["params"] > 0 and one["optimizer"] == pytest.approx(2 * one["params"], rel=0.01)
  assert eight["params"] < one["params"] / 4  # FSDP over 8 devices splits the weights
  assert eight["activations"] < one["activations"] / 4  # and the batch
  remat = _estimate((1, 1, 1), hidden_size=128, intermediate_size=256, remat="full")
  assert remat["activations"] < one["activations"]
  assert one["total"] == pytest.approx(sum(one[row] for row in perf.ESTIMATE_ROWS))
  perf.check_memory(one, limit=one["total"] * 1.01)
  with pytest.raises(MemoryError, match=r"needs about .* GiB per device \(params"):
    perf.check_memory(one, limit=one["total"] / 2)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_estimated_state_is_the_real_sharded_state(lora_rank):
  """params + optimizer of the estimate (mesh arithmetic, no devices) equal the bytes one
  device holds of the train state state.py builds on a real 8-device FSDP x tensor mesh."""
  config = _config((1, 4, 2), hidden_size=128, intermediate_size=256, num_heads=4,
                   num_kv_heads=2, head_dim=32, dtype="bfloat16")
  config.lora.rank, config.lora.base_dtype = lora_rank, "bfloat16"
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:8])
  cfg = DecoderConfig.from_config(config.model)
  optimizer = state_lib.make_optimizer(config.optim, 10)
  lora_config = lora.LoraConfig.from_config(config.lora)
  abstract, shardings = state_lib.abstract_state_and_shardings(cfg, optimizer, mesh,
                                                               config.mesh.rules, lora_config)

  def device_bytes(tree, tree_shardings):
    return sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
               for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(tree_shardings)))

  trainable = device_bytes(abstract.params, shardings.params)
  frozen = device_bytes(abstract.frozen, shardings.frozen) if lora_rank else 0
  estimate = perf.estimate_memory(config, dict(mesh.shape))
  assert estimate["params"] == pytest.approx(trainable + frozen)
  assert estimate["gradients"] == pytest.approx(trainable)
  # AdamW's moments, plus a few scalar counts the estimate leaves out.
  assert estimate["optimizer"] == pytest.approx(
      device_bytes(abstract.opt_state, shardings.opt_state), rel=1e-3)
  assert (frozen > 0) == bool(lora_rank) and frozen != trainable


def test_accumulation_and_rows_move_the_estimate_where_they_should():
  config = _config()
  config.method = "mind"
  config.train.batch_size, config.train.seq_len = 8, 256
  base = perf.estimate_memory(config, dict(data=1, fsdp=1, tensor=1))
  config.optim.grad_accum_steps = 4  # a quarter of the questions per pass, one more copy
  accumulated = perf.estimate_memory(config, dict(data=1, fsdp=1, tensor=1))
  assert base["accumulator"] == 0 and accumulated["accumulator"] == base["gradients"]
  assert accumulated["logits"] == pytest.approx(base["logits"] / 4)
  config.train.packing, config.train.packed_rows = True, 3  # 3 rows instead of 2 x K
  packed = perf.estimate_memory(config, dict(data=1, fsdp=1, tensor=1))
  assert packed["activations"] < accumulated["activations"] / 4
  # The inertia table [N, K] splits over the batch shards; the TA itself is replicated.
  config.sizing.num_examples = 100_000
  one = perf.estimate_memory(config, dict(data=1, fsdp=1, tensor=1))["TA + inertia"]
  eight = perf.estimate_memory(config, dict(data=8, fsdp=1, tensor=1))["TA + inertia"]
  table = 2 * 100_000 * config.sizing.num_perspectives * 4
  assert one - eight == pytest.approx(table * 7 / 8)
