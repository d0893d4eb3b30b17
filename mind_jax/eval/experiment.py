"""The experiment runner: MIND against its baselines and ablations, several seeds, one table.

    python -m mind_jax.eval.experiment --config configs/testbed/experiment.py --out DIR
    python -m mind_jax.eval.experiment --config configs/experiment.py --out DIR

Protocol (every number is a field of the experiment config, documented in
mind_jax/config.py:default_experiment_config):

1. The rationale records are built once (<out>/data).
2. Per seed, the student every method starts from: a pre-distillation base trained by
   SFT (base_config; the gsm_symbolic experiment, where it stands in for a pretrained
   student), or, with no base_config, the student config's random initialisation
   (the testbed: the student learns the task from scratch). Evaluated as it is, it is
   the zero-shot row.
3. Per seed and row, that start is distilled with the row's config: a baseline file
   applied to the student config (configs/baselines/X.py:<student_config>). The budget
   is shared: the same student optimizer steps, questions per step, learning-rate
   schedule and data order. TA methods add TA-only warm-up steps with the student
   frozen. With single_per_perspective, single-path is one row per perspective.
4. Every student is evaluated on the same suites (greedy, judged), plus gold-solution
   NLL where a suite has gold rationales and, with a base, forgetting (accuracy and NLL
   on held-out base problems, as the change from the same seed's base).
5. results.json (every run), results.md (mean, std and 95% CI over seeds; paired
   per-seed comparisons; tokens trained on), results.png, and for TA methods the
   alpha-per-perspective history beside the single-path ranking (alpha_vs_single.png).

Runs are resumable: a finished run's result.json is reused, an interrupted training
resumes from its checkpoint. A per-run line reports time used and the table's ETA.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time

from mind_jax import checkpoint, compile_cache, cpu_backend, faults, paths, progress, train
from mind_jax import config as config_lib
from mind_jax import probe as probe_lib
from mind_jax.config import check_counts, load_config, load_config_file
from mind_jax import tokenizer as tokenizer_lib
from mind_jax.data import build, builtin, encode, records
from mind_jax.data.questions import Question
from mind_jax.eval import general_text, report, run as eval_run, suites as suites_lib
from mind_jax.eval import perspectives as perspectives_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # local: ours
ZERO_SHOT = "zero_shot"


def repo_path(path: str) -> str:
  return path if not path or os.path.isabs(path) else os.path.join(REPO, path)


def _config_path(spec: str) -> str:
  """A config spec 'file.py[:ARG]' with both paths made absolute."""
  path, sep, arg = spec.partition(".py:")
  return repo_path(path if not sep else path + ".py") + (":" + repo_path(arg) if sep else "")


# ------------------------------------------------------------------ rows


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table: a name and the training config that makes its students."""
  name: str
  config: str = ""             # "file.py[:student]"; "" for the zero-shot row
  overrides: tuple = ()        # ((field, value), ...) set on top (single paths, the sweep)
  modes: tuple = ()            # perspective-tagged: trained on the tagged records, and one
                               # result row "<name>/<mode>" per eval.perspective mode

  @property
  def dirname(self) -> str:
    return self.name.replace("/", "__")

  @property
  def result_names(self) -> tuple[str, ...]:
    """The table rows this training row gives: itself, or one per perspective mode."""
    return tuple(f"{self.name}/{m}" for m in self.modes) if self.modes else (self.name,)


def load_row_config(row: Row):
  config = load_config_file(_config_path(row.config))
  for field, value in row.overrides:
    *parents, last = field.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[last] = value
  return config


def method_spec(xcfg, path: str) -> str:
  """The training config of a method: its baseline file applied to the student config,
  or the student config itself ("")."""
  if not path:
    return xcfg.student_config
  return f"{path}:{xcfg.student_config}" if xcfg.student_config else path


def expand_rows(xcfg, perspectives: list[str]) -> list[Row]:
  """The table's rows from xcfg.methods; a single-path method becomes one row per
  perspective when xcfg.single_per_perspective."""
  rows = []
  for name, path in xcfg.methods:
    if name == ZERO_SHOT:
      rows.append(Row(ZERO_SHOT))
      continue
    spec = method_spec(xcfg, path)
    row = Row(name, spec)
    if xcfg.single_per_perspective and load_row_config(row).mind.weighting == "single":
      rows += [Row(f"{name}/{p}", spec, (("mind.single_perspective", p),)) for p in perspectives]
    else:
      rows.append(row)
  return rows + tagged_rows(xcfg, perspectives)


def tagged_rows(xcfg, perspectives: list[str]) -> list[Row]:
  """The rows of xcfg.tagged_methods: "<method>+tags", one result per eval mode. An entry
  (method, modes) names a method of xcfg.methods; (method, modes, config) one trained
  only on the tagged records (mind.capability='accuracy' needs the tags)."""
  known, rows = dict(xcfg.methods), []
  for entry in xcfg.tagged_methods:
    name, modes, path = (*entry, None) if len(entry) == 2 else entry
    if path is None and (name not in known or name == ZERO_SHOT):
      raise faults.BadInput(f"tagged_methods: {name!r} is not a trained method of methods "
                            f"{[m for m in known if m != ZERO_SHOT]}; give its config as a "
                            "third item to train it on the tagged records only")
    wanted = tuple(m.strip() for m in modes.split(","))
    for mode in wanted:
      perspectives_lib.check_mode(mode, perspectives, True, f"tagged_methods {name!r}")
    spec = method_spec(xcfg, known[name] if path is None else path)
    rows.append(Row(f"{name}+tags", spec, modes=wanted))
  return rows


# ------------------------------------------------------------------ training


def start_config(xcfg, data_dir: str, seed: int):
  """The config of the per-seed start: the SFT base, or the student at step 0."""
  if xcfg.base_config:
    config = load_config_file(repo_path(xcfg.base_config))
    config.tokenizer.path = records.tokenizer_dir(data_dir)
    config.train.steps = config.train.checkpoint_every = xcfg.base_steps
  else:  # from scratch: the zero-shot student is the initialisation itself
    config = load_config_file(_config_path(xcfg.student_config))
    config.data.records_dir = data_dir
    config.mind.weighting = "uniform"  # no TA: nothing to warm up
    config.train.steps = 0
  config.train.seed = seed
  return config


def row_config(xcfg, row: Row, data_dir: str, start_dir: str, seed: int):
  config = load_row_config(row)
  config.data.records_dir = data_dir
  if xcfg.base_config:
    config.train.init_from = start_dir
  # else the student config's own: "" (from scratch, the seed's initialisation) or a
  # pretrained student (e.g. from import_hf), which the zero-shot row evaluates as it is
  config.train.seed = seed
  config.train.steps = xcfg.joint_steps
  # A killed table resumes each run from its last checkpoint: keep the config's own.
  config.train.checkpoint_every = min(config.train.checkpoint_every, xcfg.joint_steps)
  config.mind.ta_warmup_steps = xcfg.ta_warmup_steps
  config.mind.ta_warmup_epochs = 0.0
  return config


def train_to_end(config, workdir: str) -> float:
  """Train (or finish an interrupted run); the seconds it took."""
  start = time.perf_counter()
  train.train(config, workdir)
  return time.perf_counter() - start


def use_compilation_cache(path: str) -> None:
  """Persistent XLA cache (mind_jax/compile_cache.py) in `path`: every seed of a row
  compiles the same step program, and a resumed table reuses the programs of the runs
  before."""
  compile_cache.enable(path)


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


def evaluate_modes(workdir: str, suites, ecfg, modes, perspectives, dev) -> list[dict]:
  """A tagged student asked in each eval.perspective mode (eval/perspectives.py)."""
  model = eval_run.load_model(workdir)
  dev_scores = (perspectives_lib.dev_accuracy(model, dev, perspectives, ecfg.max_new_tokens,
                                              ecfg.batch_size)
                if perspectives_lib.needs_dev(modes) else None)
  return [dict(step=model.step, **perspectives_lib.accuracy_by_mode(
      model, suites, mode, perspectives, dev_scores, ecfg.max_new_tokens, ecfg.batch_size))
      for mode in modes]


def evaluate_student(workdir: str, suites, ecfg) -> dict:
  """Accuracy per suite and gold-solution NLL where a suite has gold rationales."""
  model = eval_run.load_model(workdir)
  out = dict(step=model.step, accuracy={}, gold_nll={}, examples={})
  for suite in suites:
    generations = eval_run.generate_answers(model, suite.questions, ecfg.max_new_tokens,
                                            ecfg.batch_size)
    scored = eval_run.score_suite(suite, generations, num_examples=2)
    out["accuracy"][suite.name] = scored["accuracy"]
    out["examples"][suite.name] = scored["examples"]
    if any(q.rationale for q in suite.questions):
      out["gold_nll"][suite.name] = eval_run.gold_solution_nll(model, suite.questions,
                                                               ecfg.batch_size)["nll"]
  if ecfg.general_text:
    out["general_text_nll"] = eval_run.model_perplexity(
        model, general_text.PARAGRAPHS, ecfg.batch_size)["nll"]
  return out


def training_summary(workdir: str, perspectives: list[str]) -> dict:
  """From the run's metrics history: tokens trained on per step, and the per-perspective
  alpha and alpha entropy over training (the plots beside the single-path ranking)."""
  history = progress.read_history(os.path.join(workdir, train.HISTORY))
  joint = [(step, v) for step, v in history if "trained_tokens" in v]
  summary = dict(trained_tokens_per_step=(
      sum(v["trained_tokens"] for _, v in joint) / len(joint) if joint else 0.0))
  probe = os.path.join(workdir, probe_lib.PROBE_FILE)
  if paths.isfile(probe):  # mind.capability="accuracy": what its probes cost
    log = paths.read_json(probe)
    summary.update(probe_s=log["probe_s"], probe_share_of_step_time=log["share_of_step_time"],
                   probe_accuracy=log["probes"][-1]["accuracy"] if log["probes"] else {})
  if joint and f"score/{perspectives[0]}" in joint[-1][1]:  # a TA method
    summary["alpha_history"] = [
        dict(step=step, entropy=v["alpha_entropy"],
             alpha=[v[f"alpha/{p}"] for p in perspectives]) for step, v in joint]
  return summary


# ------------------------------------------------------------------ the loop


@dataclasses.dataclass(frozen=True)
class Setting:
  """What every run of a table shares (sent to worker processes as it is)."""
  xcfg: object
  out: str
  data_dir: str
  suites: tuple
  pretask: object
  perspectives: tuple
  tagged_data_dir: str = ""    # the same records with perspective tags (tagged_methods)
  dev: object = None           # the dev split that eval.perspective best / vote choose on

  def start_dir(self, seed: int) -> str:
    return os.path.join(self.out, "runs", f"seed{seed}",
                        "base" if self.xcfg.base_config else "init")

  def result_path(self, seed: int, row: Row, mode: str = "") -> str:
    name = f"result.{mode}.json" if mode else "result.json"
    return os.path.join(self.out, "runs", f"seed{seed}", row.dirname, name)

  def result_paths(self, seed: int, row: Row) -> list[str]:
    return [self.result_path(seed, row, mode) for mode in row.modes or ("",)]


def train_starts(setting: Setting) -> dict[int, float]:
  """Each seed's start (base or initialisation), trained once; its seconds (0 if reused)."""
  xcfg, seconds = setting.xcfg, {}
  for seed in xcfg.seeds:
    start_dir = setting.start_dir(seed)
    wanted = xcfg.base_steps if xcfg.base_config else 0
    seconds[seed] = 0.0
    if checkpoint.latest_step(start_dir) != wanted:
      seconds[seed] = train_to_end(start_config(xcfg, setting.data_dir, seed), start_dir)
  return seconds


def run_one(setting: Setting, seed: int, row: Row, start_s: float) -> list[dict]:
  """Train (unless zero-shot) and evaluate one (seed, row); writes its result file(s):
  one, or for a tagged row one per eval mode."""
  xcfg = setting.xcfg
  start_dir = setting.start_dir(seed)
  if row.name == ZERO_SHOT:
    train_s, workdir = start_s, start_dir
  else:
    workdir = os.path.dirname(setting.result_path(seed, row))
    data_dir = setting.tagged_data_dir if row.modes else setting.data_dir
    train_s = train_to_end(row_config(xcfg, row, data_dir, start_dir, seed), workdir)
  eval_start = time.perf_counter()
  suites = list(setting.suites) + ([setting.pretask] if setting.pretask else [])
  if row.modes:
    evaluations = evaluate_modes(workdir, setting.suites, xcfg.eval, row.modes,
                                 list(setting.perspectives), setting.dev)
  else:
    evaluations = [evaluate_student(workdir, suites, xcfg.eval)]
  eval_s = (time.perf_counter() - eval_start) / len(evaluations)
  summary = training_summary(workdir, list(setting.perspectives))
  results = []
  for name, mode, evaluation in zip(row.result_names, row.modes or ("",), evaluations):
    result = dict(method=name, seed=seed, workdir=workdir, train_s=train_s, **evaluation,
                  **summary, eval_s=eval_s, steps=0 if row.name == ZERO_SHOT else xcfg.joint_steps)
    paths.write_json(setting.result_path(seed, row, mode), result)
    results.append(result)
  return results


def _worker(jobs, results, setting: Setting) -> None:
  """A worker process: runs jobs until it reads None. It was started on its own core with
  single-threaded XLA (both inherited from the parent at start, so XLA sizes its thread
  pools for one core); the allocator setting and the cache come before JAX starts."""
  progress.quiet_library_logs()
  cpu_backend.prepare(load_config_file(_config_path(setting.xcfg.student_config)).train)
  if setting.xcfg.compilation_cache:
    use_compilation_cache(os.path.join(setting.out, "xla_cache"))
  while (job := jobs.get()) is not None:
    try:
      results.put(run_one(setting, *job))
    except BaseException:  # the parent stops the table and shows this
      import traceback
      results.put(dict(error=f"{job[1].name} seed {job[0]}:\n{traceback.format_exc()}"))
      return


def _parallel(setting: Setting, jobs: list, workers: int):
  """Yields the results of `jobs` from `workers` processes, one pinned to each core."""
  import multiprocessing
  import queue as queue_lib
  context = multiprocessing.get_context("spawn")  # fresh processes: JAX is not fork-safe
  job_queue, results = context.Queue(), context.Queue()
  for job in jobs:
    job_queue.put(job)
  for _ in range(workers):
    job_queue.put(None)
  flags, affinity = os.environ.get("XLA_FLAGS", ""), os.sched_getaffinity(0)
  cores = sorted(affinity)
  processes = []
  try:  # a child inherits the environment and the core it may run on
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    for i in range(workers):
      os.sched_setaffinity(0, {cores[i % len(cores)]})
      processes.append(context.Process(target=_worker, args=(job_queue, results, setting)))
      processes[-1].start()
  finally:
    os.environ["XLA_FLAGS"] = flags
    os.sched_setaffinity(0, affinity)
  try:
    for _ in jobs:
      while True:
        try:
          result = results.get(timeout=5)
          break
        except queue_lib.Empty:
          dead = [p for p in processes if p.exitcode not in (None, 0)]
          if dead:
            raise RuntimeError(f"experiment worker {dead[0].pid} died (exit code "
                               f"{dead[0].exitcode}); finished runs are kept, rerun to go on")
      if "error" in result:
        raise RuntimeError("an experiment run failed (finished runs are kept): "
                           + result["error"])
      yield result
  finally:
    for p in processes:
      if p.is_alive():
        p.terminate()
      p.join()


def run_rows(setting: Setting, rows: list[Row]) -> list[dict]:
  """Every (seed, row) run, resumable: a run with a result.json is not run again."""
  xcfg = setting.xcfg
  start_s = train_starts(setting)
  results, jobs, done_before = [], [], 0
  for seed in xcfg.seeds:
    for row in rows:
      done = setting.result_paths(seed, row)
      if all(paths.isfile(path) for path in done):
        results += [paths.read_json(path) for path in done]
        done_before += 1
      else:
        jobs.append((seed, row, start_s[seed]))
  logging.info("%d runs done before, %d to do on %d worker(s)", done_before, len(jobs),
               xcfg.workers)
  start = time.perf_counter()
  done_now = (_parallel(setting, jobs, xcfg.workers) if xcfg.workers > 1 and len(jobs) > 1
              else (run_one(setting, *job) for job in jobs))
  for done, row_results in enumerate(done_now, start=1):
    results += row_results
    result, elapsed = row_results[0], time.perf_counter() - start
    logging.info("[%d/%d] %s seed %d: train %.0f s, eval %.0f s; elapsed %.1f min, ETA %.1f "
                 "min", done, len(jobs), result["method"], result["seed"], result["train_s"],
                 sum(r["eval_s"] for r in row_results), elapsed / 60,
                 elapsed / 60 / done * (len(jobs) - done))
  order = {(seed, name): i for i, (seed, name) in enumerate(
      (seed, name) for seed in xcfg.seeds for row in rows for name in row.result_names)}
  return sorted(results, key=lambda r: order.get((r["seed"], r["method"]), len(order)))


def tag_tokens(data_dir: str, perspectives) -> int:
  """The most tokens a perspective tag adds to a prompt, in the records' tokenizer."""
  tokenizer = tokenizer_lib.load(records.tokenizer_dir(data_dir))
  question = "What is 12 + 34?"
  plain = len(encode.prompt_ids(tokenizer, question))
  return max(len(encode.prompt_ids(tokenizer, question, p)) - plain for p in perspectives)


def prepare(xcfg, out: str) -> Setting:
  """Build the records and the suites of a table."""
  data_dir = os.path.join(out, "data")
  manifest = build.build(load_config(repo_path(xcfg.data_config)), data_dir)
  e = xcfg.eval
  suites = suites_lib.build_suites(e.suites, suites_lib.training_questions(data_dir),
                                   id_size=e.id_size, ood_size=e.ood_size)
  pretask = None
  if xcfg.base_config and e.pretask_size > 0:
    pretask = pretask_suite(load_config_file(repo_path(xcfg.base_config)), e.pretask_size,
                            e.pretask_seed)
  tagged_dir, dev = "", None
  if xcfg.tagged_methods:  # the same questions and rationales, with tagged prompts
    tagged_dir = os.path.join(out, "data_tagged")
    data_config = load_config(repo_path(xcfg.data_config))
    data_config.encode.perspective_tags = True
    # The same slots must fit, tag and all: the longest tag's tokens, and 2 for merges
    # across the tag's boundary.
    data_config.encode.max_len += tag_tokens(data_dir, manifest["perspectives"]) + 2
    build.build(data_config, tagged_dir)
    dev = suites_lib.dev_suite(e.suites, suites_lib.training_questions(data_dir), suites,
                               e.dev_size, e.dev_seed)
  return Setting(xcfg, out, data_dir, tuple(suites), pretask, tuple(manifest["perspectives"]),
                 tagged_dir, dev)


def run(xcfg, out: str, command: str) -> dict:
  out = paths.absolute(out)
  start = time.perf_counter()
  if xcfg.compilation_cache:
    use_compilation_cache(os.path.join(out, "xla_cache"))
  setting = prepare(xcfg, out)
  rows = expand_rows(xcfg, list(setting.perspectives))
  if not any(row.name == ZERO_SHOT for row in rows):
    raise ValueError(f"methods must include {ZERO_SHOT}: it is the start every method "
                     "is measured from")
  results = run_rows(setting, rows)
  suites = list(setting.suites) + ([setting.pretask] if setting.pretask else [])
  table_rows = [Row(name) for row in rows for name in row.result_names]
  summary = report.write(xcfg, out, table_rows, results, [s.name for s in setting.suites],
                         {s.name: len(s.questions) for s in suites}, list(setting.perspectives),
                         command, time.perf_counter() - start)
  mind_alpha = os.path.join(out, "runs", f"seed{xcfg.seeds[0]}", "mind", train.ALPHA_PLOT)
  if paths.isfile(mind_alpha):
    paths.of(mind_alpha).copy(os.path.join(out, "mind_alpha_per_perspective.png"),
                              overwrite=True)
  return summary


def parse_args(argv, default_config: str, description: str):
  """The arguments; the --config.a.b=value overrides (config.parse_args) in .overrides."""
  parser = argparse.ArgumentParser(description=description,
                                   epilog="override a config field: --config.a.b=value, "
                                   "e.g. --config.joint_steps=50")
  parser.add_argument("--config", default=repo_path(default_config))
  parser.add_argument("--out", required=True, help="every run, and the table (local or gs://)")
  parser.add_argument("--methods", default="",
                      help="comma-separated methods to run (default: every method of the config)")
  return config_lib.parse_args(parser, argv)


# Experiment fields counted with, checked before anything is built or trained.
COUNTS = (("joint_steps", 0, ""), ("ta_warmup_steps", 0, ""), ("base_steps", 0, ""),
          ("workers", 1, ""), ("eval.id_size", 1, ""), ("eval.ood_size", 1, ""),
          ("eval.max_new_tokens", 1, ""), ("eval.batch_size", 1, ""),
          ("eval.pretask_size", 0, "0: no forgetting check"), ("eval.dev_size", 1, ""))


def load_experiment_config(args):
  """The experiment config with its overrides and the --methods selection applied."""
  progress.quiet_library_logs()
  xcfg = load_config(args.config, args.overrides)
  check_counts(xcfg, COUNTS)
  if not xcfg.seeds:
    raise faults.BadInput("seeds=(): an experiment needs at least one seed")
  if args.methods:
    wanted, known = args.methods.split(","), dict(xcfg.methods)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
      raise ValueError(f"--methods {unknown}: not in the config's methods {list(known)}")
    xcfg.methods = tuple((m, known[m]) for m in wanted)
  student = xcfg.base_config or xcfg.student_config
  cpu_backend.prepare(load_config_file(_config_path(student)).train)  # before JAX starts
  return xcfg


@faults.exit_cleanly
def main(argv=None):
  args = parse_args(argv, "configs/testbed/experiment.py", __doc__.split("\n")[0])
  xcfg = load_experiment_config(args)
  command = "python -m mind_jax.eval.experiment " + " ".join(
      argv if argv is not None else sys.argv[1:])
  return run(xcfg, args.out, command)


if __name__ == "__main__":
  main()
