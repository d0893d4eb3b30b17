"""One prepared check for a GPU machine: SFT throughput and MFU of a Qwen2.5-0.5B-shaped
student at the largest batch that fits, the MIND / union step-time ratio on it, and the MIND
step of the pretrained testbed's SmolLM2-135M student; or (--table) that testbed's table.

    python benchmarks/gpu_check.py --json gpu_check.json            # H100/H200, < 8 min
    python benchmarks/gpu_check.py --cpu_smoke                      # CPU, tiny shapes, < 1 min
    python benchmarks/gpu_check.py --table                          # the table, ~8 min

What it does, in order (every number comes from the same code as training):
  1. MIND vs union: the MIND step and the multi-path union step (configs/mind_demo.py and
     configs/baselines/union.py with the student replaced by this one) on one random
     B x K x T batch (benchmarks/mind_vs_union.py's batch and timing), steps interleaved.
  2. The SmolLM2 MIND step: the joint step of configs/testbed_smollm2/mind.py (LoRA r=16)
     and, for reference, of configs/baselines/union.py applied to it, on SmolLM2-135M's
     shape (30 layers, hidden 576, 9/3 heads of 64, intermediate 1536, vocab 49152, tied
     embeddings) in bf16 compute with fp32 master weights and --remat. The shape is read
     from the imported checkpoint at --student when there is one (checkpoint.read_meta,
     as training reads it), else it is the published one. The weights are random: only
     shapes matter for timing, and the 98 MB GGUF cannot reach a GPU machine that has no
     network and a 64 MiB carry limit. The batch is the table's: 4 questions x 4
     perspectives of random rationales (lengths uniform in [T/4, T], T = the records'
     max_len, 160) packed into rows of train.seq_len = 256 tokens as train.packing does,
     the loss in chunks of train.loss_chunk_tokens. Same timing as part 1; reported as
     steps/s, tokens/s (real rationale tokens, not padding) and MFU (PaLM FLOPs per token
     at the row length over the device's dense bf16 peak; n/a on CPU unless
     --peak_flops). With LoRA the frozen base's weight gradients are never computed, so
     PaLM's 6N counts about a third more than the step does: the MFU follows the PaLM
     convention (comparable with the SFT row), it is not the hardware's utilisation.
     --skip_smollm2 leaves it out; --cpu_smoke cuts it to 2 layers and a 2048 vocab.
  3. Batch search: the SFT step of mind_jax.train.sft_task (same optimizer, schedule,
     shardings and jitted step) on random [B, seq_len] tokens. The per-device batch
     doubles from --min_batch (1, 2, 4, ...) up to --max_batch; each is compiled (a GPU
     compile takes a while: --min_batch 4 saves two), kept only if XLA's own
     memory account (arguments + outputs + temporaries - aliased) is under the device's
     memory less --memory_margin, and then run once, which catches an out-of-memory
     error that the account missed. The first that does not fit ends the search.
     --batch N tries N only.
  4. Measurement: --warmup steps, then --steps timed steps at the largest batch that fit:
     median step time, tokens/s, MFU (mind_jax.perf: PaLM FLOPs per token over the
     device's dense bf16 peak; on CPU there is none, so n/a unless --peak_flops).

--time_budget_s (default 420) bounds the run: parts 1 and 2 have a fixed size, so they run
first, and their timed steps stop early (after one round) once the budget is spent; the
search does not start a candidate that would, at the pace of the one before, end past the
budget (it always tries one); what was found is reported. If part 1 or 2 fails, the error
is reported and the other parts still run.

--table: the pretrained testbed's table (configs/testbed_smollm2/experiment.py) at full
size on one GPU, through the experiment runner (mind_jax.eval.experiment): its records
(data_config's 4 styles, unchanged), seeds 0, 1, 2, --table_steps joint steps (the CPU
table ran 20), 200 in-distribution and 100 out-of-distribution questions, one worker, and
the rows zero_shot, single_path (every style: the best one is not known yet), union and
mind; the student in bf16 compute with remat "dots". It needs the student imported at
--student (default runs/smollm2; relative paths are from the repository root, as the
runner's): `python -m mind_jax.import_hf --gguf "$(python -m mind_jax.models.smollm2 |
tail -1)" --out runs/smollm2`, made where there is network (a GPU machine may have none).
Without it, one line and exit 2. The student and data configs that point at --student are
written into --table_out (gpu_configs/). Runs are resumable: a table stopped part way goes
on where it stopped when the command is run again. --time_budget_s (default 480 here) is
not enforced inside the runner: the wall time is printed against it, and --table_steps
is the knob. With --cpu_smoke: a tiny table that checks the wiring (1 seed, 2 joint
steps, no TA warm-up, 4 questions per suite, 8 new tokens, rows zero_shot and mind, the
student config's own fp32).

Mesh: all devices on the fsdp axis. Params and optimizer state are split over them, and
the batch too (the "batch" rule maps to data and fsdp), so the global batch is the
per-device batch times the device count: it always divides evenly (tests run on 8
simulated CPU devices). The MIND/union batch (--mind_batch questions) is global; one
that does not divide is replicated, as in benchmarks/mind_vs_union.py. The SmolLM2 part's
packed rows are rounded up to a multiple of the device count.

Output: a table on stdout; --json PATH writes every number; --results_md PATH appends a
markdown section (card, date, numbers, command) to a results file such as
benchmarks/RESULTS.md. With --table: the runner's own output and results.md / results.json
in --table_out; --json writes their paths and the wall time.
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

from mind_jax import checkpoint, faults, host_memory, perf, sharding  # noqa: E402
from mind_jax import state as state_lib, step as step_lib  # noqa: E402
from mind_jax.config import default_config, load_config_file  # noqa: E402
from mind_jax.data import packing  # noqa: E402
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
                    mind_seq_len=512, mind_steps=10, time_budget_s=420.0)
SMOKE_DEFAULTS = dict(seq_len=128, max_batch=4, warmup=1, steps=2, mind_batch=2,
                      mind_seq_len=64, mind_steps=2, time_budget_s=420.0)

# The pretrained testbed (configs/testbed_smollm2/): its MIND student, records and table.
SMOLLM2_MIND = "configs/testbed_smollm2/mind.py"
SMOLLM2_DATA = "configs/testbed_smollm2/data.py"
SMOLLM2_TABLE = "configs/testbed_smollm2/experiment.py"
# SmolLM2-135M's published shape (its config.json), for when no import is at --student.
SMOLLM2_135M = dict(family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, qkv_bias=False,
                    tie_embeddings=True, rope_theta=1e5, rms_norm_eps=1e-5,
                    max_position_embeddings=8192)
# --cpu_smoke: 2 layers, a small vocab (the LM head dominates a 2-layer step) and short
# rationales in short rows, so that bf16 on CPU stays within the smoke's minute.
SMOLLM2_SMOKE = dict(num_layers=2, vocab_size=2048)
SMOLLM2_SMOKE_LENGTHS = dict(max_len=32, row_len=64)
IMPORT_COMMAND = ('python -m mind_jax.import_hf --gguf "$(python -m mind_jax.models.smollm2 '
                  '| tail -1)" --out runs/smollm2')


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
  p.add_argument("--mind_steps", type=int,
                 help="MIND/union and the SmolLM2 step: measured steps of each")
  p.add_argument("--skip_mind", action="store_true", help="no MIND/union comparison")
  p.add_argument("--skip_smollm2", action="store_true",
                 help="no SmolLM2-135M MIND step (part 2)")
  p.add_argument("--student", default="runs/smollm2",
                 help="the SmolLM2 import (import_hf --out; relative: from the repository "
                      "root): part 2 reads its shape (else the published one); --table needs it")
  p.add_argument("--table", action="store_true",
                 help="run the pretrained testbed's table on this GPU instead of parts 1-4")
  p.add_argument("--table_steps", type=int, default=100,
                 help="--table: joint steps of every method (the budget's knob)")
  p.add_argument("--table_out", default="runs/testbed_smollm2_gpu",
                 help="--table: the table's local directory (resumable)")
  p.add_argument("--time_budget_s", type=float,
                 help="seconds the run should take: 420, or 480 with --table (see above)")
  p.add_argument("--json", help="write the results here (--table: its paths and wall time)")
  p.add_argument("--results_md", help="append a markdown section to this file (not --table)")
  args = p.parse_args(argv)
  defaults = SMOKE_DEFAULTS if args.cpu_smoke else GPU_DEFAULTS
  if args.table:
    defaults = dict(defaults, time_budget_s=480.0)
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


def repo_path(path: str) -> str:
  """Relative paths are from the repository root, as the experiment runner's."""
  return path if os.path.isabs(path) or "://" in path else os.path.join(REPO, path)


def has_import(student: str) -> bool:
  """Whether `student` holds an import_hf output: a committed checkpoint and a tokenizer."""
  return (os.path.isdir(os.path.join(student, "tokenizer"))
          and checkpoint.latest_step(student) is not None)


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


def time_joint_steps(configs: dict, batch: dict, mesh, steps: int, deadline: float,
                     loss_chunk_tokens: int = 0) -> dict:
  """Each config's compiled joint step (mind_vs_union.build_step) on the same batch: two
  warm-up steps each, then `steps` rounds of one step each, interleaved so that all see
  the same machine load; past the deadline no new round starts (one always runs). The
  median step s, every time, the compile s and XLA's peak per config, and the MIND /
  union ratio."""
  runs = {}
  for name, config in configs.items():
    runs[name] = mind_vs_union.build_step(config, batch, mesh, loss_chunk_tokens)
    runs[name]["memory"] = memory_account(runs[name]["step"])
  for run in runs.values():
    mind_vs_union.time_steps(run, 2)  # warm-up
  times = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      times[name] += mind_vs_union.time_steps(run, 1)
    if time.perf_counter() > deadline:
      break
  out = {}
  for name, run in runs.items():
    out[f"{name}_step_s"] = statistics.median(times[name])
    out[f"{name}_step_times_s"] = times[name]
    out[f"{name}_compile_s"] = run["compile_s"]
    out[f"{name}_peak_gib"] = run["memory"]["peak"] / GIB if run["memory"] else None
  out["mind_union_ratio"] = out["mind_step_s"] / out["union_step_s"]
  return out


def run_mind_vs_union(args, student, mesh, deadline: float) -> dict:
  """Median step times of MIND and union on one batch; the student's fields replace the
  demo configs' model (their method settings are kept)."""
  batch = mind_vs_union.make_batch(args.mind_batch, args.perspectives, args.mind_seq_len,
                                   student.vocab_size)
  configs = {}
  for name, path in (("union", "configs/baselines/union.py"), ("mind", "configs/mind_demo.py")):
    configs[name] = load_config_file(os.path.join(REPO, path))
    configs[name].model.update(student.to_dict())
  out = time_joint_steps(configs, batch, mesh, args.mind_steps, deadline)
  out["mind_shape"] = dict(batch=args.mind_batch, perspectives=args.perspectives,
                           seq_len=args.mind_seq_len)
  return out


# ------------------------------------------------------------------ the SmolLM2 MIND step


def smollm2_shape(student: str) -> tuple[dict, str]:
  """SmolLM2-135M's shape fields and where they came from: the checkpoint imported at
  `student` when there is one (its meta, as train.stated_model_config reads it), else the
  published shape."""
  if not has_import(student):
    return dict(SMOLLM2_135M), "published shape (no import at --student)"
  saved = checkpoint.read_meta(student, fallback=True)[1]["model"]
  return {key: saved[key] for key in SMOLLM2_135M}, f"shape of the import at {student}"


def smollm2_configs(args, shape: dict) -> dict:
  """The table's union and MIND training configs on `shape`, in bf16 compute (fp32 master
  weights) with --remat; random weights (no train.init_from)."""
  mind_path = repo_path(SMOLLM2_MIND)
  configs = {}
  for name, spec in (("union", f"{repo_path('configs/baselines/union.py')}:{mind_path}"),
                     ("mind", mind_path)):
    config = load_config_file(spec)
    config.model.update(shape)
    config.model.update(dict(dtype="bfloat16", param_dtype="float32", remat=args.remat))
    config.train.init_from = ""
    if args.cpu_smoke:
      config.train.seq_len = SMOLLM2_SMOKE_LENGTHS["row_len"]
    configs[name] = config
  return configs


def smollm2_batch(config, perspectives: int, max_len: int, shards: int) -> dict:
  """train.batch_size questions x `perspectives` random rationales (mind_vs_union's batch)
  packed into rows of train.seq_len tokens as train.packing does; as many rows as they
  need, rounded up to a multiple of the batch shards so that the rows split evenly."""
  padded = mind_vs_union.make_batch(config.train.batch_size, perspectives, max_len,
                                    config.model.vocab_size)
  rows = packing.rows_needed(padded, config.train.seq_len, 1)
  rows = -(-rows // shards) * shards
  return packing.pack_batch(padded, rows, config.train.seq_len, 1,
                            config.mind.max_answer_tokens)


def run_smollm2(args, mesh, deadline: float) -> dict:
  """The MIND and union joint steps of the pretrained testbed's student: steps/s, tokens/s
  and MFU of each (part 2 of the docstring)."""
  shape, source = smollm2_shape(repo_path(args.student))
  if args.cpu_smoke:
    shape.update(SMOLLM2_SMOKE)
  configs = smollm2_configs(args, shape)
  mind = configs["mind"]
  data = load_config_file(repo_path(SMOLLM2_DATA))
  perspectives = len(data.perspectives.names)
  max_len = SMOLLM2_SMOKE_LENGTHS["max_len"] if args.cpu_smoke else data.encode.max_len
  batch = smollm2_batch(mind, perspectives, max_len, mesh.shape["data"] * mesh.shape["fsdp"])
  out = time_joint_steps(configs, batch, mesh, args.mind_steps, deadline,
                         mind.train.loss_chunk_tokens)
  model = DecoderConfig.from_config(mind.model)
  row_len = mind.train.seq_len
  tokens = int((batch["packed_segments"] > 0).sum())  # real rationale tokens, no padding
  peak = perf.peak_flops_per_device(mesh.devices.flat[0], args.peak_flops)
  for name in configs:
    tokens_per_s = tokens / out[f"{name}_step_s"]
    out[f"{name}_steps_per_s"] = 1.0 / out[f"{name}_step_s"]
    out[f"{name}_tokens_per_s"] = tokens_per_s
    out[f"{name}_mfu"] = perf.mfu(model, row_len, tokens_per_s, mesh.size, peak)
  out.update(shape_source=source, params=model.num_params(), layers=model.num_layers,
             vocab_size=model.vocab_size, dtype=model.dtype, param_dtype=model.param_dtype,
             remat=model.remat, lora_rank=mind.lora.rank, questions=mind.train.batch_size,
             perspectives=perspectives, max_len=max_len, rows=batch["packed_ids"].shape[1],
             row_len=row_len, tokens_per_step=tokens, fill=packing.fill_fraction(batch),
             dropped=int(batch["packing_dropped"].sum()), peak_flops_per_device=peak,
             flops_per_token=perf.flops_per_token(model, row_len))
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
  lines += smollm2_lines(r.get("smollm2"))
  lines.append(f"total {r['wall_s']:.0f} s (budget {r['time_budget_s']:.0f} s)")
  return lines


def smollm2_lines(m: dict | None) -> list[str]:
  if not m:
    return []
  if "error" in m:
    return [f"SmolLM2 MIND step: {m['error']}"]
  dtype = "bf16" if m["dtype"] == "bfloat16" else m["dtype"]
  lines = [f"SmolLM2-135M MIND step ({m['shape_source']}; random weights): "
           f"{m['params'] / 1e6:.1f}M params, {m['layers']} layers, {dtype} compute / "
           f"{m['param_dtype']} params, LoRA r={m['lora_rank']}, remat {m['remat']}",
           f"  batch: {m['questions']} questions x {m['perspectives']} perspectives (T <= "
           f"{m['max_len']}) packed into {m['rows']} rows of {m['row_len']}: "
           f"{m['tokens_per_step']} real tokens/step, fill {m['fill']:.0%}"]
  for name in ("mind", "union"):
    lines.append(f"  {name:<5} step s {m[f'{name}_step_s']:.4f} | steps/s "
                 f"{m[f'{name}_steps_per_s']:.2f} | tokens/s {m[f'{name}_tokens_per_s']:,.0f} | "
                 f"MFU {_fmt(m[f'{name}_mfu'], '.1%')} | compile s "
                 f"{m[f'{name}_compile_s']:.1f}")
  lines.append(f"  MIND / union step time {m['mind_union_ratio']:.3f}")
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
  sm = r.get("smollm2") or {}
  if "mind_union_ratio" in sm:
    shape = (f"{sm['questions']}x{sm['perspectives']} packed into {sm['rows']}x{sm['row_len']}, "
             f"{'bf16' if sm['dtype'] == 'bfloat16' else sm['dtype']}, LoRA r={sm['lora_rank']}")
    rows += [(f"SmolLM2-135M MIND step ({shape}): steps/s, tokens/s, MFU",
              f"{sm['mind_steps_per_s']:.2f}, {sm['mind_tokens_per_s']:,.0f}, "
              f"{_fmt(sm['mind_mfu'], '.1%')}"),
             ("SmolLM2-135M union step: steps/s, tokens/s, MFU",
              f"{sm['union_steps_per_s']:.2f}, {sm['union_tokens_per_s']:,.0f}, "
              f"{_fmt(sm['union_mfu'], '.1%')}")]
  table = "\n".join(f"| {k} | {v} |" for k, v in rows)
  return (f"\n## gpu_check: {r['device_kind']} x{r['device_count']}, {r['date']}\n\n"
          f"`{r['command']}`\n\n| | |\n|---|---|\n{table}\n")


def append_results_md(path: str, results: dict) -> None:
  with open(path, "a") as f:
    f.write(markdown_section(results))


# ------------------------------------------------------------------ --table


# The experiment config's fields on a GPU: the CPU table's cuts undone (joint_steps comes
# from --table_steps); and the --cpu_smoke table, which only checks the wiring.
TABLE_GPU = {"seeds": "(0,1,2)", "workers": 1, "eval.id_size": 200, "eval.ood_size": 100}
TABLE_GPU_METHODS = "zero_shot,single_path,union,mind"
TABLE_SMOKE = {"seeds": "(0,)", "workers": 1, "joint_steps": 2, "ta_warmup_steps": 0,
               "eval.id_size": 4, "eval.ood_size": 4, "eval.max_new_tokens": 8,
               "eval.batch_size": 4}
TABLE_SMOKE_METHODS = "zero_shot,mind"
# The student config's fields on a GPU (configs/testbed_smollm2/mind.py is a CPU config).
TABLE_GPU_STUDENT = {"model.dtype": "bfloat16", "model.remat": "dots",
                     "train.keep_freed_host_memory": False}

STUDENT_CONFIG = '''"""Written by benchmarks/gpu_check.py --table: {config}
with the student imported at {student}."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file({config!r})
  config.train.init_from = {student!r}
  config.tokenizer.path = {tokenizer!r}
{fields}  return config
'''
DATA_CONFIG = '''"""Written by benchmarks/gpu_check.py --table: {config}
in the tokenizer at {tokenizer}."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file({config!r})
  config.encode.tokenizer_path = {tokenizer!r}
  return config
'''


def write_table_configs(out: str, student: str, fields: dict) -> tuple[str, str]:
  """The table's student and data configs pointed at `student` (the testbed's own name
  runs/smollm2 relative to the working directory; the experiment config has no field for
  a student's overrides), written into out/gpu_configs/: the runner, and a rerun that
  resumes the table, read them as config files. Their paths (student, data)."""
  tokenizer = os.path.join(student, "tokenizer")
  lines = "".join(f"  config.{key} = {value!r}\n" for key, value in fields.items())
  texts = dict(student=STUDENT_CONFIG.format(config=repo_path(SMOLLM2_MIND), student=student,
                                             tokenizer=tokenizer, fields=lines),
               data=DATA_CONFIG.format(config=repo_path(SMOLLM2_DATA), tokenizer=tokenizer))
  folder = os.path.join(out, "gpu_configs")
  os.makedirs(folder, exist_ok=True)
  for name, text in texts.items():
    with open(os.path.join(folder, name + ".py"), "w") as f:
      f.write(text)
  return os.path.join(folder, "student.py"), os.path.join(folder, "data.py")


def run_table(args) -> dict:
  """--table: the pretrained testbed's table through the experiment runner."""
  student = repo_path(args.student)
  if not has_import(student):
    raise faults.BadInput(
        f"--table needs SmolLM2 imported at {student}, and there is none: make it with "
        f"`{IMPORT_COMMAND}` where there is network (the GPU machine has none) and bring "
        "it along, or point --student at one")
  out = repo_path(args.table_out)
  if args.cpu_smoke:  # the student config's own fp32 and remat: bf16 is slow on CPU
    fields, methods, student_fields = TABLE_SMOKE, TABLE_SMOKE_METHODS, {}
  else:
    fields = dict(TABLE_GPU, joint_steps=args.table_steps)
    methods, student_fields = TABLE_GPU_METHODS, TABLE_GPU_STUDENT
  student_config, data_config = write_table_configs(out, student, student_fields)
  runner_argv = ["--config", repo_path(SMOLLM2_TABLE), "--out", out, "--methods", methods,
                 f"--config.student_config={student_config}",
                 f"--config.data_config={data_config}"]
  runner_argv += [f"--config.{key}={value}" for key, value in fields.items()]
  print("gpu_check --table: python -m mind_jax.eval.experiment " + shlex.join(runner_argv),
        flush=True)
  from mind_jax.eval import experiment  # here: parts 1-4 need none of the runner's imports
  start = time.perf_counter()
  summary = experiment.main(runner_argv)
  wall = time.perf_counter() - start
  results = dict(table_md=os.path.join(out, "results.md"),
                 table_json=os.path.join(out, "results.json"), wall_s=wall,
                 time_budget_s=args.time_budget_s, best_single=summary.get("best_single"),
                 runner_argv=runner_argv)
  over = " - over budget: lower --table_steps" if wall > args.time_budget_s else ""
  print(f"table: {results['table_md']} (and results.json); wall {wall:.0f} s (budget "
        f"{args.time_budget_s:.0f} s){over}", flush=True)
  return results


# ------------------------------------------------------------------ main


def write_outputs(args, results: dict) -> None:
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  if args.results_md and not args.table:
    append_results_md(args.results_md, results)


def run_part(results: dict, key: str, part) -> None:
  """results[key] = part(), or its error: parts 1 and 2 failing leaves the others to run."""
  try:
    results[key] = part()
  except Exception as error:  # noqa: BLE001 - report it; the other numbers still come
    results[key] = dict(error=f"{type(error).__name__}: {error}"[:500])


@faults.exit_cleanly  # bad input (--table without the import) is one line, exit 2
def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.table:
    results = run_table(args)
    write_outputs(args, results)
    return results
  start = time.perf_counter()
  deadline = start + args.time_budget_s
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
  print(f"gpu_check on {device.device_kind} x{mesh.size}: MIND vs union, the SmolLM2 MIND "
        f"step, then the batch search", flush=True)
  if not args.skip_mind:
    run_part(results, "mind", lambda: run_mind_vs_union(args, student, mesh, deadline))
  if not args.skip_smollm2:
    run_part(results, "smollm2", lambda: run_smollm2(args, mesh, deadline))
  results["sft"] = run_sft(args, config, mesh, deadline=deadline)
  results["wall_s"] = time.perf_counter() - start
  print("\n".join(report_lines(results)), flush=True)
  write_outputs(args, results)
  return results


if __name__ == "__main__":
  main()
