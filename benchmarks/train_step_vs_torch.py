"""Time our jitted train step against transformers' PyTorch LlamaForCausalLM on CPU.

Both sides train the same ~10M-parameter Llama (vocab 8192, hidden 256, 8
layers, 8 heads / 4 KV heads, SwiGLU 688) in fp32 on the same batch of random
tokens, with next-token cross-entropy on every token, AdamW (same lr, betas,
eps, weight decay on matrices only) and global-norm gradient clipping. The torch
model starts from a copy of our initial params, so the first-step losses must
agree: that checks both sides compute the same thing, not just similar shapes.

Each step is timed on its own, synchronously (torch on CPU is synchronous; ours
is blocked on with `jax.block_until_ready`), after warm-up steps (which for us
include compilation; compile time is reported separately).

    python benchmarks/train_step_vs_torch.py            # ~1-2 minutes on 2 cores
    python benchmarks/train_step_vs_torch.py --steps 20 --jax-first
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

# Quieter logs; must be set before jax / transformers are imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from mind_jax import sharding  # noqa: E402
from mind_jax.config import default_config  # noqa: E402
from mind_jax.models.decoder import DecoderConfig  # noqa: E402
from mind_jax.state import (abstract_state_and_shardings, init_state,  # noqa: E402
                            learning_rate_schedule, make_optimizer)
from mind_jax.step import jit_train_step  # noqa: E402

MODEL = dict(family="llama", vocab_size=8192, vocab_pad_multiple=128, hidden_size=256,
             intermediate_size=688, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=32,
             rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling="none",
             dtype="float32", param_dtype="float32", remat="none")
# A constant learning rate (no warm-up, a decay far beyond the run) so that torch,
# with a plain constant lr, takes the same updates.
OPTIM = dict(learning_rate=1e-3, warmup_steps=0, decay_steps=1_000_000, end_lr_ratio=1.0,
             b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0, grad_accum_steps=1)


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=10, help="measured steps per framework")
  p.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (ours: +compile)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  p.add_argument("--jax-first", action="store_true", help="run ours before torch")
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--profile", default="", help="write a jax.profiler trace of the measured "
                 "JAX steps to this directory")
  return p.parse_args()


# ------------------------------------------------------------------------- ours

def setup_jax(batch_np):
  cfg = default_config()
  cfg.model.update(MODEL)
  cfg.optim.update(OPTIM)
  cfg.mesh.data = 1  # one CPU device
  model_cfg = DecoderConfig.from_config(cfg.model)
  total = OPTIM["decay_steps"]
  optimizer = make_optimizer(cfg.optim, total)
  schedule = learning_rate_schedule(cfg.optim, total)
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
  _, shardings = abstract_state_and_shardings(model_cfg, optimizer, mesh, cfg.mesh.rules)
  state = init_state(model_cfg, optimizer, 0, shardings)
  batch_sh = sharding.batch_sharding(mesh, cfg.mesh.rules, batch_np["input_ids"].shape)
  batch = {k: jax.device_put(v, batch_sh) for k, v in batch_np.items()}
  step = jit_train_step(model_cfg, optimizer, schedule, shardings, batch_sh)
  return model_cfg, state, batch, step


def run_jax(step, state, batch, warmup, steps, profile_dir=""):
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  losses = []
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
    losses.append(float(metrics["loss"]))  # float() blocks
  times = []
  if profile_dir:
    jax.profiler.start_trace(profile_dir)
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
    losses.append(float(metrics["loss"]))
  if profile_dir:
    jax.profiler.stop_trace()
  return dict(times=times, losses=losses, trace_s=t1 - t0, compile_s=t2 - t1)


# ------------------------------------------------------------------------ torch

def torch_model_from(model_cfg: DecoderConfig, params) -> LlamaForCausalLM:
  """transformers' Llama with the same config and a copy of our params."""
  c = model_cfg
  hf = LlamaConfig(vocab_size=c.padded_vocab_size, hidden_size=c.hidden_size,
                   intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                   num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                   head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
                   rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                   max_position_embeddings=c.max_position_embeddings,
                   tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
  model = LlamaForCausalLM(hf)
  p = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  e = c.hidden_size
  sd = {"model.embed_tokens.weight": p["embed_tokens"], "model.norm.weight": p["norm"]["scale"],
        "lm_head.weight": p["lm_head"]["kernel"].T}
  for i in range(c.num_layers):
    src, dst = p[f"layers_{i}"], f"model.layers.{i}."
    sd[dst + "input_layernorm.weight"] = src["input_layernorm"]["scale"]
    sd[dst + "post_attention_layernorm.weight"] = src["post_attention_layernorm"]["scale"]
    for n in ("q", "k", "v"):
      sd[dst + f"self_attn.{n}_proj.weight"] = src["self_attn"][f"{n}_proj"]["kernel"].reshape(e, -1).T
    sd[dst + "self_attn.o_proj.weight"] = src["self_attn"]["o_proj"]["kernel"].reshape(-1, e).T
    for n in ("gate", "up", "down"):
      sd[dst + f"mlp.{n}_proj.weight"] = src["mlp"][f"{n}_proj"]["kernel"].T
  missing, unexpected = model.load_state_dict(
      {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=False)
  assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
  return model.train()


def run_torch(model, input_ids, warmup, steps):
  # Same as our optimizer: decay on matrices only, global-norm clipping before AdamW.
  decay = [q for q in model.parameters() if q.ndim >= 2]
  no_decay = [q for q in model.parameters() if q.ndim < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPTIM["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=OPTIM["learning_rate"], betas=(OPTIM["b1"], OPTIM["b2"]),
                          eps=OPTIM["eps"])

  def step():
    # labels=input_ids: transformers shifts them, next-token CE averaged over all tokens.
    loss = model(input_ids=input_ids, labels=input_ids).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["grad_clip"])
    opt.step()
    return loss.item()

  losses = [step() for _ in range(warmup)]
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    losses.append(step())
    times.append(time.perf_counter() - t)
  return dict(times=times, losses=losses)


# ------------------------------------------------------------------------ main

def main():
  args = parse_args()
  torch.set_num_threads(args.threads)
  rng = np.random.RandomState(0)
  ids = rng.randint(0, MODEL["vocab_size"], (args.batch, args.seq)).astype(np.int32)
  batch_np = dict(input_ids=ids, attention_mask=np.ones_like(ids), loss_mask=np.ones_like(ids))

  model_cfg, state, batch, step = setup_jax(batch_np)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  torch_model = None
  if not args.skip_torch:
    torch_model = torch_model_from(model_cfg, state.params)
    # Also the default for transformers' Llama; said here so the report is unambiguous.
    torch_model.config._attn_implementation = "sdpa"
  torch_ids = torch.from_numpy(ids.astype(np.int64))

  print(f"model: {n_params / 1e6:.2f}M params, {MODEL['num_layers']} layers, hidden "
        f"{MODEL['hidden_size']}, heads {MODEL['num_heads']}/{MODEL['num_kv_heads']}, "
        f"vocab {MODEL['vocab_size']}; batch {args.batch} x {args.seq}, fp32, AdamW + clip")
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({len(os.sched_getaffinity(0))} cores visible; XLA's intra-op pool uses them all), "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"torch {torch.__version__}: intra-op threads {torch.get_num_threads()}, "
        f"inter-op {torch.get_num_interop_threads()}, attention "
        f"{getattr(torch_model, 'config', None) and torch_model.config._attn_implementation}")

  results = {}
  order = ["jax", "torch"] if args.jax_first else ["torch", "jax"]
  for name in order:
    if name == "torch" and torch_model is not None:
      results["torch"] = run_torch(torch_model, torch_ids, args.warmup, args.steps)
    elif name == "jax":
      results["jax"] = run_jax(step, state, batch, args.warmup, args.steps, args.profile)
      state = None  # donated

  tokens = args.batch * args.seq
  print()
  print(f"{'':22s}{'median ms':>11s}{'mean ms':>10s}{'min ms':>9s}{'tokens/s':>11s}"
        f"{'loss first':>12s}{'loss last':>11s}")
  labels = {"jax": "ours (jax jit)", "torch": "torch LlamaForCausalLM"}
  for name in ("jax", "torch"):
    if name not in results:
      continue
    r = results[name]
    med, mean = statistics.median(r["times"]), statistics.mean(r["times"])
    print(f"{labels[name]:22s}{med * 1e3:11.1f}{mean * 1e3:10.1f}{min(r['times']) * 1e3:9.1f}"
          f"{tokens / med:11.0f}{r['losses'][0]:12.5f}{r['losses'][-1]:11.5f}")
  j = results["jax"]
  print(f"\nours: trace+lower {j['trace_s']:.2f} s, compile {j['compile_s']:.2f} s "
        f"({args.warmup} warm-up + {args.steps} measured steps each)")
  if "torch" in results:
    ratio = statistics.median(j["times"]) / statistics.median(results["torch"]["times"])
    print(f"ours / torch step time (median): {ratio:.3f}  "
          f"({'ours faster' if ratio < 1 else 'torch faster'})")
    print(f"first-step loss |ours - torch| = "
          f"{abs(j['losses'][0] - results['torch']['losses'][0]):.2e}")


if __name__ == "__main__":
  main()
