"""FLOPs, MFU and memory accounting: numbers a run prints before and while it trains.

`python -m mind_jax.perf --config configs/X.py [--config.a.b=v ...]` prints the per-device
memory estimate of a config on its target machine (sizing.num_devices devices of
train.device_memory_gb GiB) and ends with "fits" (exit 0) or "does not fit" (exit 1).

FLOPs per trained token (PaLM, Chowdhery et al. 2022, appendix B):
    6 * N  +  12 * L * n_heads * head_dim * T
N counts the parameters that take part in a matmul (every layer weight and the
LM head; not the embedding lookup), T the sequence length; the second term is
the attention scores and their use on the values, forward and backward, with no
discount for the causal mask. MFU = achieved model FLOP/s / (peak FLOP/s of one
device * devices).

Memory per device of one train step (SFT or MIND), before compiling, from the
config and the mesh shape alone, so a config can be sized for a machine that is
not at hand (`python -m mind_jax.perf --config X`; `train` checks the same
estimate before it compiles; on the CPU backend, whose devices share the host's RAM, it
checks their sum against the RAM available, and XLA's account of the compiled step again
before it runs):
  params, gradients, accumulator, optimizer  from the decoder's real parameter
      shapes and logical axes, divided by the mesh axes the sharding rules give
      them (mind_jax/sharding.py). Full fine-tuning trains every weight in
      model.param_dtype with AdamW's two moments in that dtype; gradient
      accumulation (optim.grad_accum_steps > 1) adds one more copy of the trainable
      weights (the scan's carry). LoRA (config.lora) freezes the base in
      lora.base_dtype and trains fp32 adapters only.
  weight copies  the compute-dtype copy of weights XLA makes when the stored dtype
      differs, and, with FSDP, the gathered weights of two layers and the embeddings.
  activations  what the backward pass keeps, counted per token and layer for this
      decoder in the manner of Korthikanti et al. 2022 ("Reducing Activation
      Recomputation in Large Transformer Models", section 4.1): see
      `layer_activation_bytes`; remat keeps less (only each layer's input with
      "full") but then recomputes one layer at a time, whose activations and
      attention scores are live once.
  logits  [tokens, vocab] in fp32 and their fp32 gradient (plus the compute-dtype
      logits of the head's matmul when it computes in bf16), of one loss chunk only
      (train.loss_chunk_tokens positions of every row: losses.chunked_token_nll); MIND
      adds the answer log-probabilities of the consistency JSD.
  TA + inertia  the Teaching Assistant's params, gradients and optimizer state, the
      inertia table [N, K] included (sharded over the "examples" rule).
  batch  the step's input arrays.
`benchmarks/estimator_vs_xla.py` compares the total with XLA's compiled account.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AbstractMesh

from mind_jax import faults, host_memory, inertia, sharding
from mind_jax import state as state_lib
from mind_jax import ta as ta_lib
from mind_jax.models import decoder, lora
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
GIB = 2**30
# Arrays of a packed MIND micro-batch, [M, R, T] int32 each (mind_jax/data/packing.py):
# ids, targets, weights, positions, segments, slots.
PACKED_ARRAYS = 6
# The padded MIND batch's [B, K, T] int32 arrays (input_ids, attention/loss/answer masks)
# and the SFT batch's [B, T] ones (mind_jax/step.py BATCH_KEYS).
PADDED_ARRAYS, SFT_ARRAYS = 4, 3
ESTIMATE_ROWS = ("params", "gradients", "accumulator", "optimizer", "weight copies",
                 "activations", "logits", "TA + inertia", "batch")


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


# ------------------------------------------------------------------ mesh arithmetic


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  """{data, fsdp, tensor} sizes of config.mesh on `num_devices` (-1 takes the rest), as
  sharding.make_mesh resolves them, without the devices."""
  shape = {axis: int(mesh_config[axis]) for axis in sharding.MESH_AXES}
  known = math.prod(size for size in shape.values() if size != -1)
  for axis, size in shape.items():
    if size == -1:
      shape[axis] = num_devices // known
  if math.prod(shape.values()) != num_devices:
    raise ValueError(f"mesh {dict(mesh_config)} does not cover {num_devices} devices")
  return shape


def _abstract_mesh(shape: Mapping[str, int]) -> AbstractMesh:
  return AbstractMesh(tuple(shape[a] for a in sharding.MESH_AXES), sharding.MESH_AXES)


def shard_elements(shape, axes, mesh: AbstractMesh, rules) -> float:
  """Elements of one device's shard of an array with these logical axes (None: replicated)."""
  if axes is None or not shape:
    return float(math.prod(shape))
  spec = sharding.logical_to_spec(axes, shape, mesh, rules)
  return float(np.prod(jax.sharding.NamedSharding(mesh, spec).shard_shape(tuple(shape))))


def dtype_bytes(dtype) -> float:
  """Bytes per element, sub-byte types (int4, uint4) as fractions."""
  dtype = np.dtype(dtype)
  if dtype.kind in "iu" and dtype.itemsize == 1:
    return jax.numpy.iinfo(dtype).bits / 8
  return dtype.itemsize


def tree_bytes_per_device(tree, mesh: AbstractMesh, rules, logical_axes=None) -> float:
  """Per-device bytes of an abstract pytree whose every leaf has `logical_axes` (None:
  replicated)."""
  return float(sum(shard_elements(leaf.shape, logical_axes, mesh, rules)
                   * dtype_bytes(leaf.dtype) for leaf in jax.tree.leaves(tree)))


def tree_bytes(shapes, axes, mesh: AbstractMesh, rules) -> float:
  """Per-device bytes of an abstract tree whose leaves carry logical axes (a matching
  tree of tuples; None or () replicated), as sharding.tree_shardings places them."""
  sizes = jax.tree.map(
      lambda leaf, names: shard_elements(leaf.shape, names or None, mesh, rules)
      * dtype_bytes(leaf.dtype), shapes, axes)
  return float(sum(jax.tree.leaves(sizes)))


def student_bytes(cfg: DecoderConfig, lora_config, mesh: AbstractMesh, rules,
                  accumulate: bool) -> dict[str, float]:
  """Per-device params, gradients, accumulator, optimizer and weight copies, from the
  trees the train state holds: all decoder params, or with LoRA the adapters and the
  frozen base (mind_jax/models/lora.py; 4-bit kernels at half a byte plus their scales)."""
  compute = 4 if cfg.dtype == "float32" else 2
  lora_config = lora.LoraConfig.from_config(lora_config)
  if lora_config.enabled:
    adapters, frozen, adapter_axes, frozen_axes = lora.abstract(cfg, lora_config)
    trainable = tree_bytes(adapters, adapter_axes, mesh, rules)
    frozen_bytes = tree_bytes(frozen, frozen_axes, mesh, rules)
    # A base stored in another dtype than the compute dtype is cast whole (as full
    # fine-tuning's master weights are); 4-bit kernels are dequantized a layer at a time
    # (nf4 is counted for bf16 compute, QLoRA's setting).
    stored = 4 if lora_config.base_dtype == "float32" else 2
    copies = frozen_bytes * compute / stored if stored != compute else 0.0
    if lora_config.base_dtype == "nf4":
      copies += 2 * _layer_params(cfg) * compute / (mesh.shape["fsdp"] * mesh.shape["tensor"])
  else:
    shapes, axes = decoder.abstract_params(cfg)
    trainable, frozen_bytes = tree_bytes(shapes, axes, mesh, rules), 0.0
    stored = 4 if cfg.param_dtype == "float32" else 2
    copies = trainable * compute / stored if stored != compute else 0.0
  copies += _gathered_weights(cfg, mesh, compute)
  # Gradients have the trainable params' dtype (optax/JAX); the accumulator is the
  # micro-batch scan's carry of the same shape; AdamW keeps two moments alike.
  return {"params": frozen_bytes + trainable, "gradients": trainable,
          "accumulator": trainable if accumulate else 0.0, "optimizer": 2 * trainable,
          "weight copies": copies}


def _layer_params(cfg: DecoderConfig) -> float:
  """Parameters of one decoder layer."""
  return (cfg.num_params(include_embeddings=False) - cfg.hidden_size) / cfg.num_layers


def _gathered_weights(cfg: DecoderConfig, mesh: AbstractMesh, compute: int) -> float:
  """FSDP gathers a layer's weights before its matmuls: two layers at a time (the one
  running and the next, prefetched), and the embedding table and LM head whole."""
  if mesh.shape["fsdp"] == 1:
    return 0.0
  layer = _layer_params(cfg)
  tables = cfg.padded_vocab_size * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)
  return (2 * layer + tables) * compute / mesh.shape["tensor"]


# ------------------------------------------------------------------ activations


def layer_activation_bytes(cfg: DecoderConfig, keys: int, tensor: int) -> float:
  """Bytes one token keeps for the backward pass of one decoder layer (no remat), after
  Korthikanti et al. (2022) section 4.1, written out for this decoder (RMSNorm, grouped-
  query attention with the custom backward of models/decoder.py, SwiGLU, no dropout):
    4h        the layer input, its normed copy, the residual after attention, its
              normed copy (the MLP input)
    (2N + 2Kv) d   q and k after RoPE, v, and the attention output (o_proj's input)
    4f        gate, up, silu(gate) and silu(gate) * up (down_proj's input)
    N * S     the attention probabilities over S keys
  all in the compute dtype; heads and the MLP width are split over the tensor axis.
  Korthikanti's GPT layer (dropout, a 4h GELU MLP, full attention heads) is 34h + 5 N S
  bytes, the same accounting; this one gives 59h + 2 N S bytes for Qwen2.5-1.5B in bf16."""
  b = 4 if cfg.dtype == "float32" else 2
  h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  heads = (2 * cfg.num_heads + 2 * cfg.num_kv_heads) * d
  return b * (4 * h + (heads + 4 * f + cfg.num_heads * keys) / tensor)


def activation_bytes(cfg: DecoderConfig, rows: float, seq_len: int, tensor: int) -> float:
  """Per-device activations of the student over `rows` sequences of seq_len tokens."""
  b = 4 if cfg.dtype == "float32" else 2
  tokens = rows * seq_len
  one_layer = layer_activation_bytes(cfg, seq_len, tensor)
  h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  if cfg.remat == "none":
    kept = cfg.num_layers * one_layer
  elif cfg.remat == "full":  # each layer's input only
    kept = cfg.num_layers * b * h
  else:  # "dots": matmul outputs (q, k, v, o, gate, up, down) and the layer input
    kept = cfg.num_layers * b * (3 * h + ((cfg.num_heads + 2 * cfg.num_kv_heads) * d
                                           + 2 * f) / tensor)
  # Live once: the layer being differentiated (recomputed under remat), the gradient
  # flowing through the residual stream (2h), and the attention backward's fp32 scores
  # and their gradient over [N, T, S] (the custom vjp of models/decoder.py).
  working = one_layer + 2 * b * h + 8 * cfg.num_heads * seq_len / tensor
  if cfg.remat == "none":
    working -= one_layer  # already counted among the kept layers
  mask = seq_len  # the [T, S] bool attention mask of every row, shared by the layers
  return tokens * (kept + working + mask)


def loss_chunk_positions(train_config) -> int:
  """Positions of every row whose logits exist at once: train.loss_chunk_tokens (the loss
  makes them a chunk at a time, losses.chunked_token_nll), or the whole sequence."""
  chunk = train_config.loss_chunk_tokens
  return chunk if 0 < chunk < train_config.seq_len else train_config.seq_len


def logits_bytes(cfg: DecoderConfig, tokens: float, tensor: int) -> float:
  """fp32 logits and their fp32 gradient, plus the bf16 logits of the head's matmul, of
  `tokens` (one loss chunk's, loss_chunk_positions, per row)."""
  per_entry = 8 + (2 if cfg.dtype != "float32" else 0)
  return tokens * cfg.padded_vocab_size / tensor * per_entry


def answer_bytes(cfg: DecoderConfig, questions: float, num_perspectives: int,
                 answer_tokens: int, tensor: int) -> float:
  """The consistency JSD's fp32 [q, A, V] arrays: per perspective the gathered answer
  logits, their log-softmax, probabilities and gradient (4K), and per pair the mixture
  log m that losses.pairwise_consistency computes pair by pair (K(K-1)/2). On CPU XLA
  holds 57 such arrays for K=8 where this counts 60."""
  k = num_perspectives
  arrays = 4 * k + k * (k - 1) // 2
  return questions * answer_tokens * cfg.padded_vocab_size / tensor * 4 * arrays


# ------------------------------------------------------------------ the whole step


@dataclasses.dataclass(frozen=True)
class MindShape:
  """What a MIND step's memory needs beyond the config: the records' K, and the TA's
  abstract params and optimizer state (None for the weightings without a TA)."""
  num_perspectives: int
  ta_params: Any = None
  ta_opt_state: Any = None

  @classmethod
  def from_state(cls, abstract_state, num_perspectives: int) -> "MindShape":
    """From a built MIND task's abstract train state (mind_jax.train)."""
    return cls(num_perspectives, abstract_state.ta_params, abstract_state.ta_opt_state)

  @classmethod
  def from_sizing(cls, config) -> "MindShape":
    """From config.sizing (N, K, E), through the TA's and its optimizer's own init."""
    z = config.sizing
    if config.mind.weighting != "ta":
      return cls(z.num_perspectives)
    ta_config = ta_lib.TAConfig.from_config(config.ta)
    params = jax.eval_shape(lambda: ta_lib.init_ta_params(
        ta_config, z.embed_dim, z.num_perspectives, jax.random.PRNGKey(0)))
    optimizer = state_lib.make_ta_optimizer(config, z.num_examples, z.num_perspectives)
    return cls(z.num_perspectives, params, jax.eval_shape(optimizer.init, params))


def micro_batch_rows(config, num_perspectives: int) -> int:
  """Sequences of train.seq_len tokens one micro-batch sends through the student: SFT
  B/M, padded MIND (B/M) * K, packed MIND train.packed_rows (0, chosen at start-up, is
  at most one row per rationale: (B/M) * K)."""
  questions = config.train.batch_size // config.optim.grad_accum_steps
  if config.method != "mind":
    return questions
  if config.train.packing and config.train.packed_rows > 0:
    return config.train.packed_rows
  return questions * num_perspectives


def estimate_memory(config, mesh_shape: Mapping[str, int], model_config: DecoderConfig = None,
                    mind: MindShape | None = None) -> dict[str, float]:
  """Bytes per device of one train step: the rows of ESTIMATE_ROWS, and "total".

  mesh_shape: {data, fsdp, tensor} sizes (mesh_shape()); model_config: the run's model
  (default: config.model); mind: for method "mind" (default: MindShape.from_sizing)."""
  cfg = model_config or DecoderConfig.from_config(config.model)
  mesh = _abstract_mesh(mesh_shape)
  rules = config.mesh.rules
  batch_shards = mesh_shape["data"] * mesh_shape["fsdp"]
  tensor = mesh_shape["tensor"]
  t = config.train
  micro = config.optim.grad_accum_steps
  is_mind = config.method == "mind"
  if is_mind and mind is None:
    mind = MindShape.from_sizing(config)
  k = mind.num_perspectives if is_mind else 1
  rows = micro_batch_rows(config, k) / batch_shards
  out = dict.fromkeys(ESTIMATE_ROWS, 0.0)
  out.update(student_bytes(cfg, config.lora, mesh, rules, accumulate=micro > 1))
  out["activations"] = activation_bytes(cfg, rows, t.seq_len, tensor)
  out["logits"] = logits_bytes(cfg, rows * loss_chunk_positions(t), tensor)
  if not is_mind:
    out["batch"] = t.batch_size / batch_shards * t.seq_len * 4 * SFT_ARRAYS
  else:
    out["logits"] += _mind_answer_bytes(config, cfg, k, batch_shards, tensor)
    out["TA + inertia"] = _ta_bytes(mind, mesh, rules)
    out["batch"] = _mind_batch_bytes(config, rows, k, batch_shards)
  out["total"] = sum(out[row] for row in ESTIMATE_ROWS)
  return out


def _mind_answer_bytes(config, cfg, k: int, batch_shards: int, tensor: int) -> float:
  """The answer arrays of one micro-batch's questions, split over the batch shards as
  the question arrays are (padded: [B, K, ...]; packed: answer_rows [M, Bm, K, A])."""
  n = config.mind
  if n.consistency_weight <= 0 or n.weighting == "single":
    return 0.0
  questions = config.train.batch_size // config.optim.grad_accum_steps / batch_shards
  return answer_bytes(cfg, questions, k, n.max_answer_tokens, tensor)


def _ta_bytes(mind: MindShape, mesh: AbstractMesh, rules) -> float:
  """TA params and their gradient (replicated), and its optimizer state: the inertia
  table split over its example rows (inertia.logical_axes, as the state's shardings; the
  modes without a table keep a [K] or [1] array), Adam and MultiSteps' accumulator
  replicated."""
  if mind.ta_params is None:
    return 0.0
  params = tree_bytes_per_device(mind.ta_params, mesh, rules)
  return 2 * params + tree_bytes(mind.ta_opt_state, inertia.logical_axes(mind.ta_opt_state),
                                 mesh, rules)


def _mind_batch_bytes(config, rows: float, k: int, batch_shards: int) -> float:
  """The step's inputs per device (every micro-batch of the step)."""
  t = config.train
  micro = config.optim.grad_accum_steps
  if t.packing:
    tokens = PACKED_ARRAYS * micro * rows * t.seq_len * 4
  else:
    tokens = PADDED_ARRAYS * t.batch_size / batch_shards * k * t.seq_len * 4
  return tokens


# ------------------------------------------------------------------ packing capacity


def sample_sequence_lengths(sizing, num: int, seq_len: int, rng: np.random.Generator
                            ) -> np.ndarray:
  """Token lengths of `num` sequences: prompt_tokens plus a log-normal rationale length
  of mean rationale_tokens_mean, clipped to [min, max]; at most seq_len (the record
  build drops longer ones)."""
  sigma = sizing.rationale_tokens_sigma
  mu = math.log(sizing.rationale_tokens_mean) - sigma**2 / 2  # the log-normal's mean
  rationale = np.clip(rng.lognormal(mu, sigma, num), sizing.rationale_tokens_min,
                      sizing.rationale_tokens_max)
  return np.minimum(sizing.prompt_tokens + rationale.astype(np.int64), seq_len)


def packing_check(config, num_perspectives: int) -> dict[str, float]:
  """Sampled micro-batches of (B/M) questions x K rationales packed as the step packs
  them (first-fit decreasing, mind_jax/data/packing.py): rows needed (mean, 99th
  percentile, worst) against train.packed_rows, and the share that would overflow."""
  from mind_jax.data import packing
  z, t = config.sizing, config.train
  questions = t.batch_size // config.optim.grad_accum_steps
  rng = np.random.default_rng(0)
  needed = np.array([
      len(packing.first_fit_decreasing(
          list(sample_sequence_lengths(z, questions * num_perspectives, t.seq_len, rng)),
          t.seq_len)) for _ in range(z.packing_samples)])
  return dict(rows=t.packed_rows, mean=float(needed.mean()),
              p99=float(np.percentile(needed, 99)), worst=float(needed.max()),
              overflow=float(np.mean(needed > t.packed_rows)))


# ------------------------------------------------------------------ the check


def device_memory_limit(device: jax.Device, override_gb: float = 0.0) -> float | None:
  if override_gb > 0:
    return override_gb * GIB
  try:
    stats = device.memory_stats() or {}
  except Exception:  # CPU backends have no memory stats
    stats = {}
  return stats.get("bytes_limit")


# What a config that does not fit can turn down; every refusal names them.
MEMORY_KNOBS = ("shard more (mesh.fsdp), lower train.batch_size, train.packed_rows or "
                "train.seq_len, set model.remat, lower train.loss_chunk_tokens, or raise "
                "optim.grad_accum_steps")
HOST_CHECK = "free host RAM x train.host_memory_fraction; 0 skips this check"


def check_memory(estimate: dict[str, float], limit: float | None) -> None:
  """Log the estimate; refuse a config that cannot fit, showing the numbers."""
  gib = {k: v / GIB for k, v in estimate.items()}
  line = ", ".join(f"{k} {v:.2f} GiB" for k, v in gib.items())
  logging.info("memory estimate per device: %s%s", line,
               f" (device limit {limit / GIB:.2f} GiB)" if limit else "")
  if limit and estimate["total"] > limit:
    raise faults.DoesNotFit(
        f"this config needs about {gib['total']:.2f} GiB per device ({line}) but a device "
        f"has {limit / GIB:.2f} GiB: {MEMORY_KNOBS}")


def host_memory_available(device: jax.Device, train_config) -> float | None:
  """Host RAM a run on the CPU backend may plan to use now: host_memory.available_bytes()
  times train.host_memory_fraction. None where the host is not checked: accelerators
  (device_memory_limit is), train.device_memory_gb set, the fraction 0, nothing known."""
  if (device.platform != "cpu" or train_config.device_memory_gb > 0
      or train_config.host_memory_fraction <= 0):
    return None
  available = host_memory.available_bytes()
  return None if available is None else available * train_config.host_memory_fraction


def check_host_memory(estimate: dict[str, float], available: float, devices: int) -> None:
  """Before compiling on the CPU backend: its devices are slices of one host, so this
  process's `devices` of the mesh each need the per-device estimate (an array replicated
  over them is a copy on each), together out of `available` host RAM."""
  need = estimate["total"] * devices
  logging.info("host memory: about %.2f GiB for %d CPU device(s), %.2f GiB available",
               need / GIB, devices, available / GIB)
  if need > available:
    line = ", ".join(f"{k} {v / GIB:.2f}" for k, v in estimate.items() if k != "total")
    raise faults.DoesNotFit(
        f"this config needs about {need / GIB:.2f} GiB of host RAM ({devices} CPU device(s) "
        f"x {estimate['total'] / GIB:.2f} GiB estimated each: {line}) but "
        f"{available / GIB:.2f} GiB is available ({HOST_CHECK}): {MEMORY_KNOBS}")


def check_compiled_host_memory(name: str, compiled, available: float, devices: int) -> None:
  """After compiling on the CPU backend, before the step first runs: XLA's account of the
  memory the step adds on each of this process's `devices` (temporaries + outputs -
  aliased; its arguments, the state and the batch, are in memory already, so they are
  out of `available`), together against the host RAM still available."""
  mem = _memory_analysis(compiled)
  if mem is None:
    return
  per_device = mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
  need = per_device * devices
  if need > available:
    raise faults.DoesNotFit(
        f"the compiled {name} needs {need / GIB:.2f} GiB more host RAM ({devices} CPU "
        f"device(s) x (temporaries {mem.temp_size_in_bytes / GIB:.2f} + outputs "
        f"{mem.output_size_in_bytes / GIB:.2f} - aliased {mem.alias_size_in_bytes / GIB:.2f}"
        f" GiB), XLA's account) but {available / GIB:.2f} GiB is available ({HOST_CHECK}): "
        f"{MEMORY_KNOBS}")


def _memory_analysis(compiled):
  """compiled.memory_analysis(), or None where the backend reports nothing."""
  try:
    return compiled.memory_analysis()
  except Exception:  # not every backend reports it
    return None


def log_compiled_memory(name: str, compiled) -> None:
  """XLA's own account of a compiled step, printed before it first runs."""
  mem = _memory_analysis(compiled)
  if mem is None:
    return
  logging.info("%s compiled memory per device: arguments %.1f MiB, outputs %.1f MiB, "
               "temporaries %.1f MiB, aliased %.1f MiB", name,
               mem.argument_size_in_bytes / 2**20, mem.output_size_in_bytes / 2**20,
               mem.temp_size_in_bytes / 2**20, mem.alias_size_in_bytes / 2**20)


def compiled_peak_bytes(compiled) -> float | None:
  """XLA's per-device bytes of a compiled step: arguments + outputs - aliased (outputs
  written into donated inputs) + temporaries; None where the backend reports nothing."""
  mem = _memory_analysis(compiled)
  if mem is None:
    return None
  return float(mem.argument_size_in_bytes + mem.output_size_in_bytes
               - mem.alias_size_in_bytes + mem.temp_size_in_bytes)


# ------------------------------------------------------------------ CLI


def describe(config, cfg: DecoderConfig, shape: Mapping[str, int], num_perspectives: int) -> str:
  """Two lines: what is trained, and how the step's tokens are laid out."""
  lora = config.lora
  trained = (f"LoRA rank {lora.rank} on {', '.join(lora.target_modules)}, base in "
             f"{lora.base_dtype}" if lora.rank else
             f"full fine-tuning, {cfg.param_dtype} weights")
  t, micro = config.train, config.optim.grad_accum_steps
  shards = shape["data"] * shape["fsdp"]
  rows = micro_batch_rows(config, num_perspectives)
  layout = "packed" if config.method == "mind" and t.packing else "padded"
  questions = (f" of {t.batch_size // micro} questions x K={num_perspectives}"
               if config.method == "mind" else "")
  return (f"{cfg.family}, {cfg.num_params() / 1e9:.2f}B params; {trained}; {cfg.dtype} "
          f"compute, remat {cfg.remat}\n"
          f"mesh data={shape['data']} fsdp={shape['fsdp']} tensor={shape['tensor']}; "
          f"{micro} micro-batch(es){questions}, each {rows} {layout} rows of {t.seq_len} tokens "
          f"({rows / shards:g} per device)")


def assess(config, num_devices: int) -> dict:
  """The estimate of a config on its target, the device memory, the verdict (None: no
  device memory to judge against) and, for packed MIND, the packing check."""
  shape = mesh_shape(config.mesh, num_devices)
  cfg = DecoderConfig.from_config(config.model)
  mind = MindShape.from_sizing(config) if config.method == "mind" else None
  estimate = estimate_memory(config, shape, cfg, mind)
  limit = config.train.device_memory_gb * GIB
  packing = None
  if mind and config.train.packing and config.train.packed_rows > 0:
    packing = packing_check(config, mind.num_perspectives)
  return dict(shape=shape, model=cfg, num_perspectives=mind.num_perspectives if mind else 1,
              estimate=estimate, limit=limit, packing=packing,
              fits=estimate["total"] <= limit if limit else None)


def report(config, a: dict) -> str:
  """The CLI's text for assess()'s result, without the verdict line."""
  estimate, limit = a["estimate"], a["limit"]
  lines = [describe(config, a["model"], a["shape"], a["num_perspectives"]),
           "per-device memory estimate (GiB):"]
  lines += [f"  {row:<14} {estimate[row] / GIB:8.3f}" for row in ESTIMATE_ROWS]
  share = f" of {limit / GIB:.2f} ({estimate['total'] / limit:.0%})" if limit else ""
  lines.append(f"  {'total':<14} {estimate['total'] / GIB:8.3f}{share}")
  if a["packing"]:
    p = a["packing"]
    lines.append(f"packing: {config.sizing.packing_samples} sampled micro-batches need "
                 f"{p['mean']:.1f} rows on average, {p['p99']:g} at the 99th percentile, "
                 f"{p['worst']:g} at worst, of packed_rows={p['rows']} "
                 f"({p['overflow']:.1%} overflow)")
  return "\n".join(lines)


def main(argv) -> None:
  from absl import app
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required")
  a = assess(config, config.sizing.num_devices or jax.device_count())
  print(report(config, a))
  fits = a["fits"]
  if fits is None:
    print("no verdict: set train.device_memory_gb (GiB per device of the target)")
    raise SystemExit(2)
  print("fits" if fits else "does not fit")
  raise SystemExit(0 if fits else 1)


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags
  from mind_jax.config import parse_absl_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config file.",
                                            lock_config=True)
  app.run(main, flags_parser=parse_absl_flags)  # overrides checked as in every CLI
