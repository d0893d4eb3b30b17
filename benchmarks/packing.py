"""Packed vs padded MIND batches: the useful-token fraction, and step time per useful token.

  python benchmarks/packing.py [--records runs/demo_data] [--steps 3] [--json out.json]

Two length distributions:
  demo       the demo records (configs/data/demo.py; built into --records if missing):
             B=4 questions x K=8 perspectives, T=320 (packed rows of 640), the demo student;
  realistic  rationales of 100-2000 tokens, log-normal (median 500, sigma 0.7), T=2048,
             B=8 x K=8 in 2 micro-batches of questions (optim.grad_accum_steps; one padded
             micro-batch is 65k tokens), the demo student with 2 of its 4 layers; the
             fraction also for the whole batch packed at once (realistic_m1).
Useful tokens are the real (non-padding) tokens of the present rationales; the fraction
is useful / computed tokens over one epoch of batches (400 for the synthetic one), with
the row count train.packed_rows = 0 would choose (the first 64 batches' worst), and
balanced windows of 16 batches (train.packing_window). The step time is the median joint
MIND step over --steps runs, packed and padded interleaved in one process.
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

from mind_jax import host_memory, mind_step, sharding, state as state_lib
from mind_jax.config import load_config_file
from mind_jax.data import packing, reader as reader_lib
from mind_jax import paths
from mind_jax.models.decoder import DecoderConfig
from mind_jax.ta import TAConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW, SAMPLE = 16, 64  # train.packing_window; the batches train.packed_rows=0 looks at
DEMO_ROW_LENGTH = 640     # train.seq_len of the packed demo run: two 320-token slots
REALISTIC = dict(batch=8, perspectives=8, seq_len=2048, micro_batches=2, median=500.0,
                 sigma=0.7, shortest=100, longest=2000, prompt=48, answer=4, embed=384)


def cpu_name() -> str:
  out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  return next((line.split(":", 1)[1].strip() for line in out.splitlines()
               if line.startswith("Model name")), "unknown CPU")


# ------------------------------------------------------------------ batches


def demo_batches(records_dir: str, batch_size: int):
  reader = reader_lib.RecordReader(records_dir, batch_size, seed=0)
  return reader.iterator, reader.batches_per_epoch


def realistic_batch(rng: np.random.Generator, vocab: int) -> dict[str, np.ndarray]:
  r = REALISTIC
  b, k, t = r["batch"], r["perspectives"], r["seq_len"]
  lengths = np.clip(np.exp(rng.normal(np.log(r["median"]), r["sigma"], (b, k))),
                    r["shortest"], r["longest"]).astype(np.int64)
  positions = np.arange(t)[None, None, :]
  real = positions < lengths[..., None]
  answer = real & (positions >= lengths[..., None] - r["answer"] - 1) & (
      positions < lengths[..., None] - 1)
  ids = rng.integers(3, vocab, (b, k, t)).astype(np.int32)
  ids[answer] = 7  # the same answer tokens in every rationale
  return dict(example_index=rng.permutation(512)[:b].astype(np.int32),
              input_ids=np.where(real, ids, 0).astype(np.int32),
              attention_mask=real.astype(np.int32),
              loss_mask=(real & (positions >= r["prompt"])).astype(np.int32),
              answer_mask=answer.astype(np.int32), present=np.ones((b, k), np.float32),
              question_embedding=rng.standard_normal((b, r["embed"])).astype(np.float32),
              rationale_embedding=rng.standard_normal((b, k, r["embed"])).astype(np.float32))


def realistic_batches(vocab: int):
  def read_from(position):
    for i in itertools.count(position):
      yield realistic_batch(np.random.default_rng(i), vocab)
  return read_from, 400


# ------------------------------------------------------------------ useful tokens


def fractions(read_from, num_batches: int, length: int, micro_batches: int) -> dict:
  """Useful-token fraction, padded and packed, over num_batches batches."""
  rows = packing.choose_rows(itertools.islice(
      packing.balanced_batches(read_from, 0, WINDOW, micro_batches), SAMPLE), length,
      micro_batches, 1)
  useful = padded = overflow = 0
  for batch in itertools.islice(read_from(0), num_batches):
    useful += packing.slot_lengths(batch).sum()
    padded += batch["input_ids"].size
  for batch in itertools.islice(packing.balanced_batches(read_from, 0, WINDOW, micro_batches),
                                num_batches):
    overflow += packing.pack_batch(batch, rows, length, micro_batches,
                                   0)["packing_dropped"].sum()
  packed = num_batches * micro_batches * rows * length
  return dict(rows=rows, padded_fraction=useful / padded, packed_fraction=useful / packed,
              overflow=int(overflow), batches=num_batches)


# ------------------------------------------------------------------ step time


def compiled_step(config, batch: dict, micro_batches: int, mesh):
  k = batch["present"].shape[1]
  model_config = DecoderConfig.from_config(config.model)
  ta_config = TAConfig.from_config(config.ta)
  settings = mind_step.MindSettings.from_config(config.mind, [f"p{i}" for i in range(k)])
  optimizer = state_lib.make_optimizer(config.optim, 1000)
  ta_optimizer = state_lib.make_ta_optimizer(config, 512, k)
  embed = batch["question_embedding"].shape[1]
  _, shardings = state_lib.abstract_mind_state_and_shardings(
      model_config, optimizer, ta_config, ta_optimizer, embed, k, mesh, config.mesh.rules, True)
  batch_shardings = mind_step.batch_shardings({key: v.shape for key, v in batch.items()}, mesh,
                                              config.mesh.rules)
  step = mind_step.jit_mind_step(model_config, ta_config, optimizer, ta_optimizer, settings,
                                 "joint", shardings, batch_shardings, micro_batches)
  state = state_lib.init_mind_state(model_config, optimizer, ta_config, ta_optimizer, embed, k,
                                    0, shardings, True)
  device_batch = {key: jax.device_put(v, batch_shardings[key]) for key, v in batch.items()}
  return dict(step=step.lower(state, device_batch).compile(), state=state, batch=device_batch)


def step_times(config, batch: dict, micro_batches: int, rows: int, length: int, steps: int,
               mesh) -> dict:
  """Median joint-step seconds, padded and packed into `rows` rows of `length` (the run's
  row count), and the useful tokens of the batch."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = -(-rows // shards) * shards
  packed = packing.pack_batch(batch, rows, length, micro_batches, config.mind.max_answer_tokens)
  runs = {"padded": compiled_step(config, batch, micro_batches, mesh),
          "packed": compiled_step(config, packed, micro_batches, mesh)}
  times = {name: [] for name in runs}
  for i in range(steps + 1):  # the first round warms up; interleaved for equal load
    for name, run in runs.items():
      start = time.perf_counter()
      run["state"], metrics = run["step"](run["state"], run["batch"])
      jax.block_until_ready(metrics)
      if i:
        times[name].append(time.perf_counter() - start)
  useful = int(packing.slot_lengths(batch).sum())
  out = dict(useful_tokens=useful)
  for name in runs:
    out[f"{name}_step_s"] = statistics.median(times[name])
    out[f"{name}_s_per_useful_ktok"] = 1000 * out[f"{name}_step_s"] / useful
  out["speedup_per_useful_token"] = out["padded_step_s"] / out["packed_step_s"]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--records", default=os.path.join(REPO, "runs", "demo_data"))
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  config = load_config_file(os.path.join(REPO, "configs", "mind_demo.py"))
  if config.train.keep_freed_host_memory:
    host_memory.keep_freed_memory()
  if not os.path.exists(os.path.join(args.records, "manifest.json")):
    subprocess.run([sys.executable, "-m", "mind_jax.data.build", "--config",
                    os.path.join(REPO, "configs", "data", "demo.py"), "--out", args.records],
                   check=True)
  mesh = sharding.make_mesh(config.mesh)
  results = {}
  read_from, epoch = demo_batches(args.records, config.train.batch_size)
  results["demo"] = fractions(read_from, epoch, DEMO_ROW_LENGTH, 1)
  first = next(packing.balanced_batches(read_from, 0, WINDOW, 1))
  results["demo"].update(step_times(config, first, 1, results["demo"]["rows"],
                                    DEMO_ROW_LENGTH, args.steps, mesh))
  read_from, count = realistic_batches(config.model.vocab_size)
  r = REALISTIC
  results["realistic_m1"] = fractions(read_from, count, r["seq_len"], 1)
  results["realistic"] = fractions(read_from, count, r["seq_len"], r["micro_batches"])
  long_config = load_config_file(os.path.join(REPO, "configs", "mind_demo.py"))
  long_config.model.max_position_embeddings = r["seq_len"]
  long_config.model.causal_block_size = 256
  long_config.model.num_layers = 2
  first = next(packing.balanced_batches(read_from, 0, WINDOW, r["micro_batches"]))
  results["realistic"].update(step_times(long_config, first, r["micro_batches"],
                                         results["realistic"]["rows"], r["seq_len"],
                                         args.steps, mesh))

  print(f"CPU: {cpu_name()}; {jax.devices()[0].device_kind} x{len(jax.devices())}")
  print(f"{'distribution':<12}{'padded frac':>12}{'packed frac':>12}{'rows':>6}{'overflow':>9}"
        f"{'padded s':>10}{'packed s':>10}{'padded s/ktok':>14}{'packed s/ktok':>14}"
        f"{'speed-up':>9}")
  for name, r in results.items():
    if "padded_step_s" not in r:
      print(f"{name:<12}{r['padded_fraction']:>12.3f}{r['packed_fraction']:>12.3f}{r['rows']:>6}"
            f"{r['overflow']:>9}   (fraction only)")
      continue
    print(f"{name:<12}{r['padded_fraction']:>12.3f}{r['packed_fraction']:>12.3f}{r['rows']:>6}"
          f"{r['overflow']:>9}{r['padded_step_s']:>10.3f}{r['packed_step_s']:>10.3f}"
          f"{r['padded_s_per_useful_ktok']:>14.4f}{r['packed_s_per_useful_ktok']:>14.4f}"
          f"{r['speedup_per_useful_token']:>9.2f}")
  if args.json:
    paths.write_json(args.json, dict(cpu=cpu_name(), **{f"{d}_{k}": v for d, r in results.items()
                                                 for k, v in r.items()}))


if __name__ == "__main__":
  main()
