"""`python -m mind_jax.demo --workdir runs/demo`: the whole spine in a few minutes on a CPU.

1. SFT-train the tiny config on the built-in data (resumes if interrupted);
2. export the checkpoint to a Hugging Face directory;
3. reload it with transformers (PyTorch) and answer a question it never saw;
4. import the export back and check the params round-trip exactly.
Everything goes into the workdir; a summary is printed at the end.
Until MIND training lands (issue 4), this demo is plain SFT.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import jax
import numpy as np

from mind_jax import checkpoint, export_hf, import_hf, progress, train
from mind_jax.config import default_config
from mind_jax.data import builtin, prompt

def demo_config(steps: int):
  config = default_config()
  config.train.steps = steps
  config.train.log_every = 25
  config.train.checkpoint_every = 100
  config.data.num_examples = 2048
  return config


def answer_with_transformers(hf_dir: str, question: str) -> str:
  """Greedy answer from the exported model, loaded by transformers alone."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  tokenizer = AutoTokenizer.from_pretrained(hf_dir)
  model = AutoModelForCausalLM.from_pretrained(hf_dir)
  ids = [tokenizer.bos_token_id] + tokenizer.encode(prompt.prompt_text(question),
                                                    add_special_tokens=False)
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), max_new_tokens=60, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
  return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def params_round_trip_exactly(trained_workdir: str, imported_workdir: str) -> bool:
  from mind_jax.export_hf import restore_params

  _, _, trained = restore_params(trained_workdir, None)
  _, _, imported = restore_params(imported_workdir, None)
  return all(np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(jax.device_get(trained)), jax.tree.leaves(jax.device_get(imported))))


def run(workdir: str, steps: int) -> dict:
  workdir = os.path.abspath(workdir)
  train_dir, hf_dir, imported_dir = (os.path.join(workdir, d) for d in ("train", "hf", "imported"))
  timings = {}

  start = time.perf_counter()
  config = demo_config(steps)
  train.train(config, train_dir)
  timings["train_s"] = time.perf_counter() - start

  start = time.perf_counter()
  shutil.rmtree(hf_dir, ignore_errors=True)  # re-running the demo re-exports
  export_hf.export_hf(train_dir, hf_dir)
  timings["export_s"] = time.perf_counter() - start

  # A question from the same generator, outside the training set.
  held_out = builtin.generate_examples(config.data.num_examples + 1, config.data.seed)[-1]
  start = time.perf_counter()
  answer = answer_with_transformers(hf_dir, held_out["question"])
  timings["generate_s"] = time.perf_counter() - start

  start = time.perf_counter()
  shutil.rmtree(imported_dir, ignore_errors=True)
  import_hf.import_hf(hf_dir, imported_dir)
  exact = params_round_trip_exactly(train_dir, imported_dir)
  timings["import_s"] = time.perf_counter() - start

  _, meta = checkpoint.read_meta(train_dir)
  summary = dict(workdir=workdir, steps=steps, hf_dir=hf_dir, question=held_out["question"],
                 gold=f"{held_out['rationale']} The answer is {held_out['answer']}.",
                 model_answer=answer, round_trip_exact=exact,
                 tokenizer=meta["tokenizer"]["fingerprint"][:12], **timings)
  print("\n==== mind_jax demo ====")
  for key, value in summary.items():
    print(f"{key:>16}: {value:.1f}" if isinstance(value, float) else f"{key:>16}: {value}")
  print(f"TensorBoard: tensorboard --logdir {os.path.join(train_dir, 'tensorboard')}")
  if not exact:
    raise SystemExit("export -> import did not give back the trained params")
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/demo", help="where everything of the demo goes")
  parser.add_argument("--steps", type=int, default=300, help="SFT steps")
  args = parser.parse_args(argv)
  progress.quiet_library_logs()
  run(args.workdir, args.steps)


if __name__ == "__main__":
  main()
