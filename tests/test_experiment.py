"""The experiment runner and the sweep: their statistics by hand, their configs, and the
testbed table end to end on a tiny budget (the CI smoke test of results/testbed/)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mind_jax import train
from mind_jax.config import load_config_file
from mind_jax.eval import experiment, report, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ statistics by hand


def test_summary_ci_is_students_t():
  s = report.summarize([60.0, 70.0, 65.0, 75.0, 80.0])
  assert s["mean"] == pytest.approx(70.0)
  assert s["std"] == pytest.approx(7.9057, rel=1e-4)  # sqrt(62.5)
  # t(0.975, 4) = 2.7764: half-width 2.7764 * 7.9057 / sqrt(5).
  assert s["ci"] == pytest.approx(2.7764 * 7.9057 / math.sqrt(5), rel=1e-3)
  assert math.isnan(report.summarize([3.0])["ci"])


def _result(method, seed, acc, ood=0.0, alpha=None, pretask=None):
  r = dict(method=method, seed=seed, train_s=10.0, steps=100, trained_tokens_per_step=2000.0,
           accuracy={"id": acc, "ood": ood}, gold_nll={})
  if pretask is not None:
    r["accuracy"]["pretask"] = pretask
  if alpha is not None:
    r["alpha_history"] = [dict(step=10, entropy=1.0, alpha=alpha[0]),
                          dict(step=20, entropy=0.5, alpha=alpha[1])]
  return r


def test_paired_comparisons_single_summaries_and_forgetting():
  results = []
  for seed, (a, b, mind, union) in enumerate([(0.6, 0.2, 0.5, 0.3), (0.7, 0.1, 0.4, 0.4),
                                              (0.5, 0.3, 0.7, 0.2)]):
    results += [_result("zero_shot", seed, 0.0, pretask=0.5),
                _result("single_path/a", seed, a, pretask=0.4),
                _result("single_path/b", seed, b, pretask=0.5),
                _result("mind", seed, mind, pretask=0.1), _result("union", seed, union)]
  rows = report.per_seed(results, ["id", "ood"], "zero_shot")
  best = report.add_single_summaries(rows, ["single_path/a", "single_path/b"], "acc/id")
  assert best == "single_path/a"  # mean 60 vs 20
  assert rows[report.MEAN_SINGLE][1]["acc/id"] == pytest.approx(40.0)
  assert rows["mind"][0]["forget/acc"] == pytest.approx(-40.0)
  assert rows["mind"][0]["tokens_M"] == pytest.approx(0.2)  # 2000 tokens x 100 steps
  c = report.paired(rows, "mind", "union", "acc/id")
  assert (c["wins"], c["ties"], c["losses"]) == (2, 1, 0)
  assert c["mean"] == pytest.approx(100 * (0.2 + 0.0 + 0.5) / 3)
  c = report.paired(rows, "mind", report.BEST_SINGLE, "acc/id")
  assert (c["wins"], c["losses"]) == (1, 2)
  assert report.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert report.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_general_text_forgetting_is_the_change_from_the_zero_shot_row():
  results = [dict(_result("zero_shot", 0, 0.1), general_text_nll=3.0),
             dict(_result("mind", 0, 0.5), general_text_nll=3.25),
             _result("union", 0, 0.4)]  # a run from before the field: no column
  rows = report.per_seed(results, ["id"], "zero_shot")
  assert rows["mind"][0]["nll/general_text"] == pytest.approx(3.25)
  assert rows["mind"][0]["forget/general_text_nll"] == pytest.approx(0.25)
  assert rows["zero_shot"][0]["forget/general_text_nll"] == 0.0
  assert "forget/general_text_nll" not in rows["union"][0]


def test_alpha_means_average_over_steps_and_seeds():
  results = [_result("mind", 0, 0.1, alpha=([1.0, 0.0], [0.5, 0.5])),
             _result("mind", 1, 0.1, alpha=([0.0, 1.0], [0.0, 1.0]))]
  a = report.alpha_means(results, "mind", ["p", "q"])
  assert a["mean"] == pytest.approx({"p": (0.75 + 0.0) / 2, "q": (0.25 + 1.0) / 2})
  assert a["final"] == pytest.approx({"p": 0.25, "q": 0.75})
  assert a["entropy"] == pytest.approx([1.0, 0.5]) and a["steps"] == [10, 20]
  assert report.alpha_means(results, "union", ["p", "q"]) is None


# ------------------------------------------------------------------ configs and rows


def test_both_experiment_configs_name_existing_configs():
  for path, rows in (("configs/experiment.py", 9), ("configs/testbed/experiment.py", 11)):
    xcfg = load_config_file(os.path.join(REPO, path))
    names = [name for name, _ in xcfg.methods]
    assert names[0] == "zero_shot" and len(names) == len(set(names)) == rows
    for name, method in xcfg.methods:
      if name != "zero_shot":
        config = experiment.load_row_config(experiment.Row(name, experiment.method_spec(
            xcfg, method)))
        assert config.method == "mind", (path, name)
    with pytest.raises(AttributeError):
      xcfg.no_such_field = 1
  testbed = load_config_file(os.path.join(REPO, "configs/testbed/experiment.py"))
  assert len(testbed.seeds) >= 5 and testbed.single_per_perspective


def test_a_pretrained_student_keeps_its_init_from_and_a_scratch_one_stays_scratch():
  """Without a base, every row starts where the student config says: the imported
  SmolLM2 for the pretrained testbed, the seed's random initialisation for the testbed."""
  for path, expected in (("configs/testbed_smollm2/experiment.py", "runs/smollm2"),
                         ("configs/testbed/experiment.py", "")):
    xcfg = load_config_file(os.path.join(REPO, path))
    assert not xcfg.base_config
    for row in experiment.expand_rows(xcfg, ["scratchpad", "plain_answer"]):
      if row.name != "zero_shot":
        config = experiment.row_config(xcfg, row, "DATA", "START", seed=1)
        assert config.train.init_from == expected, (path, row.name)
        assert config.data.records_dir == "DATA" and config.train.steps == xcfg.joint_steps
  xcfg = load_config_file(os.path.join(REPO, "configs/testbed_smollm2/experiment.py"))
  assert len(xcfg.seeds) >= 3 and xcfg.eval.general_text
  start = experiment.start_config(xcfg, "DATA", seed=2)
  assert start.train.init_from == "runs/smollm2" and start.train.steps == 0
  assert start.lora.rank > 0


def test_rows_apply_each_baseline_to_the_student_and_split_single_path():
  xcfg = load_config_file(os.path.join(REPO, "configs/testbed/experiment.py"))
  rows = experiment.expand_rows(xcfg, ["p0", "p1"])
  names = [r.name for r in rows]
  assert names[:3] == ["zero_shot", "single_path/p0", "single_path/p1"]
  single = experiment.load_row_config(rows[2])
  assert single.mind.weighting == "single" and single.mind.single_perspective == "p1"
  assert single.model.vocab_size == 600  # the testbed student, not the demo's
  union = experiment.load_row_config(rows[names.index("union")])
  assert union.mind.weighting == "uniform" and union.train.slot_width_multiple == 16
  floor = experiment.load_row_config(rows[names.index("mind_floor")])
  assert floor.mind.alpha_floor > 0 and floor.mind.weighting == "ta"


def test_sweep_runs_each_distinct_setting_once():
  scfg = load_config_file(os.path.join(REPO, "configs/testbed/sweep.py"))
  xcfg = load_config_file(os.path.join(REPO, scfg.experiment))
  rows, cells = sweep.sweep_rows(scfg, xcfg)
  assert len(cells) == len(scfg.betas) * len(scfg.tau_s) + len(scfg.mus)
  # beta = 1 selects the top score alone (alpha exactly 1 whatever tau_s): one run; the
  # default cell and mu = 0.9 are the table's "mind" run, mu = 0 its "mind_instant".
  assert len(rows) == (len(scfg.betas) - 1) * len(scfg.tau_s) + 1 + len(scfg.mus) - 1
  assert cells[("grid", 0.8, 0.5, 0.9)] == cells[("mu", 0.8, 0.5, 0.9)] == "mind"
  assert cells[("mu", 0.8, 0.5, 0.0)] == "mind_instant"
  instant = experiment.load_row_config(next(r for r in rows if r.name == "mind_instant"))
  assert instant.mind.inertia_mode == "instant"
  assert len({cells[("grid", 1.0, t, 0.9)] for t in scfg.tau_s}) == 1
  config = experiment.load_row_config(next(r for r in rows if "beta=0.5,tau_s=2" in r.name))
  assert (config.mind.beta, config.mind.tau_s) == (0.5, 2.0)
  # The table and heatmap of synthetic cell results.
  results = [dict(method=name, seed=s, accuracy={"id": 0.1 * s + 0.01 * i})
             for i, name in enumerate(sorted({r.name for r in rows})) for s in range(3)]
  table = sweep.cell_table(results, cells, ["id"])
  text = sweep.markdown(scfg, table, ["id"], "CMD", 60.0, len(rows))
  assert "| 0.5 |" in text and "inertia mu" in text and "`CMD`" in text


def test_negative_steps_fail_before_anything_runs(tmp_path):
  config = load_config_file(os.path.join(REPO, "configs", "debug_cpu.py"))
  config.train.steps = -5
  with pytest.raises(ValueError, match=r"train.steps=-5: expected an integer >= 0"):
    train.train(config, str(tmp_path))
  assert not os.listdir(tmp_path)


# ------------------------------------------------------------------ the testbed, tiny


def test_testbed_table_end_to_end_and_resumes(tmp_path):
  """The CI smoke test of results/testbed/: the styles teacher through the build, two
  methods and the zero-shot start, one seed, two workers, a few steps; then the table
  again, reusing every run."""
  data_config = tmp_path / "data.py"
  data_config.write_text(
      "from mind_jax.config import load_config_file\n"
      "def get_config():\n"
      f"  c = load_config_file({os.path.join(REPO, 'configs', 'testbed', 'data.py')!r})\n"
      "  c.questions.arith_size = 12\n"
      "  return c\n")
  student_config = tmp_path / "student.py"  # one layer, one slot group: a few compiles less
  student_config.write_text(
      "from mind_jax.config import load_config_file\n"
      "def get_config():\n"
      f"  c = load_config_file({os.path.join(REPO, 'configs', 'testbed', 'mind.py')!r})\n"
      "  c.model.num_layers = 1\n"
      "  c.train.slot_width_multiple = 0\n"
      "  c.mind.probe_every, c.mind.probe_size, c.mind.probe_max_new_tokens = 1, 3, 6\n"
      "  return c\n")
  out = tmp_path / "xp"
  command = [sys.executable, "-m", "mind_jax.eval.experiment", "--config",
             os.path.join(REPO, "configs", "testbed", "experiment.py"), "--out", str(out),
             "--methods", "zero_shot,union,mind", "--config.seeds=[0]",
             f"--config.data_config={data_config}", f"--config.student_config={student_config}",
             "--config.joint_steps=2", "--config.ta_warmup_steps=1", "--config.eval.id_size=3",
             "--config.eval.ood_size=3", "--config.eval.max_new_tokens=6",
             "--config.eval.batch_size=3", "--config.tagged_methods=[('mind_accuracy','best,vote','configs/baselines/mind_accuracy.py')]",
             "--config.eval.dev_size=3"]
  env = dict(os.environ, XLA_FLAGS="")  # one CPU device, as on a user's machine
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  manifest = json.load(open(out / "data" / "manifest.json"))
  assert manifest["teacher"] == "styles" and manifest["counts"]["rationales_correct"] == 96
  assert set(manifest["slot_max_lengths"]) == set(manifest["perspectives"])
  summary = json.load(open(out / "results.json"))
  assert [(r["method"], r["seed"]) for r in summary["runs"]] == [
      ("zero_shot", 0), ("union", 0), ("mind", 0), ("mind_accuracy+tags/best", 0),
      ("mind_accuracy+tags/vote", 0)]
  for run in summary["runs"]:
    assert set(run["accuracy"]) == {"arith_id", "arith_ood_length", "arith_ood_mix"}
  steps = {r["method"]: r["step"] for r in summary["runs"]}
  assert steps == {"zero_shot": 0, "union": 2, "mind": 3,  # mind: + 1 TA warm-up step
                   "mind_accuracy+tags/best": 3, "mind_accuracy+tags/vote": 3}
  # The tagged rows: one student (trained on the tagged records only: its probe asks
  # each perspective by its tag), asked two ways; the dev split chose the "best"
  # perspective and ranks the vote's ties.
  best, voted = summary["runs"][3], summary["runs"][4]
  assert best["workdir"] == voted["workdir"] and best["workdir"].endswith("mind_accuracy+tags")
  # Its probe ran at every step (probe_every 1) and reported its cost.
  probes = json.load(open(os.path.join(best["workdir"], "probe.json")))["probes"]
  assert [p["step"] for p in probes] == [0, 1, 2]
  assert set(best["probe_accuracy"]) == set(manifest["perspectives"])
  assert all(0 <= a <= 1 for a in best["probe_accuracy"].values())
  assert best["probe_s"] > 0 and best["probe_share_of_step_time"] > 0
  assert set(best["perspective_dev"]) == set(manifest["perspectives"])
  assert best["chosen"] in manifest["perspectives"]
  tagged = json.load(open(out / "data_tagged" / "manifest.json"))
  assert tagged["perspective_tags"] and not manifest["perspective_tags"]
  assert tagged["counts"] == manifest["counts"]
  assert summary["runs"][1]["trained_tokens_per_step"] > 0
  assert len(summary["runs"][2]["alpha_history"]) >= 1
  history = [json.loads(line) for line in open(out / "runs" / "seed0" / "mind" / train.HISTORY)]
  assert "alpha_entropy" in history[-1] and 0 <= history[-1]["alpha_entropy"] <= np.log(8) + 1e-6
  text = (out / "results.md").read_text()
  assert "| mind |" in text and "95% CI" in text and "mind - union" in text
  assert (out / "results.png").stat().st_size > 0
  # A second invocation reuses every finished run.
  mtime = os.path.getmtime(out / "runs" / "seed0" / "mind" / "result.json")
  again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "4 runs done before, 0 to do" in again.stderr
  assert os.path.getmtime(out / "runs" / "seed0" / "mind" / "result.json") == mtime


@pytest.mark.parametrize("field,value", [("train.checkpoint_every", 0), ("train.log_every", 0),
                                         ("train.batch_size", 0), ("mind.ta_grad_accum", 0),
                                         ("optim.grad_accum_steps", -1)])
def test_bad_counts_fail_in_one_line_before_anything_runs(tmp_path, field, value):
  config = load_config_file(os.path.join(REPO, "configs", "debug_cpu.py"))
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=f"{field}={value}: expected an integer >= "):
    train.train(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")
