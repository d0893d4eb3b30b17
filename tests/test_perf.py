"""FLOPs per token, MFU and the memory check that refuses a config that cannot fit."""
import jax
import pytest

from mind_jax import perf, sharding, state as state_lib
from mind_jax.config import default_config
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


def _estimate(mesh_shape, **model):
  config = default_config()
  for key, value in model.items():
    config.model[key] = value
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:mesh_shape[0] * mesh_shape[1] *
                                                       mesh_shape[2]])
  cfg = DecoderConfig.from_config(config.model)
  optimizer = state_lib.make_optimizer(config.optim, 10)
  abstract, shardings = state_lib.abstract_state_and_shardings(cfg, optimizer, mesh,
                                                               config.mesh.rules)
  return perf.estimate_memory(cfg, abstract, shardings, tokens_per_device=1024, seq_len=128)


def test_memory_estimate_shards_params_and_refuses_what_cannot_fit():
  one = _estimate((1, 1, 1), hidden_size=128, intermediate_size=256)
  eight = _estimate((1, 8, 1), hidden_size=128, intermediate_size=256)
  assert one["params"] > 0 and one["optimizer"] == pytest.approx(2 * one["params"], rel=0.01)
  assert eight["params"] < one["params"] / 4  # FSDP over 8 devices splits the weights
  remat = _estimate((1, 1, 1), hidden_size=128, intermediate_size=256, remat="full")
  assert remat["activations"] < one["activations"]
  perf.check_memory(one, limit=one["total"] * 1.01)
  with pytest.raises(MemoryError, match=r"needs about .* GiB per device \(params"):
    perf.check_memory(one, limit=one["total"] / 2)
