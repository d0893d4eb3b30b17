"""Time our jitted train step against transformers' PyTorch LlamaForCausalLM on CPU.

Both sides train the same ~10M-parameter Llama (vocab 8192, hidden 256, 8
layers, 8 heads / 4 KV heads, SwiGLU 688) in fp32 on the same batch of random
tokens, with next-token cross-entropy on every token, AdamW (same lr, betas,
eps, weight decay on matrices only) and global-norm gradient clipping at 1.0.
The torch model starts from a copy of our initial params and both use a constant
learning rate, so their losses must agree step by step: that checks both sides
compute the same thing, not just similar shapes.

Timing: after warm-up steps (ours: after compilation, timed separately), the
measured steps of the two frameworks alternate (ours, torch, ours, torch...), so
that load from other processes on the machine hits both alike. Each step is
timed on its own and synchronously: torch on CPU is synchronous, and ours is
blocked on with `jax.block_until_ready` on the new state and the metrics. The
ratio is of median wall times; process CPU time and page faults per step are
shown beside them. The last line says how much CPU other processes took: on a
shared machine torch's OpenMP threads suffer most (a step can take 10x longer
when another process holds a core, as they spin-wait on each other), so then
compare the min column or rerun.

By default glibc malloc is set to keep freed memory (`mind_jax.host_memory`),
for both frameworks, before either does any work: without it XLA:CPU page-faults
its per-step temp buffer (0.7 GB here) in anew every step, and torch its own
buffers (see that module). `--malloc default` measures the stock allocator.

    python benchmarks/train_step_vs_torch.py              # ~40 s on 2 idle cores
    python benchmarks/train_step_vs_torch.py --steps 20 --malloc default
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import time

# Quieter logs; must be set before jax / transformers are imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from mind_jax import paths  # noqa: E402
from mind_jax import host_memory, sharding  # noqa: E402
from mind_jax.config import default_config  # noqa: E402
from mind_jax.models import hf  # noqa: E402
from mind_jax.models.decoder import DecoderConfig  # noqa: E402
from mind_jax.state import (abstract_state_and_shardings, init_state,  # noqa: E402
                            learning_rate_schedule, make_optimizer)
from mind_jax.step import jit_train_step  # noqa: E402

MODEL = dict(family="llama", vocab_size=8192, vocab_pad_multiple=128, hidden_size=256,
             intermediate_size=688, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=32,
             rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling="none",
             dtype="float32", param_dtype="float32", remat="none")
# A constant learning rate (no warm-up, a decay far beyond the run, end ratio 1) so
# that torch, with a plain constant lr, takes the same updates.
OPTIM = dict(learning_rate=1e-3, warmup_steps=0, decay_steps=1_000_000, end_lr_ratio=1.0,
             b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0, grad_accum_steps=1)
# Cores' worth of CPU that other processes may take while we measure before the
# report calls the timings noisy.
NOISY_OTHER_CORES = 0.2


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=10, help="measured steps per framework")
  p.add_argument("--warmup", type=int, default=4, help="unmeasured steps first (ours: after "
                 "compiling)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (XLA:CPU uses "
                 "one thread per visible core)")
  p.add_argument("--causal-block-size", type=int, default=64,
                 help="ours: model.causal_block_size (attention query blocks; 0: one block)")
  p.add_argument("--malloc", choices=("keep", "default"), default="keep",
                 help="keep: glibc keeps freed memory (mind_jax.host_memory); default: stock")
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--json", default="", help="also write the key numbers here")
  p.add_argument("--profile", default="", help="write a jax.profiler trace of the measured "
                 "steps of ours to this directory")
  return p.parse_args()


# ------------------------------------------------------------------------- ours

class JaxRun:
  """Our jitted train step, set up exactly as train.py does (mesh, shardings, donation)."""

  def __init__(self, batch_np, causal_block_size: int = 0):
    cfg = default_config()
    cfg.model.update(MODEL)
    cfg.optim.update(OPTIM)
    cfg.mesh.data = 1
    # Set on the DecoderConfig, so this runs whether or not config.model has the field.
    self.model_cfg = dataclasses.replace(DecoderConfig.from_config(cfg.model),
                                         causal_block_size=causal_block_size).validated()
    total = OPTIM["decay_steps"]
    optimizer = make_optimizer(cfg.optim, total)
    schedule = learning_rate_schedule(cfg.optim, total)
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    _, shardings = abstract_state_and_shardings(self.model_cfg, optimizer, mesh, cfg.mesh.rules)
    self.state = init_state(self.model_cfg, optimizer, 0, shardings)
    batch_sh = sharding.batch_sharding(mesh, cfg.mesh.rules, batch_np["input_ids"].shape)
    self.batch = {k: jax.device_put(v, batch_sh) for k, v in batch_np.items()}
    self.jitted = jit_train_step(self.model_cfg, optimizer, schedule, shardings, batch_sh)
    self.compiled = None

  def compile(self):
    t0 = time.perf_counter()
    lowered = self.jitted.lower(self.state, self.batch)
    t1 = time.perf_counter()
    self.compiled = lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1

  def step(self) -> float:
    self.state, metrics = self.compiled(self.state, self.batch)  # the old state is donated
    jax.block_until_ready((self.state, metrics))
    return float(metrics["loss"])


# ------------------------------------------------------------------------ torch

class TorchRun:
  """transformers' LlamaForCausalLM with the same config, a copy of our params, and the
  same optimizer: AdamW, decay on matrices only, global-norm clipping first."""

  def __init__(self, model_cfg: DecoderConfig, params, input_ids: np.ndarray):
    c = model_cfg
    hf = LlamaConfig(vocab_size=c.padded_vocab_size, hidden_size=c.hidden_size,
                     intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                     num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                     head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
                     rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                     max_position_embeddings=c.max_position_embeddings,
                     tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    hf._attn_implementation = "sdpa"  # transformers' default; said so the report is exact
    self.model = LlamaForCausalLM(hf)
    self.model.load_state_dict(self._state_dict(c, params), strict=True)
    self.model.train()
    decay = [q for q in self.model.parameters() if q.ndim >= 2]
    no_decay = [q for q in self.model.parameters() if q.ndim < 2]
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPTIM["weight_decay"]},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=OPTIM["learning_rate"], betas=(OPTIM["b1"], OPTIM["b2"]),
                                 eps=OPTIM["eps"])
    self.input_ids = torch.from_numpy(input_ids.astype(np.int64))

  @staticmethod
  def _state_dict(c: DecoderConfig, params) -> dict:
    sd = hf.hf_from_params(c, jax.device_get(params))
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}

  def step(self) -> float:
    # labels=input_ids: transformers shifts them; next-token CE averaged over all tokens.
    loss = self.model(input_ids=self.input_ids, labels=self.input_ids).loss
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), OPTIM["grad_clip"])
    self.opt.step()
    return loss.item()


# ------------------------------------------------------------------------ main

def _cpu_busy_total() -> tuple[float, float]:
  """(busy, total) jiffies of all CPUs since boot, from /proc/stat (Linux)."""
  try:
    with open("/proc/stat") as f:
      v = [float(x) for x in f.readline().split()[1:]]
  except OSError:
    return 0.0, 0.0
  idle = v[3] + v[4]
  return sum(v[:8]) - idle, sum(v[:8])


def main():
  args = parse_args()
  if args.malloc == "keep":
    # Before any jax or torch work: threads keep the malloc arena they first use.
    host_memory.keep_freed_memory()
  torch.set_num_threads(args.threads)
  rng = np.random.RandomState(0)
  ids = rng.randint(0, MODEL["vocab_size"], (args.batch, args.seq)).astype(np.int32)
  batch_np = dict(input_ids=ids, attention_mask=np.ones_like(ids), loss_mask=np.ones_like(ids))

  ours = JaxRun(batch_np, args.causal_block_size)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(ours.state.params))
  runs = {"ours": ours}
  if not args.skip_torch:
    runs["torch"] = TorchRun(ours.model_cfg, ours.state.params, ids)

  print(f"model: {n_params / 1e6:.2f}M params, {MODEL['num_layers']} layers, hidden "
        f"{MODEL['hidden_size']}, heads {MODEL['num_heads']}/{MODEL['num_kv_heads']}, vocab "
        f"{MODEL['vocab_size']}; batch {args.batch} x {args.seq}, fp32, AdamW + clip; "
        f"malloc: {args.malloc}")
  print(f"ours : causal_block_size={args.causal_block_size}, remat=none, state donated")
  print(f"ours : jax {jax.__version__}, {jax.devices()[0].platform} backend, XLA intra-op "
        f"threads = {len(os.sched_getaffinity(0))} visible cores, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  if "torch" in runs:
    print(f"torch: {torch.__version__}, intra-op threads {torch.get_num_threads()}, inter-op "
          f"{torch.get_num_interop_threads()}, attention "
          f"{runs['torch'].model.config._attn_implementation}")

  trace_s, compile_s = ours.compile()
  losses = {name: [] for name in runs}
  for name, run in runs.items():
    for _ in range(args.warmup):
      losses[name].append(run.step())

  wall = {name: [] for name in runs}
  cpu = {name: [] for name in runs}
  faults = {name: [] for name in runs}
  if args.profile:
    jax.profiler.start_trace(args.profile)
  busy0, total0 = _cpu_busy_total()
  own0 = time.process_time()
  t_start = time.perf_counter()
  for _ in range(args.steps):
    for name, run in runs.items():  # alternate, so background load hits both alike
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      c0, w0 = time.process_time(), time.perf_counter()
      losses[name].append(run.step())
      wall[name].append(time.perf_counter() - w0)
      cpu[name].append(time.process_time() - c0)
      faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  elapsed = time.perf_counter() - t_start
  busy1, total1 = _cpu_busy_total()
  own = time.process_time() - own0
  if args.profile:
    jax.profiler.stop_trace()

  tokens = args.batch * args.seq
  labels = {"ours": "ours (jax.jit)", "torch": "torch (transformers)"}
  print()
  print(f"{'':22s}{'median ms':>10s}{'mean ms':>9s}{'min ms':>8s}{'tokens/s':>10s}"
        f"{'CPU ms':>8s}{'faults':>8s}   {'loss: first':>11s}{'last':>9s}")
  for name in runs:
    w = wall[name]
    print(f"{labels[name]:22s}{statistics.median(w) * 1e3:10.1f}{statistics.mean(w) * 1e3:9.1f}"
          f"{min(w) * 1e3:8.1f}{tokens / statistics.median(w):10.0f}"
          f"{statistics.median(cpu[name]) * 1e3:8.1f}{statistics.median(faults[name]):8.0f}"
          f"   {losses[name][0]:11.5f}"
          f"{losses[name][-1]:9.5f}")
  print("(CPU ms: process CPU time per step, all threads; faults: minor page faults per step)")
  print(f"\nours: trace+lower {trace_s:.2f} s, compile {compile_s:.2f} s; "
        f"{args.warmup} warm-up + {args.steps} measured steps each")
  if "torch" in runs:
    ratio = statistics.median(wall["ours"]) / statistics.median(wall["torch"])
    print(f"ours / torch step time: median {ratio:.3f} "
          f"({'ours faster' if ratio < 1 else 'torch faster'}), "
          f"min {min(wall['ours']) / min(wall['torch']):.3f}; CPU time (median): "
          f"{statistics.median(cpu['ours']) / statistics.median(cpu['torch']):.3f}")
    diff = max(abs(a - b) for a, b in zip(losses["ours"], losses["torch"]))
    print(f"max |loss ours - loss torch| over {len(losses['ours'])} steps: {diff:.2e}")
  others = None
  if total1 > total0:
    ticks = os.sysconf("SC_CLK_TCK")
    others = max(0.0, (busy1 - busy0) / ticks - own) / elapsed
    noisy = others > NOISY_OTHER_CORES
    print(f"other processes used {others:.2f} of {len(os.sched_getaffinity(0))} cores while "
          f"measuring{' (timings are noisy: rerun on an idle machine)' if noisy else ''}")
  if args.json:  # the numbers benchmarks/run_all.py tabulates
    paths.write_json(args.json, dict(
      ours_ms=statistics.median(wall["ours"]) * 1e3, compile_s=compile_s,
      torch_ms=statistics.median(wall["torch"]) * 1e3 if "torch" in runs else None,
      ratio=(statistics.median(wall["ours"]) / statistics.median(wall["torch"])
             if "torch" in runs else None),
      tokens_per_s=tokens / statistics.median(wall["ours"]), other_cores=others))


if __name__ == "__main__":
  main()
