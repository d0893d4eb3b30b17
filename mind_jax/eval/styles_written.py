"""Which rationale style each student writes at test time, on the testbed (results/testbed/).

    python -m mind_jax.eval.styles_written --out runs/testbed [--methods union,mind]

A student trained on several styles still writes one style per answer: greedy decoding
commits to a style with its first tokens, and its accuracy is then roughly that style's.
For every finished run of a table (OUT/runs/seed*/METHOD, final checkpoint) this decodes
the ID suite again and assigns each generation to the style whose teacher rationale for
the same question it follows longest (`classify`); styles_written.md and .json in OUT
give, per method and over seeds, the share of answers in each style and the accuracy
within it.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
from random import Random

from mind_jax import paths, progress
from mind_jax.data import judge
from mind_jax.config import load_config
from mind_jax.data.teachers import styles
from mind_jax.eval import experiment, report
from mind_jax.eval import run as eval_run
from mind_jax.eval import suites as suites_lib

OTHER = "other"
RENDERINGS = 16     # teacher rationales per (question, style): verbose's fillers vary
MIN_PREFIX = 4      # a generation sharing fewer skeleton characters with every style is OTHER
_NUMBER_WORD = (r"(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
                r"thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|"
                r"thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand)")
_WORD_NUMBER = re.compile(rf"\b{_NUMBER_WORD}(?:[- ]{_NUMBER_WORD})*\b")


def skeleton(text: str) -> str:
  """The text with every digit replaced by '#' and every number in English words by 'W':
  a wrong digit does not hide which format was written, a column order still shows."""
  return re.sub(r"\d", "#", _WORD_NUMBER.sub("W", text.strip()))


def _common_prefix(a: str, b: str) -> int:
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  return n


def classify(question: str, generation: str) -> str:
  """The style whose teacher rationale for `question` shares the longest skeleton prefix
  with `generation` (ties go to the earlier style of styles.STYLES), or OTHER."""
  written = skeleton(generation)
  best, best_len = OTHER, MIN_PREFIX - 1
  for style in styles.STYLES:
    length = max(_common_prefix(written, skeleton(styles.rationale(question, style, Random(i))))
                 for i in range(RENDERINGS))
    if length > best_len:
      best, best_len = style, length
  return best


def tally(questions, generations) -> dict[str, dict]:
  """style -> {"n": answers written in it, "correct": how many of them are right}."""
  counts = collections.defaultdict(lambda: dict(n=0, correct=0))
  for q, text in zip(questions, generations):
    entry = counts[classify(q.question, text)]
    entry["n"] += 1
    entry["correct"] += int(judge.judge(text, q.answer, q.answer_format).correct)
  return dict(counts)


def markdown(table: dict, suite: str, command: str) -> str:
  columns = list(styles.STYLES) + [OTHER]
  lines = ["# The style each student writes at test time", "",
           f"Reproduce: `{command}`", "",
           f"Greedy generations on {suite}, each assigned to the teacher style it follows "
           "(mind_jax/eval/styles_written.py). Cells: share of answers in that style, % "
           "(accuracy within it, %), summed over seeds.", "",
           "| method | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
  for method, entry in table.items():
    total = sum(c["n"] for c in entry["styles"].values())
    cells = []
    for style in columns:
      c = entry["styles"].get(style, dict(n=0, correct=0))
      cells.append("-" if not c["n"] else
                   f"{100 * c['n'] / total:.0f} ({100 * c['correct'] / c['n']:.0f})")
    lines.append(f"| {method} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def run(out: str, config: str, methods: list[str], command: str) -> dict:
  xcfg = load_config(config)
  e = xcfg.eval
  data_dir = os.path.join(out, "data")
  suite = suites_lib.build_suites(e.suites, suites_lib.training_questions(data_dir),
                                  id_size=e.id_size, ood_size=e.ood_size)[0]
  table = {}
  for method in methods:
    entry = dict(seeds=[], styles=collections.defaultdict(lambda: dict(n=0, correct=0)))
    for seed in xcfg.seeds:
      workdir = os.path.join(out, "runs", f"seed{seed}", method.replace("/", "__"))
      if not paths.isfile(os.path.join(workdir, "result.json")):
        continue  # not finished: no row for it
      model = eval_run.load_model(workdir)
      generations = eval_run.generate_answers(model, suite.questions, e.max_new_tokens,
                                              e.batch_size)
      counts = tally(suite.questions, generations)
      for style, c in counts.items():
        entry["styles"][style]["n"] += c["n"]
        entry["styles"][style]["correct"] += c["correct"]
      entry["seeds"].append(seed)
      print(f"{method} seed {seed}: {json.dumps(counts)}", flush=True)
    if entry["seeds"]:
      table[method] = dict(seeds=entry["seeds"], styles=dict(entry["styles"]))
  text = markdown(table, suite.name, command)
  paths.write_whole(os.path.join(out, "styles_written.md"), text)
  paths.write_json(os.path.join(out, "styles_written.json"),
                   dict(suite=suite.name, cpu=report.cpu_model(), command=command, methods=table))
  print(text)
  return table


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="the table's --out directory")
  parser.add_argument("--config", default=experiment.repo_path("configs/testbed/experiment.py"))
  parser.add_argument("--methods", default="union,mcc_kd_like,loss_weighted,mind,"
                      "mind_no_fusion,mind_instant,mind_no_synergy,mind_floor")
  args = parser.parse_args(argv)
  progress.quiet_library_logs()
  command = "python -m mind_jax.eval.styles_written " + " ".join(
      argv if argv is not None else __import__("sys").argv[1:])
  run(args.out, args.config, args.methods.split(","), command)


if __name__ == "__main__":
  main()
