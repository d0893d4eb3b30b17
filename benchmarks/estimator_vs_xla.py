"""The memory estimate (mind_jax/perf.py) against XLA's account of the compiled step, on CPU.

    python benchmarks/estimator_vs_xla.py [--json out.json] [--only NAME ...]

Each shape is a config that `mind_jax.train` builds as it would for a run (sft_task or
mind_task, on built-in data or synthetic rationale records), whose train step is
compiled without running it. XLA's number is what the compiled step holds per device:

    arguments + outputs - aliased + temporaries

(the state and the batch going in; the new state and the metrics coming out, less the
outputs written into the donated state's buffers; XLA's temporary buffer at its peak,
which holds the gradients, activations and logits). The estimate is
perf.estimate_memory, the function mind_jax.train checks before it compiles. The
ratio is estimate / XLA: above 1 the estimate is on the safe side.

The shapes: an SFT step, and one with LoRA; a padded MIND step ([B, K, T]); a packed
MIND step (train.packing); the packed step with LoRA; the packed step with FSDP over 8
simulated devices. A shape whose feature the trainer does not support yet (LoRA with
method=mind) is reported as skipped, never measured as something else.
CPU numbers: fp32 compute (XLA's CPU backend computes bf16 matmuls by way of fp32) and no
remat (XLA:CPU schedules the recomputed forward early and keeps it, so remat saves
nothing there; TPU and GPU schedules keep it late).

What the ratios said on 2 cores of an Intel Xeon (2026): 0.81-0.89 on one device (XLA:CPU
also keeps transposed copies of saved activations for its weight-gradient matmuls), and
0.30 for the FSDP shape: the decoder constrains no activation to the batch axes, so XLA
propagates the embedding table's fsdp sharding (its "embed" axis) into the activations and
every device computes the whole micro-batch. With the residual stream constrained to
("data", "fsdp") after the embedding lookup, the same step holds 166.9 MiB (0.81). The
estimate assumes that split, as FSDP means it.
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # the FSDP shape needs 8 devices; set before jax starts
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import argparse
import dataclasses
import subprocess
import tempfile
from typing import Callable

import jax

from mind_jax import checkpoint, perf, sharding
from mind_jax import tokenizer as tokenizer_lib, train
from mind_jax.config import default_config
from mind_jax.data import records
from mind_jax.models import decoder
from mind_jax import paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


def cpu_model() -> str:
  """`lscpu`'s model name: every row says on which CPU it was measured."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return "unknown CPU"
  for line in out.splitlines():
    if line.startswith("Model name:"):
      return line.split(":", 1)[1].strip()
  return "unknown CPU"


def write_records(out: str, num_examples: int, num_perspectives: int, max_len: int,
                  embed_dim: int, seed: int = 0) -> str:
  """Synthetic well-formed rationale records with a real tokenizer and manifest."""
  tokenizer = tokenizer_lib.train_bpe([f"question {i}? rationale {i} answer {i}"
                                       for i in range(200)], 300)
  tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
  spec = records.RecordSpec(num_perspectives, max_len, embed_dim)
  examples = records.synthetic_examples(num_examples, spec, seed=seed,
                                        vocab_size=len(tokenizer))
  shards = records.write_shards(examples, out, 2, spec)
  records.write_manifest(out, dict(
      perspectives=[f"perspective_{k}" for k in range(num_perspectives)],
      num_perspectives=num_perspectives, max_len=max_len,
      tokenizer=dict(name="synthetic-bpe", fingerprint=tokenizer_lib.fingerprint(tokenizer))),
      shards, spec)
  return out


def write_base_checkpoint(workdir: str, model_config) -> str:
  """A random base model checkpoint, as import_hf writes one: LoRA's train.init_from."""
  params = decoder.init_params(decoder.DecoderConfig.from_config(model_config),
                               jax.random.PRNGKey(0))
  with checkpoint.manager(workdir, async_save=False) as mngr:
    checkpoint.save(mngr, 0, params, {"model": dict(model_config), "config": {}})
  return workdir


@dataclasses.dataclass
class Compiled:
  """A config's train step as mind_jax.train builds it, compiled, with both accounts."""
  task: train.Task
  compiled: object
  batch: dict
  estimate: dict
  xla: dict


def compile_step(config, workdir: str, mesh, phase: str = "",
                 compiler_options: dict | None = None) -> Compiled:
  """Build the task as train() does, compile its step (the last phase: the joint one for
  MIND) on the first batch's shapes, and take perf's estimate as _check_memory does.
  compiler_options: XLA's (tests pass cheaper code generation; the measured rows none)."""
  task = (train.mind_task if config.method == "mind" else train.sft_task)(config, workdir, mesh)
  phase = phase or list(task.step_fns)[-1]
  batch = next(task.batches(0))
  abstract_batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), batch)
  state = sharding.with_shardings(task.abstract, task.shardings)
  compiled = task.step_fns[phase].lower(state, abstract_batch).compile(compiler_options)
  mind = perf.MindShape.from_state(task.abstract, len(task.names)) if task.names else None
  estimate = perf.estimate_memory(config, dict(mesh.shape), task.model_config, mind)
  mem = compiled.memory_analysis()
  xla = dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
             aliased=mem.alias_size_in_bytes, temporaries=mem.temp_size_in_bytes,
             total=perf.compiled_peak_bytes(compiled))
  return Compiled(task, compiled, batch, estimate, xla)


# ------------------------------------------------------------------ the shapes


def base_config(method: str, records_dir: str):
  """A 4-layer, 8192-vocab student, fp32, no remat; MIND on records of K=8, T=256."""
  c = default_config()
  c.method = method
  m = c.model
  m.family, m.vocab_size, m.hidden_size, m.intermediate_size = "llama", 8192, 256, 688
  m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim = 4, 4, 2, 64
  c.mesh.data = 1
  c.train.seq_len = 256
  c.train.async_checkpointing = False
  if method == "sft":
    c.train.batch_size = 16
    c.data.num_examples = 64
    c.tokenizer.bpe_vocab_size = 300
  else:
    c.data.source, c.data.records_dir = "records", records_dir
    c.data.shuffle_buffer = 64
    c.train.batch_size = 4
    c.mind.ta_warmup_steps = 0
  return c


def _packed(c, rows: int = 12):
  c.train.packing, c.train.packed_rows = True, rows
  return c


def _lora(c):
  c.lora.rank, c.lora.base_dtype = 8, "bfloat16"
  c.train.init_from = "BASE"  # measure() writes the base checkpoint
  return _packed(c) if c.method == "mind" else c


def _fsdp(c):
  c.mesh.fsdp, c.train.batch_size = 8, 8
  c.mesh.data = 1
  return _packed(c, rows=16)


# name -> (what, method, change to the base config, devices, what it needs in the tree)
SHAPES: dict[str, tuple[str, str, Callable, int, str]] = {
    "sft": ("SFT step, B=16 x T=256", "sft", lambda c: c, 1, ""),
    "mind_padded": ("MIND step, padded [B=4, K=8, T=256]", "mind", lambda c: c, 1, ""),
    "mind_packed": ("MIND step, packed, B=4, 12 rows of 256", "mind", _packed, 1, "packing"),
    "sft_lora": ("SFT step, LoRA r=8 on a frozen bf16 base", "sft", _lora, 1, "lora"),
    "mind_lora": ("MIND step, packed, LoRA r=8 on a frozen bf16 base", "mind", _lora, 1,
                  "lora"),
    "mind_fsdp8": ("MIND step, packed, B=8, 16 rows, FSDP over 8 devices", "mind", _fsdp, 8,
                   "packing"),
}


def unsupported(needs: str, built: Compiled) -> str:
  """Why a built step is not the shape asked for ("" when it is): a feature the trainer
  would silently leave out must not be measured as if it were in."""
  if needs == "packing" and "packed_ids" not in built.batch:
    return "train.mind_task does not pack batches (train.packing) yet"
  if needs == "lora" and built.task.abstract.frozen is None:
    return "train.mind_task does not apply config.lora yet"
  return ""


def measure(name: str, records_dir: str, workdir: str) -> dict:
  what, method, change, devices, needs = SHAPES[name]
  row = dict(name=name, what=what, cpu=cpu_model())
  config = change(base_config(method, records_dir))
  if config.train.init_from == "BASE":
    config.train.init_from = write_base_checkpoint(workdir + "_base", config.model)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:devices])
  try:
    built = compile_step(config, workdir, mesh)
  except NotImplementedError as error:  # a feature the trainer refuses for this method
    return dict(row, skipped=str(error))
  if unsupported(needs, built):
    return dict(row, skipped=unsupported(needs, built))
  return dict(row, devices=devices, estimate_bytes=built.estimate, xla_bytes=built.xla,
              ratio=built.estimate["total"] / built.xla["total"])


def table(rows: list[dict]) -> str:
  lines = [f"{'shape':<14} {'estimate MiB':>13} {'XLA MiB':>9} {'ratio':>6}  what (CPU)"]
  for r in rows:
    if "skipped" in r:
      lines.append(f"{r['name']:<14} {'skipped: ' + r['skipped']}")
      continue
    lines.append(f"{r['name']:<14} {r['estimate_bytes']['total'] / 2**20:13.1f} "
                 f"{r['xla_bytes']['total'] / 2**20:9.1f} {r['ratio']:6.2f}  "
                 f"{r['what']} ({r['cpu']})")
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--json", default="", help="also write the rows here")
  p.add_argument("--only", action="append", choices=sorted(SHAPES), default=[])
  args = p.parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    records_dir = write_records(os.path.join(tmp, "records"), 64, 8, 256, 384)
    for name in args.only or SHAPES:
      rows.append(measure(name, records_dir, os.path.join(tmp, "run_" + name)))
      print(table(rows[-1:]), flush=True)
  print("\n" + table(rows))
  for r in rows:
    if "skipped" not in r:
      parts = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in r["estimate_bytes"].items()
                        if k != "total" and v)
      xla = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in r["xla_bytes"].items())
      print(f"{r['name']}: estimate MiB: {parts}\n{' ' * len(r['name'])}  XLA MiB: {xla}")
  if args.json:
    paths.write_json(args.json, dict(rows=rows))
  return rows


if __name__ == "__main__":
  main()
