"""Every benchmark, one table: `python benchmarks/run_all.py [--markdown FILE]` (~12 min, 2 cores).

Runs each benchmark script in its own process (each sets its own allocator and
thread settings, and none inherits another's memory), asks it for its key numbers
(--json), and prints one table of ratios against the baseline each measures in the
same process: transformers on PyTorch for the train step and for decoding, the
multi-path union step for MIND, the train step's consumption for the reader, the
bf16 model size for the export's peak RSS, and for SmolLM2-135M (real_model.py, ~7 min
of it) its MIND step's compile and memory, transformers + peft for LoRA, generate for
decoding. `--quick` uses small sizes (a smoke test of the command, not numbers to quote);
`--skip NAME` leaves a benchmark out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from mind_jax.eval import report

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (script, full-size args, --quick args)
BENCHMARKS = {
    "train_step": ("train_step_vs_torch.py", [],
                   ["--steps", "2", "--warmup", "1", "--batch", "2", "--seq", "64"]),
    "decode": ("decode_vs_transformers.py", [],
               ["--batch", "2", "--new", "8", "--repeats", "1"]),
    "mind_vs_union": ("mind_vs_union.py", [],
                      ["--batch", "1", "--seq_len", "64", "--steps", "1"]),
    "reader": ("reader_throughput.py", [], ["--num_examples", "64", "--epochs", "1"]),
    "export_memory": ("export_memory.py", [], []),
    "real_model": ("real_model.py", [], ["--quick"]),
}


def run_benchmark(name: str, quick: bool, out_dir: str) -> tuple[dict, float]:
  script, full, small = BENCHMARKS[name]
  path = os.path.join(out_dir, f"{name}.json")
  start = time.perf_counter()
  print(f"---- {name}: {script} {' '.join(small if quick else full)}", flush=True)
  subprocess.run([sys.executable, os.path.join(HERE, script), *(small if quick else full),
                  "--json", path], check=True)
  with open(path) as f:
    return json.load(f), time.perf_counter() - start


def rows(results: dict) -> list[tuple[str, str, str, str]]:
  """(what, ours, baseline, ratio) per measured number."""
  out = []
  if "train_step" in results:
    r = results["train_step"]
    out.append(("train step, 10M Llama, CPU (ms)", f"{r['ours_ms']:.0f}",
                f"{r['torch_ms']:.0f} (torch)" if r["torch_ms"] else "n/a",
                f"{r['ratio']:.3f} (lower is better)" if r["ratio"] else "n/a"))
    out.append(("train step compile (s)", f"{r['compile_s']:.1f}", "", ""))
  if "decode" in results:
    r = results["decode"]
    out.append(("greedy decode (tokens/s)", f"{r['ours_tokens_per_s']:.0f}",
                f"{r['transformers_tokens_per_s']:.0f} (generate)",
                f"{r['ratio']:.2f}x (target >= 2)"))
  if "mind_vs_union" in results:
    r = results["mind_vs_union"]
    out.append(("MIND step vs union step (s)", f"{r['mind_step_s']:.3f}",
                f"{r['union_step_s']:.3f} (union)", f"{r['ratio']:.3f} (target <= 1.10)"))
    out.append(("MIND step compile (s)", f"{r['mind_compile_s']:.1f}",
                f"{r['union_compile_s']:.1f} (union)", ""))
  if "reader" in results:
    r = results["reader"]
    out.append(("reader (examples/s)", f"{r['examples_per_s']:.0f}",
                f"{r['train_examples_per_s']:g} (train step)", f"{r['ratio']:.0f}x (target >= 20)"))
  if "export_memory" in results:
    r = results["export_memory"]
    out.append(("HF export peak RSS, Qwen2.5-0.5B shape (GiB)",
                f"{r['peak_rss_bytes']['export'] / 2**30:.2f}",
                f"{r['bf16_bytes'] / 2**30:.2f} (bf16 size)",
                f"{r['export_ratio']:.2f}x (target <= {r['target_ratio']})"))
  if "real_model" in results:
    out += real_model_rows(results["real_model"])
  return out


def real_model_rows(r: dict) -> list[tuple[str, str, str, str]]:
  """benchmarks/real_model.py's rows: SmolLM2-135M's MIND compile and memory, LoRA, decode."""
  layers = r["layers"]
  name = "SmolLM2-135M" if layers == 30 else f"SmolLM2-135M cut to {layers} layers"
  out = []
  if r.get("compile_scanned_deep_s") is not None:
    deep, shallow = r["compile_scanned_deep_layers"], r["compile_scanned_shallow_layers"]
    out.append((f"SmolLM2-135M MIND joint step compile, scanned {deep} layers (s)",
                f"{r['compile_scanned_deep_s']:.1f}",
                f"{r['compile_scanned_shallow_s']:.1f} ({shallow} layers)",
                f"{r['compile_ratio']:.2f} (target <= 1.5; {deep} layers <= 90 s)"))
    unrolled = {int(n): s for n, s in r.get("compile_unrolled_s", {}).items() if s is not None}
    if len(unrolled) > 1:
      low, high = min(unrolled), max(unrolled)
      out.append((f"SmolLM2-135M MIND joint step compile, unrolled {high} layers (s)",
                  f"{unrolled[high]:.1f}", f"{unrolled[low]:.1f} (unrolled, {low} layers)",
                  f"{unrolled[high] / unrolled[low]:.2f}x"))
    if deep in unrolled:
      out.append((f"SmolLM2-135M MIND joint step compile, {deep} layers, unrolled vs scanned (s)",
                  f"{unrolled[deep]:.1f}", f"{r['compile_scanned_deep_s']:.1f} (scanned)",
                  f"{unrolled[deep] / r['compile_scanned_deep_s']:.2f}x"))
  if r.get("peak_rss_chunked") is not None:
    chunk = r["memory_chunk"]
    out.append((f"{name} MIND joint step peak RSS, loss chunks of {chunk} (GiB)",
                f"{r['peak_rss_chunked'] / 2**30:.2f}",
                f"{r['peak_rss_full'] / 2**30:.2f} (full logits)",
                f"{r['peak_rss_chunked'] / r['peak_rss_full']:.2f} (target <= 8 GB = 7.45 GiB)"))
    if r.get("peak_rss_remat_full") is not None:
      out.append((f"{name} MIND joint step peak RSS, loss chunks of {chunk}, remat full (GiB)",
                  f"{r['peak_rss_remat_full'] / 2**30:.2f}",
                  f"{r['peak_rss_full'] / 2**30:.2f} (full logits, no remat)",
                  f"{r['peak_rss_remat_full'] / r['peak_rss_full']:.2f} (target <= 7.45 GiB)"))
    if r.get("temp_chunked") and r.get("temp_full"):
      out.append((f"{name} MIND joint step XLA temporaries, loss chunks of {chunk} (GiB)",
                  f"{r['temp_chunked'] / 2**30:.2f}", f"{r['temp_full'] / 2**30:.2f} (full logits)",
                  f"{r['temp_chunked'] / r['temp_full']:.2f}"))
  if r.get("lora_ours_ms") is not None:
    out.append((f"{name} LoRA r=16 SFT step (ms)", f"{r['lora_ours_ms']:.0f}",
                f"{r['lora_peft_ms']:.0f} (transformers+peft)",
                f"{r['lora_ratio']:.3f} (target <= 1.0)"))
  if r.get("decode_ours_tokens_per_s") is not None:
    out.append((f"{name} greedy decode (tokens/s)", f"{r['decode_ours_tokens_per_s']:.0f}",
                f"{r['decode_transformers_tokens_per_s']:.0f} (generate)",
                f"{r['decode_ratio']:.2f}x (target >= 2)"))
  return out


# The vector extensions that decide XLA:CPU's and oneDNN's kernels: an AVX2-only EPYC and an
# AVX-512 Xeon differ 2.5x on our train step, so every table says which kind it came from.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16",
                "amx_tile")


def cpu_line() -> str:
  """lscpu's model name and the vector flags above that this CPU has."""
  flags = set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          break
  except OSError:
    pass
  have = [flag for flag in VECTOR_FLAGS if flag in flags] or ["unknown"]
  return f"CPU: {report.cpu_model()}; {os.cpu_count()} cores; vector flags: {' '.join(have)}"


def markdown(table: list[tuple[str, str, str, str]]) -> str:
  lines = [cpu_line(), "", "| benchmark | ours | baseline | ratio |", "|---|---|---|---|"]
  lines += [f"| {' | '.join(row)} |" for row in table]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="small sizes: checks the command only")
  p.add_argument("--skip", action="append", default=[], choices=sorted(BENCHMARKS))
  p.add_argument("--markdown", default="", help="also write the table here")
  p.add_argument("--json", default="", help="also write every benchmark's numbers here")
  args = p.parse_args(argv)
  results, seconds = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in BENCHMARKS:
      if name not in args.skip:
        results[name], seconds[name] = run_benchmark(name, args.quick, tmp)
  table = markdown(rows(results))
  print("\n" + table)
  print("wall s per benchmark: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(table)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(results=results, wall_s=seconds), f, indent=2)
  return results


if __name__ == "__main__":
  main()
