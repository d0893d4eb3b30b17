"""Data build throughput: the demo config (template teacher, real MiniLM encoder), per stage.

Builds `--size` questions into a fresh temporary directory by calling the
stage functions of mind_jax.data.build in the order build() calls them, timing
each: questions, generate, judge (with the arithmetic-step check and the
difficulty resampling), tokenizer (BPE training), encode (student sequences),
embeddings (MiniLM, including loading and compiling it), write (records
assembled, sharded and hashed, manifest). Then prints questions/s and
rationales/s over the whole build, and times a second build() in the same
directory, which reuses every stage (the restart cost).

    python benchmarks/build_throughput.py                 # 100 questions, ~20 s on 2 cores
    python benchmarks/build_throughput.py --size 400      # the demo's full size, ~40 s
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter; before tensorflow is imported

from mind_jax import config as config_lib  # noqa: E402
from mind_jax.data import build as build_lib, records  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "configs", "data", "demo.py")
STAGES = ("questions", "generate", "judge", "tokenizer", "encode", "embeddings", "write")


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   epilog="more config overrides: --config.a.b=value, "
                                   "e.g. --config.encode.max_len=512")
  parser.add_argument("--size", type=int, default=100, help="questions (questions.rg_size)")
  parser.add_argument("--config", default=DEMO, help="a configs/data/X.py file")
  parser.add_argument("--out", default="", help="build here (must not exist); default: a "
                      "temporary directory, deleted afterwards")
  return config_lib.parse_args(parser)


def timed_build(cfg, out: str) -> tuple[dict[str, float], dict]:
  """build_lib.build() stage by stage; returns (seconds per stage, numbers)."""
  seconds = {}

  def clock(stage, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
    return result

  items, _ = clock("questions", build_lib.stage_questions, cfg, out, False)
  generated = clock("generate", build_lib.stage_generate, cfg, out, items)
  verdicts = clock("judge", build_lib.stage_judge, cfg, out, items, generated)
  kept, difficulty, _ = clock("judge", build_lib.resample, cfg, items, verdicts)
  tokenizer = clock("tokenizer", build_lib.load_student_tokenizer, cfg, out, items, generated)
  encoded, _ = clock("encode", build_lib.encode_questions, cfg, tokenizer, kept, generated,
                     verdicts)
  # The texts to_examples embeds: every written question and each present slot's rationale.
  texts = [q.question for q, _ in encoded] + [
      slot[0]["rationale"] for _, row in encoded for slot in row if slot is not None]
  vectors = clock("embeddings", build_lib.embed_texts, cfg, out, texts)

  def write():
    examples = build_lib.to_examples(cfg, encoded, difficulty, lambda _: vectors)
    spec = records.RecordSpec(len(cfg.perspectives.names), cfg.encode.max_len,
                              vectors.shape[1])
    shards = records.write_shards(examples, out, cfg.write.num_shards, spec)
    records.write_manifest(out, {}, shards, spec)  # build() adds its counts to this one
    return examples, shards

  examples, shards = clock("write", write)
  verdict_counts = collections.Counter(v for per_q in verdicts.values() for v in per_q.values())
  attempted = sum(verdicts[q.id][name] == "correct" for q in kept
                  for name in cfg.perspectives.names)
  numbers = dict(questions=len(items), rationales=len(generated),
                 correct=verdict_counts["correct"], encoded=attempted, written=len(examples),
                 slots=int(sum(ex.present.sum() for ex in examples)), embedded=len(texts),
                 megabytes=sum(s["bytes"] for s in shards) / 2**20)
  return seconds, numbers


def main():
  args = parse_args()
  cfg = config_lib.load_config(args.config, [f"questions.rg_size={args.size}", *args.overrides])
  tmp = None
  if args.out:
    if os.path.exists(args.out):
      raise SystemExit(f"--out {args.out} exists: the benchmark times a fresh build")
    out = os.path.abspath(args.out)
  else:
    tmp = tempfile.mkdtemp(prefix="build_throughput_")
    out = os.path.join(tmp, "records")
  try:
    seconds, n = timed_build(cfg, out)
    total = sum(seconds.values())
    print(f"\ndemo build of {n['questions']} questions x {len(cfg.perspectives.names)} "
          f"perspectives ({cfg.teacher.backend} teacher) into {out}")
    print(f"{'stage':<12}{'seconds':>9}{'share':>8}   per item")
    per_item = dict(
        questions=f"{n['questions'] / max(seconds['questions'], 1e-9):,.0f} questions/s",
        generate=f"{n['rationales'] / max(seconds['generate'], 1e-9):,.0f} rationales/s",
        judge=f"{n['rationales'] / max(seconds['judge'], 1e-9):,.0f} rationales/s",
        tokenizer="BPE on every question and rationale",
        encode=f"{n['encoded'] / max(seconds['encode'], 1e-9):,.0f} sequences/s "
               f"({n['encoded']}: kept questions' correct rationales)",
        embeddings=f"{n['embedded'] / max(seconds['embeddings'], 1e-9):,.1f} texts/s "
                   f"({n['embedded']} texts, incl. encoder load + compile)",
        write=f"{n['written'] / max(seconds['write'], 1e-9):,.0f} records/s "
              f"({n['megabytes']:.1f} MiB)")
    for stage in STAGES:
      print(f"{stage:<12}{seconds[stage]:>9.2f}{seconds[stage] / total:>8.0%}   {per_item[stage]}")
    print(f"{'total':<12}{total:>9.2f}")
    print(f"overall: {n['questions'] / total:.2f} questions/s, {n['rationales'] / total:.1f} "
          f"rationales/s; {n['correct']} of {n['rationales']} rationales judged correct, "
          f"{n['written']} records with {n['slots']} slots written")

    start = time.perf_counter()
    manifest = build_lib.build(cfg, out)  # every stage reused; records written again
    print(f"second build() in the same directory (stages reused): "
          f"{time.perf_counter() - start:.2f} s")
    print(f"dropped: {manifest['dropped']}")
    assert manifest["num_examples"] == n["written"]
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
