"""MIND step time / multi-path union step time, on the same (B, K, T) batch, in one process.

  python benchmarks/mind_vs_union.py [--batch 4 --perspectives 8 --seq_len 320 --steps 10]

MIND adds the TA (forward, VJP, inertia filter, MultiSteps) and the pairwise
answer-consistency term to the union step's one student forward over B*K
sequences; the target is a ratio of 1.10 or less. Peak memory is XLA's own
account of each compiled step (arguments + outputs + temporaries, less aliased).
The model is configs/mind_demo.py's student.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import numpy as np

from mind_jax import paths  # noqa: E402
from mind_jax import host_memory, mind_step, sharding, state as state_lib
from mind_jax.config import load_config_file
from mind_jax.data import records
from mind_jax.models import decoder, lora
from mind_jax.models.decoder import DecoderConfig
from mind_jax.ta import TAConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBED_DIM = 384
NUM_EXAMPLES = 512


def make_batch(b: int, k: int, t: int, vocab: int) -> dict[str, np.ndarray]:
  examples = records.synthetic_examples(b, records.RecordSpec(k, t, EMBED_DIM), seed=0,
                                        vocab_size=vocab)
  attention = [(np.arange(t)[None] < ex.lengths[:, None]).astype(np.int32) for ex in examples]
  return dict(example_index=np.arange(b, dtype=np.int32),
              input_ids=np.stack([ex.input_ids for ex in examples]),
              attention_mask=np.stack(attention),
              loss_mask=np.stack([ex.loss_mask for ex in examples]),
              answer_mask=np.stack([ex.answer_mask for ex in examples]),
              present=np.stack([ex.present for ex in examples]).astype(np.float32),
              question_embedding=np.stack([ex.question_embedding for ex in examples]),
              rationale_embedding=np.stack([ex.rationale_embedding for ex in examples]))


def build_step(config, batch: dict, mesh, loss_chunk_tokens: int = 0):
  """The compiled joint step of a MIND-trainer config (MIND or a baseline) on `batch`, a
  padded or a packed (mind_jax/data/packing.py) one. With config.lora.rank > 0 the
  student is LoRA adapters on a frozen base of random weights (only shapes matter here).
  loss_chunk_tokens: 0 (all logits at once) is what this benchmark has always measured;
  train.loss_chunk_tokens is what training uses."""
  k = batch["present"].shape[1]
  names = [f"p{i}" for i in range(k)]
  model_config = DecoderConfig.from_config(config.model)
  lora_config = lora.LoraConfig.from_config(config.lora)
  ta_config = TAConfig.from_config(config.ta)
  settings = dataclasses.replace(mind_step.MindSettings.from_config(config.mind, names),
                                 loss_chunk_tokens=loss_chunk_tokens)
  optimizer = state_lib.make_optimizer(config.optim, 1000)
  ta_optimizer = state_lib.make_ta_optimizer(config, NUM_EXAMPLES, k)
  _, shardings = state_lib.abstract_mind_state_and_shardings(
      model_config, optimizer, ta_config, ta_optimizer, EMBED_DIM, k, mesh, config.mesh.rules,
      settings.uses_ta, lora_config)
  batch_shardings = mind_step.batch_shardings({key: v.shape for key, v in batch.items()},
                                              mesh, config.mesh.rules)
  step = mind_step.jit_mind_step(model_config, ta_config, optimizer, ta_optimizer, settings,
                                 "joint", shardings, batch_shardings, 1, lora_config)
  state = state_lib.init_mind_state(model_config, optimizer, ta_config, ta_optimizer, EMBED_DIM,
                                    k, 0, shardings, settings.uses_ta, lora_config)
  if lora_config.enabled:
    state = state_lib.with_frozen_base(state, random_base(model_config, mesh, config.mesh.rules),
                                       model_config, lora_config, shardings)
  device_batch = {key: jax.device_put(v, batch_shardings[key]) for key, v in batch.items()}
  start = time.perf_counter()
  compiled = step.lower(state, device_batch).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes) if mem is not None else float("nan")
  return dict(step=compiled, state=state, batch=device_batch, compile_s=compile_s, peak=peak,
              settings=settings, params=model_config.num_params())


def random_base(model_config: DecoderConfig, mesh, rules):
  """Random base params made in their shardings (never whole on one device first)."""
  shapes, axes = decoder.abstract_params(model_config)
  return jax.jit(lambda rng: decoder.init_params(model_config, rng),
                 out_shardings=sharding.tree_shardings(shapes, axes, mesh, rules))(
                     jax.random.PRNGKey(1))


def time_steps(run: dict, steps: int) -> list[float]:
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run["state"], metrics = run["step"](run["state"], run["batch"])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--perspectives", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=320)  # the demo records' max_len
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--json", default="", help="also write the key numbers here")
  args = parser.parse_args()
  if load_config_file(os.path.join(REPO, "configs", "mind_demo.py")).train.keep_freed_host_memory:
    host_memory.keep_freed_memory()  # as training does; before the JAX backend starts
  mesh = sharding.make_mesh(load_config_file(os.path.join(REPO, "configs", "mind_demo.py")).mesh)
  base = load_config_file(os.path.join(REPO, "configs", "mind_demo.py"))
  batch = make_batch(args.batch, args.perspectives, args.seq_len, base.model.vocab_size)
  runs = {name: build_step(load_config_file(os.path.join(REPO, "configs", path)), batch, mesh)
          for name, path in (("union", "baselines/union.py"), ("mind", "mind_demo.py"))}
  for run in runs.values():
    time_steps(run, 2)  # warm-up
  times = {name: [] for name in runs}
  for _ in range(args.steps):  # interleaved, so both see the same machine load
    for name, run in runs.items():
      times[name] += time_steps(run, 1)

  print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}; student "
        f"{runs['mind']['params'] / 1e6:.2f}M params; batch B={args.batch} K={args.perspectives} "
        f"T={args.seq_len} ({args.batch * args.perspectives * args.seq_len} tokens/step)")
  print(f"{'method':<8}{'median step s':>15}{'mean step s':>13}{'compile s':>11}{'peak MiB':>10}")
  for name, run in runs.items():
    print(f"{name:<8}{statistics.median(times[name]):>15.4f}{statistics.mean(times[name]):>13.4f}"
          f"{run['compile_s']:>11.1f}{run['peak'] / 2**20:>10.1f}")
  ratio = statistics.median(times["mind"]) / statistics.median(times["union"])
  print(f"MIND / union step time: {ratio:.3f} (target <= 1.10); peak memory ratio "
        f"{runs['mind']['peak'] / runs['union']['peak']:.3f}")
  if args.json:  # the numbers benchmarks/run_all.py tabulates
    paths.write_json(args.json, dict(ratio=ratio, **{f"{name}_step_s": statistics.median(times[name])
                                             for name in runs},
                             **{f"{name}_compile_s": run["compile_s"]
                                for name, run in runs.items()},
                             peak_ratio=runs["mind"]["peak"] / runs["union"]["peak"]))


if __name__ == "__main__":
  main()
