"""One prepared check for a GPU machine: SFT throughput and MFU of a Qwen2.5-0.5B-shaped
student at the largest batch that fits, and the MIND / union step-time ratio on it.

    python benchmarks/gpu_check.py --json gpu_check.json            # H100/H200, < 8 min
    python benchmarks/gpu_check.py --cpu_smoke                      # CPU, tiny shapes, < 1 min

What it does, in order (every number comes from the same code as training):
  1. MIND vs union: the MIND step and the multi-path union step (configs/mind_demo.py and
     configs/baselines/union.py with the student replaced by this one) on one random
     B x K x T batch (benchmarks/mind_vs_union.py's batch and timing), steps interleaved.
     It has a fixed size, so it runs first and the batch search gets what time is left.
  2. Batch search: the SFT step of mind_jax.train.sft_task (same optimizer, schedule,
     shardings and jitted step) on random [B, seq_len] tokens. The per-device batch
     doubles from --min_batch (1, 2, 4, ...) up to --max_batch; each is compiled (a GPU
     compile takes a while: --min_batch 4 saves two), kept only if XLA's own
     memory account (arguments + outputs + temporaries - aliased) is under the device's
     memory less --memory_margin, and then run once, which catches an out-of-memory
     error that the account missed. The first that does not fit ends the search.
     --batch N tries N only.
  3. Measurement: --warmup steps, then --steps timed steps at the largest batch that fit:
     median step time, tokens/s, MFU (mind_jax.perf: PaLM FLOPs per token over the
     device's dense bf16 peak; on CPU there is none, so n/a unless --peak_flops).

--time_budget_s (default 420) bounds the run: the search does not start a candidate that
would, at the pace of the one before, end past the budget; what was found is reported.
If the MIND/union part fails, the error is reported and the SFT part still runs.

Mesh: all devices on the fsdp axis. Params and optimizer state are split over them, and
the batch too (the "batch" rule maps to data and fsdp), so the global batch is the
per-device batch times the device count: it always divides evenly (tests run on 8
simulated CPU devices). The MIND/union batch (--mind_batch questions) is global; one
that does not divide is replicated, as in benchmarks/mind_vs_union.py.

Output: a table on stdout; --json PATH writes every number; --results_md PATH appends a
markdown section (card, date, numbers, command) to a results file such as
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import statistics
import sys
import time

# Let this process take 90% of GPU memory rather than JAX's default 75%: the batch search
# measures what fits in it. Read when the JAX backend starts (no effect on CPU).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mind_jax import host_memory, perf, sharding  # noqa: E402
from mind_jax import state as state_lib, step as step_lib  # noqa: E402
from mind_jax.config import default_config, load_config_file  # noqa: E402
from mind_jax.models.decoder import DecoderConfig  # noqa: E402

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
GIB = 2**30


def _load_benchmark(name: str):
  """A sibling script as a module (benchmarks/ is not a package)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


mind_vs_union = _load_benchmark("mind_vs_union")

# Qwen2.5-0.5B's shape (as configs/gpu_qwen05b.py): bf16 compute, fp32 master weights.
QWEN25_05B = dict(family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                  num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, qkv_bias=True,
                  tie_embeddings=True, rope_theta=1e6, max_position_embeddings=32768,
                  dtype="bfloat16", param_dtype="float32")
# --cpu_smoke: the same architecture, tiny; fp32 because bf16 matmuls are slow on CPU.
TINY = dict(QWEN25_05B, vocab_size=512, hidden_size=64, intermediate_size=172, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=16, dtype="float32")
# Flag defaults that differ between the two: sizes and step counts only.
GPU_DEFAULTS = dict(seq_len=2048, max_batch=64, warmup=3, steps=20, mind_batch=2,
                    mind_seq_len=512, mind_steps=10)
SMOKE_DEFAULTS = dict(seq_len=128, max_batch=4, warmup=1, steps=2, mind_batch=2,
                      mind_seq_len=64, mind_steps=2)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cpu_smoke", action="store_true", help="tiny shapes: the CPU check")
  p.add_argument("--seq_len", type=int, help="SFT tokens per sequence (GPU default 2048)")
  p.add_argument("--batch", type=int, default=0,
                 help="per-device batch to use, without a search (0: search)")
  p.add_argument("--min_batch", type=int, default=1,
                 help="per-device batch the search starts from")
  p.add_argument("--max_batch", type=int, help="largest per-device batch the search tries")
  p.add_argument("--memory_margin", type=float, default=0.1,
                 help="share of device memory kept free of XLA's account (workspaces, "
                      "fragmentation)")
  p.add_argument("--remat", choices=("none", "dots", "full"), default="dots",
                 help="model.remat: 'dots' keeps matmul outputs (as configs/gpu_qwen05b.py); "
                      "'full' fits larger batches at ~1/3 more compute")
  p.add_argument("--causal_block_size", type=int, default=0, help="model.causal_block_size")
  p.add_argument("--warmup", type=int, help="unmeasured steps before the measured ones")
  p.add_argument("--steps", type=int, help="measured SFT steps")
  p.add_argument("--peak_flops", type=float, default=0.0,
                 help="peak FLOP/s per device for MFU; 0 looks the device up")
  p.add_argument("--perspectives", type=int, default=8, help="MIND/union: K")
  p.add_argument("--mind_batch", type=int, help="MIND/union: questions per step (B)")
  p.add_argument("--mind_seq_len", type=int, help="MIND/union: tokens per rationale (T)")
  p.add_argument("--mind_steps", type=int, help="MIND/union: measured steps of each")
  p.add_argument("--skip_mind", action="store_true", help="no MIND/union comparison")
  p.add_argument("--time_budget_s", type=float, default=420.0)
  p.add_argument("--json", help="write the results here")
  p.add_argument("--results_md", help="append a markdown section to this file")
  args = p.parse_args(argv)
  for key, value in (SMOKE_DEFAULTS if args.cpu_smoke else GPU_DEFAULTS).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


# ------------------------------------------------------------------ config and mesh


def student_config(args):
  """default_config() with the student's shape; the same student is used for MIND/union."""
  config = default_config()
  config.model.update(TINY if args.cpu_smoke else QWEN25_05B)
  config.model.remat = args.remat
  config.model.causal_block_size = args.causal_block_size
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1  # see the docstring
  config.train.seq_len = args.seq_len
  config.train.steps = 1000  # only shapes the lr schedule; never reached
  return config


# ------------------------------------------------------------------ memory


def memory_account(compiled) -> dict[str, float] | None:
  """XLA's account of a compiled step per device, in bytes; peak as mind_vs_union.py
  computes it (an upper bound: every temporary live at once)."""
  try:
    mem = compiled.memory_analysis()
  except Exception:  # not every backend reports it
    mem = None
  if mem is None:
    return None
  out = dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
             temporaries=mem.temp_size_in_bytes, aliased=mem.alias_size_in_bytes)
  out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
  return {k: float(v) for k, v in out.items()}


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return isinstance(error, RuntimeError) and ("RESOURCE_EXHAUSTED" in text
                                              or "out of memory" in text.lower())


# ------------------------------------------------------------------ the SFT step


class SFTBench:
  """The pieces of mind_jax.train.sft_task, for random token batches of any size."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    self.model_config = DecoderConfig.from_config(config.model)
    self.optimizer = state_lib.make_optimizer(config.optim, config.train.steps)
    self.schedule = state_lib.learning_rate_schedule(config.optim, config.train.steps)
    self.abstract, self.shardings = state_lib.abstract_state_and_shardings(
        self.model_config, self.optimizer, mesh, config.mesh.rules)

  def init_state(self):
    return state_lib.init_state(self.model_config, self.optimizer, self.config.train.seed,
                                self.shardings)

  def random_batch(self, batch_size: int, batch_sharding) -> dict[str, jax.Array]:
    """Full-length random sequences, every token scored: each token counts in tokens/s."""
    shape = (batch_size, self.config.train.seq_len)
    ids = np.random.default_rng(batch_size).integers(
        0, self.model_config.vocab_size, shape, dtype=np.int32)
    ones = np.ones(shape, np.int32)
    host = dict(input_ids=ids, attention_mask=ones, loss_mask=ones)
    return {key: jax.device_put(host[key], batch_sharding) for key in step_lib.BATCH_KEYS}

  def compile(self, batch_size: int) -> dict:
    """The compiled step for a global batch, its batch and XLA's memory account."""
    batch_sharding = sharding.batch_sharding(self.mesh, self.config.mesh.rules,
                                             (batch_size, self.config.train.seq_len))
    step = step_lib.jit_train_step(self.model_config, self.optimizer, self.schedule,
                                   self.shardings, batch_sharding)
    batch = self.random_batch(batch_size, batch_sharding)
    start = time.perf_counter()
    # Lowered on the abstract state, so nothing but the batch is allocated to compile.
    compiled = step.lower(sharding.with_shardings(self.abstract, self.shardings),
                         batch).compile()
    return dict(step=compiled, batch=batch, batch_size=batch_size,
                compile_s=time.perf_counter() - start, memory=memory_account(compiled))


def search_batch(bench: SFTBench, per_device_sizes, num_shards: int, limit: float | None,
                 margin: float, deadline: float) -> tuple[dict | None, list[dict]]:
  """The largest batch that compiles under the memory limit and runs once: (its run with
  a live state, or None; one row per candidate tried)."""
  state, best, trials, last_cost = bench.init_state(), None, [], 0.0
  for per_device in per_device_sizes:
    trial = dict(batch_per_device=per_device, batch=per_device * num_shards)
    trials.append(trial)
    if best is not None and time.perf_counter() + last_cost > deadline:
      trial["result"] = "skipped: time budget"
      break
    started = time.perf_counter()
    try:
      run = bench.compile(trial["batch"])
      trial["compile_s"] = run["compile_s"]
      trial["peak_gib"] = run["memory"]["peak"] / GIB if run["memory"] else None
      if limit and run["memory"] and run["memory"]["peak"] > (1 - margin) * limit:
        trial["result"] = "too big for device memory (XLA account)"
        break
      run["state"] = state
      trial["first_step_s"] = mind_vs_union.time_steps(run, 1)[0]
      state = run["state"]
    except Exception as error:  # noqa: BLE001 - only out-of-memory is expected
      if not is_out_of_memory(error):
        raise
      trial["result"] = "out of memory: " + str(error).splitlines()[0][:160]
      state = bench.init_state()  # a failed step may have consumed the donated state
      break
    trial["result"] = "ok"
    best, last_cost = run, time.perf_counter() - started
    print(f"  batch {trial['batch']}: compiled in {trial['compile_s']:.1f} s, "
          f"first step {trial['first_step_s']:.2f} s", flush=True)
  if best is not None:
    best["state"] = state
  return best, trials


def run_sft(args, config, mesh, deadline: float) -> dict:
  bench = SFTBench(config, mesh)
  num_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  device = mesh.devices.flat[0]
  limit = perf.device_memory_limit(device)
  sizes = [args.batch] if args.batch else doubling(args.min_batch, args.max_batch)
  out = dict(params=bench.model_config.num_params(), seq_len=args.seq_len,
             device_memory_gib=limit / GIB if limit else None)
  best, out["batch_search"] = search_batch(bench, sizes, num_shards, limit,
                                           args.memory_margin, deadline)
  if best is None:
    out["error"] = "no batch fits"
    return out
  mind_vs_union.time_steps(best, args.warmup)
  times = mind_vs_union.time_steps(best, args.steps)
  median = statistics.median(times)
  tokens_per_s = best["batch_size"] * args.seq_len / median
  peak_flops = perf.peak_flops_per_device(device, args.peak_flops)
  sized = bench.config.copy_and_resolve_references()  # the estimate of the batch found
  sized.train.batch_size = best["batch_size"]
  estimate = perf.estimate_memory(sized, dict(mesh.shape), bench.model_config)
  out.update(batch=best["batch_size"], batch_per_device=best["batch_size"] // num_shards,
             step_times_s=times, median_step_s=median, tokens_per_s=tokens_per_s,
             mfu=perf.mfu(bench.model_config, args.seq_len, tokens_per_s, mesh.size,
                          peak_flops),
             peak_flops_per_device=peak_flops, compile_s=best["compile_s"],
             flops_per_token=perf.flops_per_token(bench.model_config, args.seq_len),
             memory_gib={k: v / GIB for k, v in (best["memory"] or {}).items()},
             estimate_gib=estimate["total"] / GIB)
  return out


def doubling(smallest: int, largest: int) -> list[int]:
  sizes = [smallest]
  while sizes[-1] * 2 <= largest:
    sizes.append(sizes[-1] * 2)
  return sizes


# ------------------------------------------------------------------ MIND vs union


def run_mind_vs_union(args, student, mesh) -> dict:
  """Median step times of MIND and union on one batch; the student's fields replace the
  demo configs' model (their method settings are kept)."""
  batch = mind_vs_union.make_batch(args.mind_batch, args.perspectives, args.mind_seq_len,
                                   student.vocab_size)
  runs = {}
  for name, path in (("union", "configs/baselines/union.py"), ("mind", "configs/mind_demo.py")):
    config = load_config_file(os.path.join(REPO, path))
    config.model.update(student.to_dict())
    runs[name] = mind_vs_union.build_step(config, batch, mesh)
    runs[name]["memory"] = memory_account(runs[name]["step"])
  for run in runs.values():
    mind_vs_union.time_steps(run, 2)  # warm-up
  times = {name: [] for name in runs}
  for _ in range(args.mind_steps):  # interleaved, so both see the same machine load
    for name, run in runs.items():
      times[name] += mind_vs_union.time_steps(run, 1)
  out = dict(mind_shape=dict(batch=args.mind_batch, perspectives=args.perspectives,
                             seq_len=args.mind_seq_len))
  for name, run in runs.items():
    out[f"{name}_step_s"] = statistics.median(times[name])
    out[f"{name}_step_times_s"] = times[name]
    out[f"{name}_compile_s"] = run["compile_s"]
    out[f"{name}_peak_gib"] = run["memory"]["peak"] / GIB if run["memory"] else None
  out["mind_union_ratio"] = out["mind_step_s"] / out["union_step_s"]
  return out


# ------------------------------------------------------------------ report


def _fmt(value, spec: str, missing: str = "n/a") -> str:
  return missing if value is None else format(value, spec)


def report_lines(r: dict) -> list[str]:
  lines = [f"device: {r['device_kind']} x{r['device_count']} ({r['platform']}), "
           f"jax {r['jax_version']}",
           f"student: {r['model']['family']} {r['sft']['params'] / 1e6:.1f}M params, "
           f"{r['model']['dtype']} compute / {r['model']['param_dtype']} params, "
           f"remat {r['model']['remat']}, seq {r['sft']['seq_len']}; device memory "
           f"{_fmt(r['sft']['device_memory_gib'], '.1f', 'unknown')}"
           f"{' GiB' if r['sft']['device_memory_gib'] else ''}",
           f"{'batch':>7}{'compile s':>11}{'XLA peak GiB':>14}{'1st step s':>12}  result"]
  for t in r["sft"]["batch_search"]:
    lines.append(f"{t['batch']:>7}{_fmt(t.get('compile_s'), '.1f', '-'):>11}"
                 f"{_fmt(t.get('peak_gib'), '.3f', '-'):>14}"
                 f"{_fmt(t.get('first_step_s'), '.2f', '-'):>12}  {t['result']}")
  s = r["sft"]
  if "error" in s:
    lines.append(f"SFT: {s['error']}")
  else:
    mfu = "n/a" if s["mfu"] is None else f"{s['mfu']:.1%}"
    mem = s["memory_gib"]
    lines += [f"SFT step, batch {s['batch']} x {s['seq_len']} ({s['batch_per_device']} per "
              f"device), {len(s['step_times_s'])} steps:",
              f"  median step s {s['median_step_s']:.4f} | tokens/s {s['tokens_per_s']:,.0f} | "
              f"MFU {mfu} | compile s {s['compile_s']:.1f}",
              f"  XLA memory GiB: arguments {_fmt(mem.get('arguments'), '.3f')}, outputs "
              f"{_fmt(mem.get('outputs'), '.3f')}, temporaries "
              f"{_fmt(mem.get('temporaries'), '.3f')}, aliased {_fmt(mem.get('aliased'), '.3f')}, "
              f"peak {_fmt(mem.get('peak'), '.3f')} (perf.estimate_memory "
              f"{s['estimate_gib']:.3f})"]
  m = r.get("mind")
  if m and "error" in m:
    lines.append(f"MIND/union: {m['error']}")
  elif m:
    shape = m["mind_shape"]
    lines += [f"MIND vs union, B={shape['batch']} K={shape['perspectives']} "
              f"T={shape['seq_len']}:",
              f"  union step s {m['union_step_s']:.4f} | MIND step s {m['mind_step_s']:.4f} | "
              f"ratio {m['mind_union_ratio']:.3f} (target <= 1.10)"]
  lines.append(f"total {r['wall_s']:.0f} s (budget {r['time_budget_s']:.0f} s)")
  return lines


def markdown_section(r: dict) -> str:
  s, m = r["sft"], r.get("mind") or {}
  rows = [("jax", r["jax_version"]),
          ("student", f"{r['model']['family']} {s['params'] / 1e6:.1f}M params, "
                      f"{r['model']['dtype']} / {r['model']['param_dtype']}, remat "
                      f"{r['model']['remat']}")]
  if "error" not in s:
    rows += [("SFT batch x seq", f"{s['batch']} x {s['seq_len']}"),
             ("median step s", f"{s['median_step_s']:.4f}"),
             ("tokens/s", f"{s['tokens_per_s']:,.0f}"),
             ("MFU", _fmt(s["mfu"], ".1%")),
             ("compile s", f"{s['compile_s']:.1f}"),
             ("XLA peak GiB", _fmt(s["memory_gib"].get("peak"), ".2f"))]
  if "mind_union_ratio" in m:
    shape = m["mind_shape"]
    rows += [(f"union / MIND step s (B={shape['batch']} K={shape['perspectives']} "
              f"T={shape['seq_len']})", f"{m['union_step_s']:.4f} / {m['mind_step_s']:.4f}"),
             ("MIND / union ratio", f"{m['mind_union_ratio']:.3f}")]
  table = "\n".join(f"| {k} | {v} |" for k, v in rows)
  return (f"\n## gpu_check: {r['device_kind']} x{r['device_count']}, {r['date']}\n\n"
          f"`{r['command']}`\n\n| | |\n|---|---|\n{table}\n")


def append_results_md(path: str, results: dict) -> None:
  with open(path, "a") as f:
    f.write(markdown_section(results))


# ------------------------------------------------------------------ main


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  start = time.perf_counter()
  if args.cpu_smoke:
    # The CPU path: keep freed host memory as CPU training configs do (mind_jax/host_memory.py).
    # Only effective before the JAX backend starts, as when run as a script.
    host_memory.keep_freed_memory()
  config = student_config(args)
  mesh = sharding.make_mesh(config.mesh)
  student = DecoderConfig.from_config(config.model)
  device = mesh.devices.flat[0]
  results = dict(device_kind=device.device_kind, platform=device.platform,
                 device_count=mesh.size, jax_version=jax.__version__,
                 date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 command="python benchmarks/gpu_check.py " + shlex.join(argv),
                 model=student.to_dict(), time_budget_s=args.time_budget_s)
  print(f"gpu_check on {device.device_kind} x{mesh.size}: MIND vs union, then the batch "
        f"search", flush=True)
  if not args.skip_mind:
    try:
      results["mind"] = run_mind_vs_union(args, student, mesh)
    except Exception as error:  # noqa: BLE001 - report it; the SFT numbers still come
      results["mind"] = dict(error=f"{type(error).__name__}: {error}"[:500])
  results["sft"] = run_sft(args, config, mesh, deadline=start + args.time_budget_s)
  results["wall_s"] = time.perf_counter() - start
  print("\n".join(report_lines(results)), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  if args.results_md:
    append_results_md(args.results_md, results)
  return results


if __name__ == "__main__":
  main()
