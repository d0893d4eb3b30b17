"""Every benchmark, one table: `python benchmarks/run_all.py [--markdown FILE]` (~5 min, 2 cores).

Runs each benchmark script in its own process (each sets its own allocator and
thread settings, and none inherits another's memory), asks it for its key numbers
(--json), and prints one table of ratios against the baseline each measures in the
same process: transformers on PyTorch for the train step and for decoding, the
multi-path union step for MIND, the train step's consumption for the reader, the
bf16 model size for the export's peak RSS. `--quick` uses small sizes (a smoke test
of the command, not numbers to quote); `--skip NAME` leaves a benchmark out.
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
