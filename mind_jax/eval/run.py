"""Evaluate a checkpoint: greedy answers on suites, judged; optionally general-text perplexity.

    python -m mind_jax.eval.run --checkpoint runs/demo --suites id,ood,gsm8k=gsm8k.jsonl \
        [--train_questions runs/demo_data] [--max_new_tokens 256 --batch_size 16 --limit N] \
        [--perplexity] [--out results.json]

Each question is prompted as the student was trained (encode.prompt_ids: the
chat template, or "Question: ...\\nAnswer:"), answered greedily with
mind_jax.decode, and the answer judged with judge.judge in the suite's format.
results.json holds, per suite, n, correct, accuracy, the no-answer count and a
few example generations; a table is printed. Suites are described in
mind_jax/eval/suites.py.

Forgetting: `--perplexity` adds the token-mean NLL and perplexity of the model
on general text (mind_jax/eval/general_text.py, or --perplexity_file); compare
the student before and after training on the same text.
"""
from __future__ import annotations

import argparse
import json
import functools
import logging
import math
import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from mind_jax import (checkpoint, compile_cache, decode, faults, inference, losses, paths,
                      progress, sharding)
from mind_jax.config import default_config
from mind_jax.data import encode
from mind_jax.data.questions import Question
from mind_jax.eval import answers, general_text, perspectives as perspectives_lib
from mind_jax.eval import suites as suites_lib
# Answering and judging live in eval/answers.py; these names are this module's API too.
from mind_jax.eval.answers import generate_answers, score_suite  # noqa: F401
from mind_jax.inference import Model
from mind_jax.models import decoder


def load_model(workdir: str, step: int | None = None, all_devices: bool = False) -> Model:
  """inference.load_model on the evaluation's mesh. all_devices: params sharded over
  every device (fsdp axis), the batch split over them; else on the first device."""
  return inference.load_model(workdir, step, sharding.device_mesh() if all_devices else None)


# ------------------------------------------------------------------ perplexity


@functools.lru_cache(maxsize=8)
def _nll_program(cfg: decoder.DecoderConfig, mesh: Mesh, chunk: int):
  """Jitted (params, ids, mask, weights) -> (NLL sum, token count) of next-token prediction,
  its logits made `chunk` positions at a time (losses.chunked_token_nll), as training does."""
  model = decoder.Decoder(cfg)

  def nll_sum(params, ids, mask, weights):
    return losses.model_next_token_loss(model, {"params": params}, ids, weights, chunk,
                                        attention_mask=mask)

  return jax.jit(nll_sum, out_shardings=sharding.replicated(mesh))


def _global_array(host: np.ndarray, mesh: Mesh, rules) -> jax.Array:
  """A host batch split over the mesh's batch axes; every process holds all of it."""
  spec = sharding.batch_sharding(mesh, rules, host.shape)
  return jax.make_array_from_callback(host.shape, spec, lambda index: host[index])


def _scored_nll(model: Model, rows: Sequence[tuple[list[int], list[int]]],
                batch_size: int) -> tuple[float, int]:
  """(NLL sum, scored tokens) over `rows` of (token ids, loss mask): token t is
  scored, predicted from tokens < t, where its mask is 1."""
  # The training default (config.train.loss_chunk_tokens): a long text's [length, vocab]
  # logits need not exist at once here either.
  program = _nll_program(model.cfg, model.mesh, default_config().train.loss_chunk_tokens)
  params = decode.place_params(model.params, model.cfg, model.mesh, model.rules)
  total, count = 0.0, 0.0
  for batch_rows in answers.length_batches([len(ids) for ids, _ in rows], batch_size):
    length = decode.prompt_bucket(max(len(rows[i][0]) for i in batch_rows))
    ids = np.full((batch_size, length), model.pad_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    weights = np.zeros((batch_size, length), np.int32)
    # Filler rows (copies that keep the batch shape) keep weight 0: not scored.
    for row, i in enumerate(batch_rows + [batch_rows[-1]] * (batch_size - len(batch_rows))):
      n = len(rows[i][0])
      ids[row, :n], mask[row, :n] = rows[i][0], 1
      if row < len(batch_rows):
        weights[row, :n] = rows[i][1]
    s, c = program(params, *(_global_array(a, model.mesh, model.rules)
                             for a in (ids, mask, weights)))
    total, count = total + float(s), count + float(c)
  return total, int(count)


def model_perplexity(model: Model, texts: Sequence[str], batch_size: int = 8,
                     max_len: int = 512) -> dict:
  """Token-mean NLL of `texts` and its exp. Each text is bos (if the tokenizer
  has one) + its tokens, cut to max_len; every token after the first is scored."""
  if not texts:
    raise ValueError("perplexity: no texts")
  bos = [model.tokenizer.bos_token_id] if model.tokenizer.bos_token_id is not None else []
  full = [bos + model.tokenizer.encode(t, add_special_tokens=False) for t in texts]
  seqs = [s[:max_len] for s in full]
  total, count = _scored_nll(model, [(s, [1] * len(s)) for s in seqs], batch_size)
  nll = total / count
  return dict(nll=nll, perplexity=math.exp(nll), tokens=count, texts=len(texts),
              truncated=sum(len(s) > max_len for s in full))


def gold_solution_nll(model: Model, questions: Sequence[Question], batch_size: int = 8,
                      max_len: int = 512) -> dict:
  """Token-mean NLL of each question's gold solution (rationale, then " The answer
  is X."), teacher-forced after its prompt, in the training format (encode.encode_slot).

  Accuracy of a tiny student is often 0 for every method; this still ranks them by
  how likely each finds a correct solution. Questions without a gold rationale, or
  longer than max_len, are skipped and counted."""
  rows, skipped = [], dict(no_rationale=0, too_long=0)
  for q in questions:
    if not q.rationale:
      skipped["no_rationale"] += 1
      continue
    try:
      slot = encode.encode_slot(model.tokenizer, q.question, q.rationale, q.answer, max_len)
    except encode.SequenceTooLong:
      skipped["too_long"] += 1
      continue
    n = int(slot["length"])
    rows.append((slot["input_ids"][:n].tolist(), slot["loss_mask"][:n].tolist()))
  if not rows:
    raise ValueError(f"gold-solution NLL: none of {len(questions)} questions is scorable "
                     f"({skipped})")
  total, count = _scored_nll(model, rows, batch_size)
  return dict(nll=total / count, tokens=count, questions=len(rows), skipped=skipped)


def perplexity(workdir: str, texts: Sequence[str] | None = None, batch_size: int = 8,
               max_len: int = 512, step: int | None = None, all_devices: bool = False) -> dict:
  """General-text perplexity of a checkpoint (default texts: general_text.PARAGRAPHS)."""
  model = load_model(workdir, step, all_devices)
  return model_perplexity(model, texts or general_text.PARAGRAPHS, batch_size, max_len)


# ------------------------------------------------------------------ evaluate


def evaluate(workdir: str, suites: Sequence[suites_lib.Suite], max_new_tokens: int = 256,
             batch_size: int = 16, limit: int | None = None, out: str | None = None,
             step: int | None = None, num_examples: int = 3,
             perplexity_texts: Sequence[str] | None = None, perplexity_max_len: int = 512,
             all_devices: bool = False) -> dict:
  """Answer and judge every suite (its first `limit` questions); with
  perplexity_texts also the general-text perplexity. Writes `out` (JSON) if given."""
  model = load_model(workdir, step, all_devices)
  results = dict(checkpoint=model.workdir, step=model.step,
                 settings=dict(max_new_tokens=max_new_tokens, batch_size=batch_size,
                               limit=limit, decoding="greedy"),
                 suites=[])
  for suite in suites:
    suite = suite.limited(limit)
    generations = generate_answers(model, suite.questions, max_new_tokens, batch_size)
    results["suites"].append(score_suite(suite, generations, num_examples))
    logging.info("%s: %.3f of %d", suite.name, results["suites"][-1]["accuracy"],
                 len(suite.questions))
  if perplexity_texts is not None:
    results["perplexity"] = model_perplexity(model, perplexity_texts, batch_size,
                                             perplexity_max_len)
  if out and jax.process_index() == 0:
    paths.write_json(out, results)
  return results


def format_table(results: dict) -> str:
  rows = [f"{'suite':<24} {'format':<8} {'n':>6} {'correct':>8} {'accuracy':>9} {'no_answer':>10}"]
  for s in results["suites"]:
    rows.append(f"{s['name']:<24} {s['format']:<8} {s['n']:>6} {s['correct']:>8} "
                f"{s['accuracy']:>9.3f} {s['no_answer']:>10}")
  if "perplexity" in results:
    p = results["perplexity"]
    rows.append(f"general-text perplexity {p['perplexity']:.3f} (NLL {p['nll']:.4f} over "
                f"{p['tokens']} tokens, {p['texts']} texts)")
  return "\n".join(rows)


# ------------------------------------------------------------------ CLI


def read_texts(path: str) -> list[str]:
  """A text file's paragraphs (separated by blank lines); local or remote."""
  with paths.open(path, "rb") as f:
    text = f.read().decode("utf-8")
  return [p.strip() for p in text.split("\n\n") if p.strip()]


def default_train_questions(meta: dict) -> str:
  """The records directory a checkpoint (its meta) trained on (config data.records_dir),
  or ""."""
  config = meta.get("config") or {}  # None: import_hf's
  data = config.get("data", {})
  return data.get("records_dir", "") if data.get("source") == "records" else ""


def _evaluate_perspective(args, train_path: str, train, suites) -> dict:
  """--perspective: a tagged student asked for one perspective, the dev-best, or a vote."""
  manifest_path = os.path.join(train_path, "manifest.json") if train_path else ""
  if not manifest_path or not paths.isfile(manifest_path):
    raise faults.BadInput(f"--perspective {args.perspective}: needs the records the student "
                          f"trained on (--train_questions DIR with a manifest.json), got "
                          f"{train_path or 'none'}")
  manifest = paths.read_json(manifest_path)
  names = manifest["perspectives"]
  perspectives_lib.check_mode(args.perspective, names, manifest.get("perspective_tags", False),
                              "--perspective")
  dev = None
  if args.perspective in (perspectives_lib.BEST, perspectives_lib.VOTE):
    dev = suites_lib.dev_suite(args.suites, train, suites, args.dev_size, args.dev_seed)
  compile_cache.enable(args.compilation_cache_dir)
  model = load_model(args.checkpoint, args.step, all_devices=not args.one_device)
  dev_scores = (perspectives_lib.dev_accuracy(model, dev, names, args.max_new_tokens,
                                              args.batch_size) if dev else None)
  result = perspectives_lib.accuracy_by_mode(
      model, [s.limited(args.limit) for s in suites], args.perspective, names, dev_scores,
      args.max_new_tokens, args.batch_size)
  if args.out and jax.process_index() == 0:
    paths.write_json(args.out, result)
  print(json.dumps(result, indent=1))
  return result


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="workdir, its checkpoints/ or a step dir")
  p.add_argument("--step", type=int, default=None, help="default: the newest committed step")
  p.add_argument("--suites", default="", help="comma-separated: id, ood, ood_templates, "
                 "rg:<task>, <benchmark>=<file.jsonl> (benchmarks: "
                 f"{', '.join(sorted(suites_lib.BENCHMARKS))})")
  p.add_argument("--train_questions", default="",
                 help="what the run trained on (records dir, configs/data/X.py or questions "
                 "JSONL); default: the checkpoint's data.records_dir")
  p.add_argument("--id_size", type=int, default=200)
  p.add_argument("--id_seed", type=int, default=1000)
  p.add_argument("--ood_size", type=int, default=100, help="questions per OOD suite")
  p.add_argument("--ood_seed", type=int, default=2000)
  p.add_argument("--ood_tasks", default=",".join(suites_lib.DEFAULT_OOD_TASKS),
                 help="reasoning-gym tasks of the 'ood' suite")
  p.add_argument("--held_out_fraction", type=float, default=0.25,
                 help="share of gsm_symbolic templates held out (ood_templates)")
  p.add_argument("--template_split_seed", type=int, default=0)
  p.add_argument("--gpqa_seed", type=int, default=0, help="GPQA option shuffle seed")
  p.add_argument("--max_new_tokens", type=int, default=256)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--limit", type=int, default=None, help="first N questions of each suite")
  p.add_argument("--num_examples", type=int, default=3, help="generations kept per suite")
  p.add_argument("--perplexity", action="store_true", help="also general-text perplexity")
  p.add_argument("--perplexity_file", default="",
                 help="text file (paragraphs separated by blank lines); default: built-in")
  p.add_argument("--perplexity_max_len", type=int, default=512)
  p.add_argument("--one_device", action="store_true",
                 help="params on the first device only (default: sharded over all devices)")
  p.add_argument("--out", default="", help="results JSON path (local or gs://)")
  p.add_argument("--perspective", default="none",
                 help="a student trained with encode.perspective_tags: 'none' (untagged "
                 "prompt), a perspective name, 'best' (best on a dev split) or 'vote' "
                 "(majority over the perspectives); mind_jax/eval/perspectives.py")
  p.add_argument("--dev_size", type=int, default=100, help="best / vote: dev questions")
  p.add_argument("--dev_seed", type=int, default=3000)
  p.add_argument("--compilation_cache_dir", default="",
                 help="persistent XLA compilation cache, as train.compilation_cache_dir: "
                 "default $JAX_COMPILATION_CACHE_DIR, else ~/.cache/mind_jax/xla; 'none': off")
  return p.parse_args(argv)


@faults.exit_cleanly
def main(argv=None) -> dict:
  args = parse_args(argv)
  progress.quiet_library_logs()
  ood_tasks = [t for t in args.ood_tasks.split(",") if t]
  suites_lib.check_spec(args.suites, ood_tasks)  # a mistyped name is found before any load
  # Then the checkpoint: a mistyped --checkpoint is reported as what it is (no committed
  # checkpoint there), not as what its meta would have supplied (the training
  # questions), and before any suite is built.
  _, meta = checkpoint.read_meta(args.checkpoint, args.step)
  train_path = args.train_questions or default_train_questions(meta)
  train = suites_lib.training_questions(train_path) if train_path else []
  suites = suites_lib.build_suites(
      args.suites, train, id_size=args.id_size, id_seed=args.id_seed, ood_size=args.ood_size,
      ood_seed=args.ood_seed, ood_tasks=ood_tasks,
      held_out_fraction=args.held_out_fraction, template_split_seed=args.template_split_seed,
      gpqa_seed=args.gpqa_seed)
  texts = None
  if args.perplexity:
    texts = read_texts(args.perplexity_file) if args.perplexity_file else general_text.PARAGRAPHS
  if args.perspective != perspectives_lib.NONE:
    return _evaluate_perspective(args, train_path, train, suites)
  # Before the first compile, after every input is checked (bad input stays one line).
  compile_cache.enable(args.compilation_cache_dir)
  results = evaluate(args.checkpoint, suites, args.max_new_tokens, args.batch_size, args.limit,
                     args.out or None, args.step, args.num_examples, texts,
                     args.perplexity_max_len, all_devices=not args.one_device)
  print(format_table(results))
  return results


if __name__ == "__main__":
  main()
