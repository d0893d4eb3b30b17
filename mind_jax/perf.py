"""FLOPs, MFU and memory accounting: numbers a run prints before and while it trains.

FLOPs per trained token (PaLM, Chowdhery et al. 2022, appendix B):
    6 * N  +  12 * L * n_heads * head_dim * T
N counts the parameters that take part in a matmul (every layer weight and the
LM head; not the embedding lookup), T the sequence length; the second term is
the attention scores and their use on the values, forward and backward, with no
discount for the causal mask. MFU = achieved model FLOP/s / (peak FLOP/s of one
device * devices).

Memory estimate per device, before compiling: params, gradients and optimizer
state from the actual shardings, plus activations after Korthikanti et al.
(2022): per layer and token, 34 * hidden + 5 * n_heads * T values of 2 bytes
without recomputation; with remat only each layer's input is kept.
"""
from __future__ import annotations

import logging

import jax
import numpy as np

from mind_jax.models.decoder import DecoderConfig

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets. `device_kind`
# substrings, most specific first. Others (CPUs): set train.peak_flops_per_device.
PEAK_FLOPS_BY_DEVICE_KIND = (
    ("TPU v5 lite", 197e12),   # v5e
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6", 918e12),        # Trillium
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("H200", 989e12),
    ("H100", 989e12),          # SXM
    ("A100", 312e12),
)
ACTIVATION_BYTES = 2  # the formula's 16-bit activations; fp32 compute doubles it


def matmul_params(cfg: DecoderConfig) -> int:
  """Parameters that multiply activations: all but the embedding lookup and norms."""
  head = cfg.padded_vocab_size * cfg.hidden_size
  norms = (2 * cfg.num_layers + 1) * cfg.hidden_size
  return cfg.num_params(include_embeddings=False) - norms + head


def flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
  attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return 6.0 * matmul_params(cfg) + attention


def peak_flops_per_device(device: jax.Device, override: float = 0.0) -> float | None:
  if override > 0:
    return override
  for kind, flops in PEAK_FLOPS_BY_DEVICE_KIND:
    if kind.lower() in device.device_kind.lower():
      return flops
  return None


def mfu(cfg: DecoderConfig, seq_len: int, tokens_per_s: float, num_devices: int,
        peak_per_device: float | None) -> float | None:
  if not peak_per_device:
    return None
  return flops_per_token(cfg, seq_len) * tokens_per_s / (peak_per_device * num_devices)


def _bytes_per_device(tree, shardings) -> float:
  total = 0.0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shard_shape = sharding.shard_shape(leaf.shape) if leaf.shape else ()
    total += float(np.prod(shard_shape)) * leaf.dtype.itemsize
  return total


def estimate_memory(cfg: DecoderConfig, abstract_state, state_shardings,
                    tokens_per_device: int, seq_len: int) -> dict[str, float]:
  """Bytes per device: params, gradients, optimizer state, activations, total."""
  params = _bytes_per_device(abstract_state.params, state_shardings.params)
  optimizer = _bytes_per_device(abstract_state.opt_state, state_shardings.opt_state)
  scale = ACTIVATION_BYTES * (2 if cfg.dtype == "float32" else 1) / 2
  if cfg.remat == "none":
    per_token_layer = (34 * cfg.hidden_size + 5 * cfg.num_heads * seq_len) * scale
  else:
    per_token_layer = 2 * cfg.hidden_size * scale  # the layer input (and its gradient)
  activations = tokens_per_device * cfg.num_layers * per_token_layer
  logits = tokens_per_device * cfg.padded_vocab_size * 4 * 2  # fp32 logits and their grad
  out = dict(params=params, gradients=params, optimizer=optimizer,
             activations=activations + logits)
  out["total"] = sum(out.values())
  return out


def device_memory_limit(device: jax.Device, override_gb: float = 0.0) -> float | None:
  if override_gb > 0:
    return override_gb * 2**30
  try:
    stats = device.memory_stats() or {}
  except Exception:  # CPU backends have no memory stats
    stats = {}
  return stats.get("bytes_limit")


def check_memory(estimate: dict[str, float], limit: float | None) -> None:
  """Log the estimate; refuse a config that cannot fit, showing the numbers."""
  gib = {k: v / 2**30 for k, v in estimate.items()}
  line = ", ".join(f"{k} {v:.2f} GiB" for k, v in gib.items())
  logging.info("memory estimate per device: %s%s", line,
               f" (device limit {limit / 2**30:.2f} GiB)" if limit else "")
  if limit and estimate["total"] > limit:
    raise MemoryError(
        f"this config needs about {gib['total']:.2f} GiB per device ({line}) but a device "
        f"has {limit / 2**30:.2f} GiB: shard more (mesh.fsdp), lower train.batch_size or "
        f"seq_len, or set model.remat")


def log_compiled_memory(name: str, compiled) -> None:
  """XLA's own account of a compiled step, printed before it first runs."""
  try:
    mem = compiled.memory_analysis()
  except Exception:  # not every backend reports it
    mem = None
  if mem is None:
    return
  logging.info("%s compiled memory per device: arguments %.1f MiB, outputs %.1f MiB, "
               "temporaries %.1f MiB, aliased %.1f MiB", name,
               mem.argument_size_in_bytes / 2**20, mem.output_size_in_bytes / 2**20,
               mem.temp_size_in_bytes / 2**20, mem.alias_size_in_bytes / 2**20)
