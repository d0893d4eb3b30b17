"""The experiment runner: MIND against its baselines and ablations, several seeds, one table.

    python -m mind_jax.eval.experiment --config configs/experiment.py --out runs/experiment

Protocol (every number is a field of configs/experiment.py, documented in
mind_jax/config.py:default_experiment_config):

1. The demo rationale records are built once (<out>/data).
2. Per seed, a pre-distillation student: the demo-shaped Llama trained from scratch
   by SFT on the built-in arithmetic word problems (configs/experiment_base.py).
   No pretrained weights are available offline; this base stands in for one.
   Evaluated as it is, it is the zero-shot row.
3. Per seed and method, the base is distilled on the records with the method's
   config (configs/mind_demo.py, configs/baselines/*). The budget is shared: the same
   student optimizer steps, questions per step, learning-rate schedule and data
   order. TA methods add TA-only warm-up steps with the student frozen.
4. Every student is evaluated on the same suites (greedy, judged), plus:
   - gold-solution NLL (nats/token) on the suites with gold rationales, which ranks
     students even where accuracy is 0 for all;
   - forgetting: accuracy and gold-solution NLL on held-out built-in problems, the
     pre-distillation task, reported as the change from that seed's base.
5. results.json (every run), results.md (mean ± std over seeds) and results.png.

Runs are resumable: a finished run's result.json is reused, an interrupted training
resumes from its checkpoint. A per-run line reports time used and the table's ETA.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time

from mind_jax import checkpoint, host_memory, progress, train
from mind_jax.config import load_config_file
from mind_jax.data import build, builtin
from mind_jax.data.questions import Question
from mind_jax.eval import run as eval_run, suites as suites_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def repo_path(path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(REPO, path)


# ------------------------------------------------------------------ what is measured


def pretask_suite(base_config, size: int, seed: int) -> suites_lib.Suite:
  """Held-out built-in problems (not among the base's training problems)."""
  seen = {e["question"] for e in builtin.generate_examples(base_config.data.num_examples,
                                                           base_config.data.seed)}
  held_out = [e for e in builtin.generate_examples(size * 4, seed) if e["question"] not in seen]
  if len(held_out) < size:
    raise ValueError(f"only {len(held_out)} held-out built-in problems for pretask_size={size}")
  return suites_lib.Suite("pretask", "numeric", [
      Question(id=f"pretask-{i}", question=e["question"], answer=e["answer"],
               rationale=e["rationale"]) for i, e in enumerate(held_out[:size])])


def evaluate_student(workdir: str, suites, pretask, ecfg) -> dict:
  """Accuracy per suite, gold-solution NLL where a suite has gold rationales, and
  the pre-distillation task's accuracy and NLL."""
  model = eval_run.load_model(workdir)
  out = dict(step=model.step, accuracy={}, gold_nll={})
  for suite in list(suites) + [pretask]:
    generations = eval_run.generate_answers(model, suite.questions, ecfg.max_new_tokens,
                                            ecfg.batch_size)
    scored = eval_run.score_suite(suite, generations, num_examples=2)
    out["accuracy"][suite.name] = scored["accuracy"]
    out.setdefault("examples", {})[suite.name] = scored["examples"]
    if any(q.rationale for q in suite.questions):
      out["gold_nll"][suite.name] = eval_run.gold_solution_nll(model, suite.questions,
                                                               ecfg.batch_size)["nll"]
  return out


# ------------------------------------------------------------------ training


def base_config(xcfg, data_dir: str, seed: int):
  config = load_config_file(repo_path(xcfg.base_config))
  config.tokenizer.path = os.path.join(data_dir, "tokenizer")
  config.train.seed = seed
  config.train.steps = config.train.checkpoint_every = xcfg.base_steps
  return config


def method_config(xcfg, method: str, data_dir: str, base_dir: str, seed: int):
  config = load_config_file(repo_path(dict(xcfg.methods)[method]))
  config.data.records_dir = data_dir
  config.train.init_from = base_dir
  config.train.seed = seed
  config.train.steps = config.train.checkpoint_every = xcfg.joint_steps
  config.mind.ta_warmup_steps = xcfg.ta_warmup_steps
  config.mind.ta_warmup_epochs = 0.0
  return config


def train_to_end(config, workdir: str) -> float:
  """Train (or finish an interrupted run); the seconds it took."""
  start = time.perf_counter()
  train.train(config, workdir)
  return time.perf_counter() - start


# ------------------------------------------------------------------ the table


def _mean_std(values: list[float]) -> tuple[float, float]:
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(results: dict, methods, suites: list[str], nll_suites: list[str]) -> dict:
  """Per method: mean and std over seeds of every metric, with the forgetting deltas."""
  table = {}
  for method in methods:
    runs = [r for r in results if r["method"] == method]
    base = {r["seed"]: r for r in results if r["method"] == "zero_shot"}
    row = {}
    for suite in suites:
      row[f"acc/{suite}"] = _mean_std([100 * r["accuracy"][suite] for r in runs])
    for suite in nll_suites:
      row[f"nll/{suite}"] = _mean_std([r["gold_nll"][suite] for r in runs])
    if base:
      row["forget/acc"] = _mean_std([100 * (r["accuracy"]["pretask"]
                                            - base[r["seed"]]["accuracy"]["pretask"])
                                     for r in runs])
      row["forget/nll"] = _mean_std([r["gold_nll"]["pretask"]
                                     - base[r["seed"]]["gold_nll"]["pretask"] for r in runs])
    row["train_s"] = _mean_std([r["train_s"] for r in runs])
    row["seeds"] = len(runs)
    table[method] = row
  return table


def format_markdown(xcfg, table: dict, suites: list[str], nll_suites: list[str],
                    command: str, wall_s: float, suite_sizes: dict) -> str:
  def cell(key, row, digits):
    mean, std = row[key]
    return f"{mean:.{digits}f} ± {std:.{digits}f}"

  lines = ["# MIND vs baselines on the demo records", "",
           f"Reproduce: `{command}` ({wall_s / 60:.0f} min on this machine).", "",
           f"Seeds {list(xcfg.seeds)}; mean ± std over seeds. Every distillation method: "
           f"{xcfg.joint_steps} student steps from the same per-seed base "
           f"({xcfg.base_steps} SFT steps on the built-in problems); TA methods add "
           f"{xcfg.ta_warmup_steps} TA-only warm-up steps. Greedy decoding, "
           f"{xcfg.eval.max_new_tokens} new tokens at most.", "",
           "## Accuracy (%)", "",
           "| method | " + " | ".join(f"{s} (n={suite_sizes[s]})" for s in suites) + " |",
           "|---|" + "---|" * len(suites)]
  for method, row in table.items():
    lines.append(f"| {method} | " + " | ".join(cell(f"acc/{s}", row, 1) for s in suites) + " |")
  lines += ["", "## Gold-solution NLL (nats/token, lower is better)", "",
            "| method | " + " | ".join(nll_suites) + " |", "|---|" + "---|" * len(nll_suites)]
  for method, row in table.items():
    lines.append(f"| {method} | " + " | ".join(cell(f"nll/{s}", row, 3) for s in nll_suites)
                 + " |")
  lines += ["", "## Forgetting: the pre-distillation task, change from the base", "",
            f"Held-out built-in problems (n={suite_sizes['pretask']}). Accuracy change in "
            "points (negative = forgot), NLL change in nats/token (positive = forgot).", "",
            "| method | accuracy change | NLL change | train time (s) |", "|---|---|---|---|"]
  for method, row in table.items():
    if "forget/acc" in row:
      lines.append(f"| {method} | {cell('forget/acc', row, 1)} | {cell('forget/nll', row, 3)}"
                   f" | {cell('train_s', row, 0)} |")
  return "\n".join(lines) + "\n"


def plot(table: dict, suites: list[str], nll_suites: list[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  panels = [("accuracy (%)", [f"acc/{s}" for s in suites], suites),
            ("gold-solution NLL (nats/token)", [f"nll/{s}" for s in nll_suites], nll_suites),
            ("forgetting: pretask NLL change", ["forget/nll"], ["pretask"])]
  methods = list(table)
  fig, axes = plt.subplots(1, 3, figsize=(18, 4.8),
                           gridspec_kw=dict(width_ratios=[len(suites), len(nll_suites), 1.2]))
  width = 0.8 / len(methods)
  for ax, (title, keys, labels) in zip(axes, panels):
    x = np.arange(len(keys))
    for i, method in enumerate(methods):
      if not all(k in table[method] for k in keys):
        continue
      means = [table[method][k][0] for k in keys]
      stds = [table[method][k][1] for k in keys]
      ax.bar(x + i * width, means, width, yerr=stds, label=method, capsize=2)
    ax.set_xticks(x + 0.4 - width / 2, labels, rotation=15, fontsize=8)
    ax.set_title(title)
  axes[0].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------ the loop


def run(xcfg, out: str, command: str) -> dict:
  out = os.path.abspath(out)
  start = time.perf_counter()
  data_dir = os.path.join(out, "data")
  build.build(build.load_config(repo_path(xcfg.data_config), []), data_dir)
  suites = suites_lib.build_suites(xcfg.eval.suites, suites_lib.training_questions(data_dir),
                                   id_size=xcfg.eval.id_size, ood_size=xcfg.eval.ood_size)
  pretask = pretask_suite(load_config_file(repo_path(xcfg.base_config)),
                          xcfg.eval.pretask_size, xcfg.eval.pretask_seed)
  methods = [name for name, _ in xcfg.methods]
  if "zero_shot" not in methods:
    raise ValueError("methods must include zero_shot: it is the base of the forgetting check")
  jobs = [(seed, method) for seed in xcfg.seeds for method in methods]
  results, base_s = [], 0.0
  for done, (seed, method) in enumerate(jobs):
    seed_dir = os.path.join(out, "runs", f"seed{seed}")
    base_dir = os.path.join(seed_dir, "base")
    result_path = os.path.join(seed_dir, method, "result.json")
    if os.path.isfile(result_path):
      with open(result_path) as f:
        results.append(json.load(f))
      continue
    run_start = time.perf_counter()
    if checkpoint.latest_step(base_dir) != xcfg.base_steps:
      base_s = train_to_end(base_config(xcfg, data_dir, seed), base_dir)
    if method == "zero_shot":
      train_s, workdir = base_s, base_dir
    else:
      workdir = os.path.join(seed_dir, method)
      train_s = train_to_end(method_config(xcfg, method, data_dir, base_dir, seed), workdir)
    result = dict(method=method, seed=seed, workdir=workdir, train_s=train_s,
                  **evaluate_student(workdir, suites, pretask, xcfg.eval))
    eval_run.write_json(result, result_path)
    results.append(result)
    elapsed = time.perf_counter() - start
    logging.info("[%d/%d] %s seed %d: %.0f s (train %.0f s); elapsed %.1f min, ETA %.1f min",
                 done + 1, len(jobs), method, seed, time.perf_counter() - run_start, train_s,
                 elapsed / 60, elapsed / 60 / (done + 1) * (len(jobs) - done - 1))
  return report(xcfg, out, results, suites, pretask, command, time.perf_counter() - start)


def report(xcfg, out: str, results: list[dict], suites, pretask, command: str,
           wall_s: float) -> dict:
  names = [s.name for s in suites]
  nll_suites = [name for name in names if name in results[0]["gold_nll"]]
  table = aggregate(results, [name for name, _ in xcfg.methods], names, nll_suites)
  sizes = {s.name: len(s.questions) for s in list(suites) + [pretask]}
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(format_markdown(xcfg, table, names, nll_suites, command, wall_s, sizes))
  plot(table, names, nll_suites, os.path.join(out, "results.png"))
  summary = dict(config=xcfg.to_dict(), command=command, wall_s=wall_s, table=table,
                 runs=[{k: v for k, v in r.items() if k != "examples"} for r in results])
  eval_run.write_json(summary, os.path.join(out, "results.json"))
  mind_alpha = os.path.join(out, "runs", f"seed{xcfg.seeds[0]}", "mind", train.ALPHA_PLOT)
  if os.path.isfile(mind_alpha):
    shutil.copy(mind_alpha, os.path.join(out, "mind_alpha_per_perspective.png"))
  print(open(os.path.join(out, "results.md")).read())
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=repo_path("configs/experiment.py"))
  parser.add_argument("--out", default="runs/experiment", help="every run, and the table")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a config field, e.g. --set joint_steps=50")
  parser.add_argument("--methods", default="",
                      help="comma-separated rows to run (default: every method of the config)")
  args = parser.parse_args(argv)
  progress.quiet_library_logs()
  xcfg = build.load_config(args.config, args.set)  # the same `a.b=value` overrides
  if args.methods:
    wanted, known = args.methods.split(","), dict(xcfg.methods)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
      raise ValueError(f"--methods {unknown}: not in the config's methods {list(known)}")
    xcfg.methods = tuple((m, known[m]) for m in wanted)
  if load_config_file(repo_path(xcfg.base_config)).train.keep_freed_host_memory:
    host_memory.keep_freed_memory()  # before the JAX backend starts, or it changes nothing
  command = "python -m mind_jax.eval.experiment " + " ".join(
      argv if argv is not None else sys.argv[1:])
  return run(xcfg, args.out, command)


if __name__ == "__main__":
  main()
