"""The experiment's table: statistics over seeds, paired comparisons, markdown and plots.

Every number here is computed from the runs' result.json files (experiment.py):

  per row and metric   mean, sample std and the 95% CI of the mean (Student's t, n-1 df)
  derived rows         single-path mean over perspectives, and the oracle-best single path
                       (the perspective with the best mean on the first suite: chosen with
                       the test results, so an upper bound for any single-path user)
  paired comparisons   per seed, a row minus another on the same seed (same start, same
                       data order): mean difference, its 95% CI and the seeds won
  alpha vs single      the TA's time-averaged alpha per perspective beside each
                       perspective's single-path accuracy, with their Spearman correlation
"""
from __future__ import annotations

import math
import os
import platform
import statistics

import numpy as np
from scipy import stats

from mind_jax import paths, progress

BEST_SINGLE = "single_path (oracle best)"
MEAN_SINGLE = "single_path (mean of K)"


def cpu_model() -> str:
  """The CPU's model name (lscpu's "Model name"), for every timing we publish."""
  try:
    with open("/proc/cpuinfo") as f:  # local: this machine's CPU
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


# ------------------------------------------------------------------ statistics


def summarize(values: list[float]) -> dict:
  """mean, std and the half-width of the 95% CI of the mean (nan with one value)."""
  n = len(values)
  mean = statistics.fmean(values)
  std = statistics.stdev(values) if n > 1 else 0.0
  half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
  return dict(mean=mean, std=std, ci=half, n=n, values=list(values))


def metric_values(run: dict, suites: list[str], base: dict | None) -> dict[str, float]:
  """The per-run numbers the table aggregates (accuracies in percent)."""
  values = {f"acc/{s}": 100 * run["accuracy"][s] for s in suites}
  values.update({f"nll/{s}": v for s, v in run.get("gold_nll", {}).items()})
  if base is not None and "pretask" in run["accuracy"]:
    values["forget/acc"] = 100 * (run["accuracy"]["pretask"] - base["accuracy"]["pretask"])
    if "pretask" in run.get("gold_nll", {}):
      values["forget/nll"] = run["gold_nll"]["pretask"] - base["gold_nll"]["pretask"]
  if "general_text_nll" in run:
    values["nll/general_text"] = run["general_text_nll"]
    if base is not None and "general_text_nll" in base:
      values["forget/general_text_nll"] = run["general_text_nll"] - base["general_text_nll"]
  values["tokens_M"] = run.get("trained_tokens_per_step", 0.0) * run.get("steps", 0) / 1e6
  values["train_s"] = run["train_s"]
  return values


def per_seed(results: list[dict], suites: list[str], zero_shot: str) -> dict[str, dict]:
  """row -> seed -> metric values."""
  bases = {r["seed"]: r for r in results if r["method"] == zero_shot}
  table: dict[str, dict] = {}
  for r in results:
    table.setdefault(r["method"], {})[r["seed"]] = metric_values(r, suites, bases.get(r["seed"]))
  return table


def add_single_summaries(rows: dict[str, dict], single_rows: list[str], first_key: str) -> str:
  """Adds MEAN_SINGLE (per seed, the mean over the single-path rows) and BEST_SINGLE (the
  single-path row with the best mean of `first_key`); returns the best row's name."""
  if not single_rows:
    return ""
  seeds = sorted(set.intersection(*(set(rows[name]) for name in single_rows)))
  rows[MEAN_SINGLE] = {seed: {key: statistics.fmean(rows[name][seed][key] for name in single_rows)
                              for key in rows[single_rows[0]][seed]} for seed in seeds}
  best = max(single_rows, key=lambda name: statistics.fmean(
      rows[name][seed][first_key] for seed in seeds))
  rows[BEST_SINGLE] = rows[best]
  return best


def aggregate(rows: dict[str, dict]) -> dict[str, dict[str, dict]]:
  """row -> metric -> summarize() over seeds."""
  out = {}
  for name, by_seed in rows.items():
    keys = list(next(iter(by_seed.values())))
    out[name] = {key: summarize([by_seed[seed][key] for seed in sorted(by_seed)])
                 for key in keys}
  return out


def paired(rows: dict[str, dict], a: str, b: str, key: str) -> dict:
  """Row a minus row b on `key`, seed by seed (the seeds both have)."""
  seeds = sorted(set(rows[a]) & set(rows[b]))
  diffs = [rows[a][s][key] - rows[b][s][key] for s in seeds]
  return dict(summarize(diffs), wins=sum(d > 0 for d in diffs), ties=sum(d == 0 for d in diffs),
              losses=sum(d < 0 for d in diffs), seeds=seeds)


def spearman(x: list[float], y: list[float]) -> float:
  return float(stats.spearmanr(x, y).statistic) if len(x) > 2 else float("nan")


def alpha_means(results: list[dict], row: str, perspectives: list[str]) -> dict | None:
  """Per perspective, the alpha of a TA row averaged over its logged joint steps and
  seeds, its final alpha (last logged step), and the entropy history (mean over seeds)."""
  runs = [r for r in results if r["method"] == row and r.get("alpha_history")]
  if not runs:
    return None
  over_time = np.mean([np.mean([h["alpha"] for h in r["alpha_history"]], axis=0) for r in runs],
                      axis=0)
  final = np.mean([r["alpha_history"][-1]["alpha"] for r in runs], axis=0)
  steps = [h["step"] for h in runs[0]["alpha_history"]]
  length = min(len(r["alpha_history"]) for r in runs)
  history = np.mean([[h["alpha"] for h in r["alpha_history"][:length]] for r in runs], axis=0)
  entropy = np.mean([[h["entropy"] for h in r["alpha_history"][:length]] for r in runs], axis=0)
  return dict(mean=dict(zip(perspectives, over_time.tolist())),
              final=dict(zip(perspectives, final.tolist())), steps=steps[:length],
              history=history.tolist(), entropy=entropy.tolist())


# ------------------------------------------------------------------ markdown


def _cell(s: dict, digits: int = 1, ci: bool = True) -> str:
  text = f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
  if ci and not math.isnan(s["ci"]):
    text += f" [{s['mean'] - s['ci']:.{digits}f}, {s['mean'] + s['ci']:.{digits}f}]"
  return text


def markdown(xcfg, table: dict, comparisons: dict, alpha: dict, single_rows: list[str],
             best_single: str, suites: list[str], sizes: dict, command: str, wall_s: float,
             perspectives: list[str]) -> str:
  seeds = list(xcfg.seeds)
  lines = [f"# {xcfg.title}", "",
           f"Reproduce: `{command}`", "",
           f"Wall time {wall_s / 60:.0f} min on {cpu_model()} ({os.cpu_count()} cores). "
           f"Seeds {seeds}. Every method: {xcfg.joint_steps} student steps of the same questions "
           f"in the same order from the same per-seed start; TA methods add "
           f"{xcfg.ta_warmup_steps} TA-only warm-up steps. Greedy decoding, exact match.", "",
           "Cells: mean ± std over seeds [95% CI of the mean, Student's t].", "",
           "## Accuracy (%)", "",
           "| method | " + " | ".join(f"{s} (n={sizes[s]})" for s in suites)
           + " | tokens trained (M) | train s/run |",
           "|---|" + "---|" * (len(suites) + 2)]
  for name, row in table.items():
    label = f"{name}: {best_single}" if name == BEST_SINGLE else name
    lines.append(f"| {label} | " + " | ".join(_cell(row[f"acc/{s}"]) for s in suites)
                 + f" | {row['tokens_M']['mean']:.2f} | {row['train_s']['mean']:.0f} |")
  if comparisons:
    lines += ["", "## Paired comparisons, per seed", "",
              "Row A minus row B on the same seed (same start, same data order).", "",
              "| A - B | suite | mean difference (points) | 95% CI | A wins / ties / losses |",
              "|---|---|---|---|---|"]
    for (a, b), by_suite in comparisons.items():
      for suite, c in by_suite.items():
        ci = "" if math.isnan(c["ci"]) else f"[{c['mean'] - c['ci']:+.1f}, {c['mean'] + c['ci']:+.1f}]"
        lines.append(f"| {a} - {b} | {suite} | {c['mean']:+.1f} | {ci} | "
                     f"{c['wins']} / {c['ties']} / {c['losses']} of {c['n']} |")
  if alpha and single_rows:
    lines += ["", "## Does the TA weight what this student learns best?", "",
              f"Single-path {suites[0]} accuracy per perspective (the ground truth of how "
              "learnable each one is for this student) beside the TA's alpha per perspective: "
              "the mean over the logged joint steps and the last logged step, averaged over "
              "seeds.", "",
              "| perspective | single-path acc (%) | " + " | ".join(
                  f"{row} alpha mean / final" for row in alpha) + " |",
              "|---|---|" + "---|" * len(alpha)]
    for p in perspectives:
      acc = table[f"single_path/{p}"][f"acc/{suites[0]}"]
      lines.append(f"| {p} | {_cell(acc, ci=False)} | " + " | ".join(
          f"{a['mean'][p]:.3f} / {a['final'][p]:.3f}" for a in alpha.values()) + " |")
    for row, a in alpha.items():
      rho = spearman([table[f"single_path/{p}"][f"acc/{suites[0]}"]["mean"] for p in perspectives],
                     [a["mean"][p] for p in perspectives])
      lines.append("")
      lines.append(f"{row}: Spearman correlation of mean alpha with single-path accuracy "
                   f"{rho:+.2f}; alpha entropy {a['entropy'][0]:.2f} at step {a['steps'][0]}, "
                   f"{a['entropy'][-1]:.2f} at step {a['steps'][-1]} (uniform over "
                   f"{len(perspectives)}: {math.log(len(perspectives)):.2f}).")
  extra = [k for k in next(iter(table.values())) if k.startswith(("nll/", "forget/"))]
  if extra:
    lines += ["", "## Gold-solution NLL and forgetting", "",
              "NLL in nats/token (lower is better); forgetting is the change from the same "
              "seed's start (accuracy points: negative = forgot; NLL: positive = forgot). "
              "general_text: prose far from the task (mind_jax/eval/general_text.py).", "",
              "| method | " + " | ".join(extra) + " |", "|---|" + "---|" * len(extra)]
    for name, row in table.items():
      if all(k in row for k in extra):
        lines.append(f"| {name} | " + " | ".join(_cell(row[k], 3 if "nll" in k else 1, ci=False)
                                                   for k in extra) + " |")
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ plots


def plot_accuracy(table: dict, suites: list[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(table)
  fig, axes = plt.subplots(1, len(suites), figsize=(5 * len(suites), 0.32 * len(names) + 1.5),
                           sharey=True)
  axes = np.atleast_1d(axes)
  y = np.arange(len(names))[::-1]
  for ax, suite in zip(axes, suites):
    means = [table[n][f"acc/{suite}"]["mean"] for n in names]
    cis = [0 if math.isnan(table[n][f"acc/{suite}"]["ci"]) else table[n][f"acc/{suite}"]["ci"]
           for n in names]
    ax.barh(y, means, xerr=cis, capsize=2, color=[_color(n) for n in names])
    ax.set_title(f"{suite} accuracy (%), 95% CI")
    ax.set_xlim(0, 100)
    ax.grid(axis="x", alpha=0.3)
  axes[0].set_yticks(y, names, fontsize=8)
  fig.tight_layout()
  progress.save_figure(fig, path, dpi=110)
  plt.close(fig)


def _color(name: str) -> str:
  if name.startswith("mind"):
    return "tab:red"
  if name.startswith("single"):
    return "tab:gray"
  return "tab:blue"


def plot_alpha_vs_single(table: dict, alpha: dict, perspectives: list[str], suite: str,
                         path: str) -> None:
  """Left: single-path accuracy per perspective; middle: MIND's alpha per perspective over
  training (mean over seeds); right: alpha entropy of every TA row over training."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(18, 4.8), gridspec_kw=dict(width_ratios=[1, 1.3, 1]))
  acc = [table[f"single_path/{p}"][f"acc/{suite}"] for p in perspectives]
  order = np.argsort([-a["mean"] for a in acc])
  colors = {p: plt.cm.tab10(i) for i, p in enumerate(perspectives)}
  axes[0].barh(np.arange(len(order))[::-1], [acc[i]["mean"] for i in order],
               xerr=[0 if math.isnan(acc[i]["ci"]) else acc[i]["ci"] for i in order], capsize=2,
               color=[colors[perspectives[i]] for i in order])
  axes[0].set_yticks(np.arange(len(order))[::-1], [perspectives[i] for i in order], fontsize=8)
  axes[0].set_title(f"single-path {suite} accuracy (%), 95% CI")
  axes[0].set_xlim(0, 100)
  main = alpha.get("mind") or next(iter(alpha.values()))
  history = np.asarray(main["history"])
  for k, p in enumerate(perspectives):
    axes[1].plot(main["steps"], history[:, k], label=p, color=colors[p])
  axes[1].set_title("MIND: alpha per perspective (batch mean, mean over seeds)")
  axes[1].set_xlabel("step")
  axes[1].legend(fontsize=7, ncol=2)
  for row, a in alpha.items():
    axes[2].plot(a["steps"], a["entropy"], label=row)
  axes[2].axhline(math.log(len(perspectives)), color="k", ls="--", lw=0.8, label="uniform")
  axes[2].set_title("alpha entropy (nats)")
  axes[2].set_xlabel("step")
  axes[2].legend(fontsize=7)
  for ax in axes[1:]:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  progress.save_figure(fig, path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------ all of it


def write(xcfg, out: str, rows, results: list[dict], suites: list[str], sizes: dict,
          perspectives: list[str], command: str, wall_s: float) -> dict:
  """results.md, results.json, results.png and alpha_vs_single.png into `out`."""
  by_seed = per_seed(results, suites, "zero_shot")
  single_rows = [r.name for r in rows if r.name.startswith("single_path/")]
  best_single = add_single_summaries(by_seed, single_rows, f"acc/{suites[0]}")
  table = aggregate({name: by_seed[name] for name in [r.name for r in rows] +
                     ([MEAN_SINGLE, BEST_SINGLE] if single_rows else []) if name in by_seed})
  comparisons = {}
  for a, b in xcfg.comparisons:
    b_row = BEST_SINGLE if b == "best_single" else b
    if a in by_seed and b_row in by_seed:
      comparisons[(a, b_row)] = {s: paired(by_seed, a, b_row, f"acc/{s}") for s in suites}
  ta_rows = [r.name for r in rows if any(x["method"] == r.name and x.get("alpha_history")
                                         for x in results)]
  alpha = {row: alpha_means(results, row, perspectives) for row in ta_rows}
  text = markdown(xcfg, table, comparisons, alpha, single_rows, best_single, suites, sizes,
                  command, wall_s, perspectives)
  paths.write_whole(os.path.join(out, "results.md"), text)
  plot_accuracy(table, suites, os.path.join(out, "results.png"))
  if alpha and single_rows:
    plot_alpha_vs_single(table, alpha, perspectives, suites[0],
                         os.path.join(out, "alpha_vs_single.png"))
  summary = dict(config=xcfg.to_dict(), command=command, wall_s=wall_s, cpu=cpu_model(),
                 best_single=best_single, table=table,
                 comparisons={f"{a} - {b}": c for (a, b), c in comparisons.items()},
                 alpha=alpha,
                 runs=[{k: v for k, v in r.items() if k != "examples"} for r in results])
  paths.write_json(os.path.join(out, "results.json"), summary)
  print(text)
  return summary
