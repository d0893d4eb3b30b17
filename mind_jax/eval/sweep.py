"""MIND's sensitivity to selection (beta), fusion temperature (tau_s) and inertia (mu).

    python -m mind_jax.eval.sweep --config configs/testbed/sweep.py --out DIR

Every cell is the experiment's MIND row (the same records, start, budget and eval as
the table of mind_jax/eval/experiment.py) with mind.beta and mind.tau_s set, plus a
strip over mind.inertia_mu at the default beta and tau_s; `seeds` seeds each. Give it
the table's --out to reuse the table's data, starts and MIND runs.

Identical settings run once: with beta = 1 only the top-scored perspective is selected
and its alpha is exactly 1 whatever tau_s, so the beta = 1 row is one run per seed; the
default cell is the table's "mind" row, and mu = 0 (L_bar = the instantaneous CE) is
its "mind_instant" row when the experiment has one. sweep.md and sweep_heatmap.png (mean accuracy
of each cell, per suite) are written into DIR.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from mind_jax import faults, paths, progress
from mind_jax.config import load_config
from mind_jax.eval import experiment, report


INSTANT = "mind_instant"  # the table's ablation with inertia_mode "instant": mu = 0


def _name(beta: float, tau_s: float, mu: float, defaults, methods) -> str:
  """The run name of a setting; equal settings get equal names (so one run)."""
  if beta == 1.0:
    tau_s = defaults.tau_s  # alpha is one-hot on the top score: tau_s changes nothing
  if (beta, tau_s) == (defaults.beta, defaults.tau_s):
    if mu == defaults.inertia_mu:
      return "mind"
    if mu == 0.0 and INSTANT in methods:  # an EMA with mu = 0 is the CE itself
      return INSTANT
  return f"mind/beta={beta:g},tau_s={tau_s:g},mu={mu:g}"


def sweep_rows(scfg, xcfg) -> tuple[list[experiment.Row], dict]:
  """(the distinct runs, {(kind, beta, tau_s, mu): run name} for the cells)."""
  methods = dict(xcfg.methods)
  spec = experiment.method_spec(xcfg, methods["mind"])
  defaults = experiment.load_row_config(experiment.Row("mind", spec)).mind
  cells = {}
  for beta in scfg.betas:
    for tau_s in scfg.tau_s:
      cells[("grid", beta, tau_s, defaults.inertia_mu)] = _name(
          beta, tau_s, defaults.inertia_mu, defaults, methods)
  for mu in scfg.mus:
    cells[("mu", defaults.beta, defaults.tau_s, mu)] = _name(
        defaults.beta, defaults.tau_s, mu, defaults, methods)
  rows = {}
  for (_, beta, tau_s, mu), name in cells.items():
    if name in rows:
      continue
    if name in methods:  # a row of the table itself
      rows[name] = experiment.Row(name, experiment.method_spec(xcfg, methods[name]))
    else:
      rows[name] = experiment.Row(name, spec, (("mind.beta", beta), ("mind.tau_s", tau_s),
                                               ("mind.inertia_mu", mu)))
  return list(rows.values()), cells


def cell_table(results: list[dict], cells: dict, suites: list[str]) -> dict:
  """cell -> suite -> summarize() of accuracy (%) over seeds."""
  by_name = {}
  for r in results:
    by_name.setdefault(r["method"], []).append(r)
  return {cell: {s: report.summarize([100 * r["accuracy"][s] for r in by_name[name]])
                 for s in suites} for cell, name in cells.items()}


def markdown(scfg, table: dict, suites: list[str], command: str, wall_s: float,
             runs: int) -> str:
  lines = ["# MIND sensitivity: selection beta x fusion temperature tau_s, and inertia mu", "",
           f"Reproduce: `{command}`", "",
           f"Wall time {wall_s / 60:.0f} min on {report.cpu_model()}; {runs} distinct runs "
           f"(beta = 1 is one run per seed: alpha is one-hot whatever tau_s). Seeds "
           f"{list(scfg.seeds)}; mean ± std of accuracy (%).", ""]
  for suite in suites:
    lines += [f"## {suite}", "", "| beta \\ tau_s | " + " | ".join(f"{t:g}" for t in scfg.tau_s)
              + " |", "|---|" + "---|" * len(scfg.tau_s)]
    for beta in scfg.betas:
      cells = [table[c][suite] for c in table if c[0] == "grid" and c[1] == beta]
      lines.append(f"| {beta:g} | " + " | ".join(f"{c['mean']:.1f} ± {c['std']:.1f}"
                                                 for c in cells) + " |")
    lines += ["", "| inertia mu | " + " | ".join(f"{c[3]:g}" for c in table if c[0] == "mu")
              + " |", "|---|" + "---|" * len(scfg.mus),
              "| accuracy | " + " | ".join(f"{table[c][suite]['mean']:.1f} ± "
                                          f"{table[c][suite]['std']:.1f}"
                                          for c in table if c[0] == "mu") + " |", ""]
  return "\n".join(lines)


def plot(scfg, table: dict, suites: list[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(suites) + 1, figsize=(4.6 * (len(suites) + 1), 3.8))
  for ax, suite in zip(axes, suites):
    grid = np.array([[table[("grid", b, t, c3)][suite]["mean"]
                      for (kind, b2, t, c3) in table if kind == "grid" and b2 == b]
                     for b in scfg.betas])
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i in range(grid.shape[0]):
      for j in range(grid.shape[1]):
        ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w", fontsize=9)
    ax.set_xticks(range(len(scfg.tau_s)), [f"{t:g}" for t in scfg.tau_s])
    ax.set_yticks(range(len(scfg.betas)), [f"{b:g}" for b in scfg.betas])
    ax.set_xlabel("tau_s (fusion temperature)")
    ax.set_ylabel("beta (selection)")
    ax.set_title(f"MIND {suite} accuracy (%)")
    fig.colorbar(image, ax=ax, fraction=0.046)
  mus = [c for c in table if c[0] == "mu"]
  ax = axes[-1]
  for offset, suite in enumerate(suites):
    ax.errorbar(np.arange(len(mus)) + 0.08 * offset, [table[c][suite]["mean"] for c in mus],
                yerr=[table[c][suite]["std"] for c in mus], marker="o", capsize=3, label=suite)
  ax.set_xticks(range(len(mus)), [f"{c[3]:g}" for c in mus])
  ax.set_xlabel("inertia mu")
  ax.set_title("accuracy (%) by inertia mu (± std)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  progress.save_figure(fig, path, dpi=110)
  plt.close(fig)


def run(scfg, out: str, command: str) -> dict:
  out = paths.absolute(out)
  start = time.perf_counter()
  xcfg = experiment.load_experiment_config(
      experiment.parse_args(["--config", experiment.repo_path(scfg.experiment), "--out", out],
                            scfg.experiment, ""))
  xcfg.seeds = tuple(scfg.seeds)
  if xcfg.compilation_cache:
    experiment.use_compilation_cache(os.path.join(out, "xla_cache"))
  setting = experiment.prepare(xcfg, out)
  rows, cells = sweep_rows(scfg, xcfg)
  results = experiment.run_rows(setting, rows)
  names = [s.name for s in setting.suites]
  table = cell_table(results, cells, names)
  text = markdown(scfg, table, names, command, time.perf_counter() - start, len(rows))
  paths.write_whole(os.path.join(out, "sweep.md"), text)
  plot(scfg, table, names, os.path.join(out, "sweep_heatmap.png"))
  summary = dict(config=scfg.to_dict(), command=command, cpu=report.cpu_model(),
                 cells=[dict(kind=c[0], beta=c[1], tau_s=c[2], mu=c[3], run=cells[c],
                             accuracy=table[c]) for c in cells])
  paths.write_json(os.path.join(out, "sweep.json"), summary)
  print(text)
  return summary


@faults.exit_cleanly
def main(argv=None):
  args = experiment.parse_args(argv, "configs/testbed/sweep.py", __doc__.split("\n")[0])
  scfg = load_config(args.config, args.overrides)
  command = "python -m mind_jax.eval.sweep " + " ".join(argv if argv is not None
                                                        else sys.argv[1:])
  return run(scfg, args.out, command)


if __name__ == "__main__":
  main()
