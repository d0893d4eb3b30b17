"""`python -m mind_jax.demo --workdir runs/demo`: MIND end to end on a CPU, in one directory.

1. build the demo rationale records: reasoning-gym gsm_symbolic (the training
   templates), 8 perspectives from the offline *demonstration* template teacher,
   judged, resampled, embedded with MiniLM           -> <workdir>/data
2. MIND: TA warm-up, then joint training of a small Llama-shaped student from
   scratch (configs/mind_demo.py)                     -> <workdir>/train
   (TensorBoard logs, alpha_per_perspective.png, checkpoints)
3. evaluate: held-out questions of the training templates (ID) and held-out
   templates plus other reasoning-gym arithmetic tasks (OOD) -> results.json
4. export to Hugging Face format                      -> <workdir>/hf
5. reload the export with transformers alone and answer one held-out question.
Every step resumes or reuses its output when the demo is run again. The workdir may be
local or gs://bucket/... (mind_jax.paths).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import ml_collections

from mind_jax import compile_cache, cpu_backend, export_hf, faults, paths, progress, train
from mind_jax.config import load_config, parse_args
from mind_jax.data import build, encode
from mind_jax.eval import run as eval_run, suites as suites_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # local: this package
DATA_CONFIG = os.path.join(REPO, "configs", "data", "demo.py")
TRAIN_CONFIG = os.path.join(REPO, "configs", "mind_demo.py")


def answer_with_transformers(hf_dir: str, question: str, max_new_tokens: int) -> str:
  """Greedy answer from the exported model, loaded by transformers alone (a remote
  export is downloaded first: transformers reads local files)."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  with paths.local_copy(hf_dir) as local:
    tokenizer = AutoTokenizer.from_pretrained(local)  # local: paths.local_copy
    model = AutoModelForCausalLM.from_pretrained(local)  # local: paths.local_copy
  ids = encode.prompt_ids(tokenizer, question)
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
  return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def _timed(timings: dict, name: str, fn, *args, **kwargs):
  start = time.perf_counter()
  result = fn(*args, **kwargs)
  timings[name] = round(time.perf_counter() - start, 1)
  return result


def run(workdir: str, questions: int | None = None, steps: int | None = None,
        warmup_steps: int | None = None, eval_size: int = 60,
        max_new_tokens: int = 160, config: ml_collections.ConfigDict | None = None) -> dict:
  """The demo in `workdir`; `config` is the training config (default: configs/mind_demo.py),
  changed here (records dir, steps)."""
  workdir = paths.absolute(workdir)
  data_dir, train_dir, hf_dir = (os.path.join(workdir, d) for d in ("data", "train", "hf"))
  timings: dict[str, float] = {}

  data_config = load_config(DATA_CONFIG)
  if questions:
    data_config.questions.rg_size = questions
  manifest = _timed(timings, "build_s", build.build, data_config, data_dir)

  config = config if config is not None else load_config(TRAIN_CONFIG)
  config.data.records_dir = data_dir
  if steps:
    config.train.steps = steps
  if warmup_steps is not None:
    config.mind.ta_warmup_steps = warmup_steps
  _timed(timings, "train_s", train.train, config, train_dir)

  train_questions = suites_lib.training_questions(data_dir)
  suites = suites_lib.build_suites("id,ood", train_questions, id_size=eval_size,
                                   ood_size=eval_size)
  results = _timed(timings, "eval_s", eval_run.evaluate, train_dir, suites,
                   max_new_tokens=max_new_tokens, out=os.path.join(workdir, "results.json"))

  paths.rmtree(hf_dir)  # re-running the demo re-exports
  _timed(timings, "export_s", export_hf.export_hf, train_dir, hf_dir)
  held_out = suites[0].questions[0]
  answer = _timed(timings, "reload_generate_s", answer_with_transformers, hf_dir,
                  held_out.question, max_new_tokens)

  summary = dict(
      workdir=workdir, records=manifest["num_examples"], rationales=manifest["counts"][
          "slots_written"], steps=f"{config.mind.ta_warmup_steps} TA warm-up + "
      f"{config.train.steps} joint",
      accuracy={s["name"]: f"{s['correct']}/{s['n']}" for s in results["suites"]},
      question=held_out.question, gold=held_out.answer, transformers_answer=answer,
      timings=timings)
  paths.write_whole(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  print("\n==== mind_jax demo ====")
  print(eval_run.format_table(results))
  for key, value in summary.items():
    print(f"{key:>20}: {value}")
  print(f"{'plots':>20}: {os.path.join(train_dir, train.ALPHA_PLOT)}")
  print(f"{'TensorBoard':>20}: tensorboard --logdir {os.path.join(train_dir, 'tensorboard')}")
  return summary


@faults.exit_cleanly
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   epilog="override a field of configs/mind_demo.py: "
                                   "--config.a.b=value, e.g. --config.train.batch_size=8")
  parser.add_argument("--workdir", default="runs/demo", help="where everything of the demo goes")
  parser.add_argument("--questions", type=int, default=None,
                      help="gsm_symbolic questions to build from (default: the data config's)")
  parser.add_argument("--steps", type=int, default=None,
                      help="joint MIND steps (default: configs/mind_demo.py)")
  parser.add_argument("--warmup_steps", type=int, default=None, help="TA warm-up steps")
  parser.add_argument("--eval_size", type=int, default=60, help="questions per eval suite")
  parser.add_argument("--max_new_tokens", type=int, default=160,
                      help="generation budget per answer")
  args = parse_args(parser, argv)
  progress.quiet_library_logs()
  config = load_config(TRAIN_CONFIG, args.overrides)  # checks them before anything runs
  cpu_backend.prepare(config.train)  # before the JAX backend starts, or it changes nothing
  compile_cache.enable(config.train.compilation_cache_dir)  # before the first compile
  run(args.workdir, args.questions, args.steps, args.warmup_steps, args.eval_size,
      args.max_new_tokens, config)


if __name__ == "__main__":
  main()
