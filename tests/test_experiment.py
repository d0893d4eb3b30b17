"""The experiment runner: its table arithmetic, its config, and a tiny run end to end."""
import json
import os
import subprocess
import sys

import pytest

from mind_jax.config import load_config_file
from mind_jax.eval import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _result(method, seed, acc_id, nll_id, pretask_acc, pretask_nll):
  return dict(method=method, seed=seed, train_s=10.0,
              accuracy={"id": acc_id, "pretask": pretask_acc},
              gold_nll={"id": nll_id, "pretask": pretask_nll})


def test_aggregate_means_stds_and_forgetting_against_the_same_seed_base():
  results = [_result("zero_shot", 0, 0.0, 3.0, 0.50, 1.0),
             _result("zero_shot", 1, 0.0, 3.2, 0.70, 1.2),
             _result("mind", 0, 0.10, 2.0, 0.40, 1.5),
             _result("mind", 1, 0.30, 2.4, 0.70, 1.2)]
  table = experiment.aggregate(results, ["zero_shot", "mind"], ["id"], ["id"])
  mean, std = table["mind"]["acc/id"]
  assert mean == pytest.approx(20.0) and std == pytest.approx(14.142, rel=1e-3)
  assert table["mind"]["nll/id"][0] == pytest.approx(2.2)
  # Seed 0 forgot 10 points and gained 0.5 nats; seed 1 neither.
  assert table["mind"]["forget/acc"][0] == pytest.approx(-5.0)
  assert table["mind"]["forget/nll"][0] == pytest.approx(0.25)
  assert table["zero_shot"]["forget/acc"] == (0.0, 0.0)
  text = experiment.format_markdown(
      load_config_file(os.path.join(REPO, "configs", "experiment.py")), table, ["id"], ["id"],
      "CMD", 60.0, {"id": 60, "pretask": 200})
  assert "| mind | 20.0 ± 14.1 |" in text and "| mind | 2.200 ± 0.283 |" in text
  assert "`CMD`" in text and "(n=200)" in text


def test_experiment_config_names_existing_configs():
  config = load_config_file(os.path.join(REPO, "configs", "experiment.py"))
  names = [name for name, _ in config.methods]
  assert names[0] == "zero_shot" and len(names) == len(set(names)) == 9
  assert len(config.seeds) >= 3
  for name, path in config.methods:
    if path:
      assert os.path.isfile(experiment.repo_path(path)), name
  with pytest.raises(AttributeError):
    config.no_such_field = 1


def test_tiny_experiment_end_to_end_and_resumes(tmp_path):
  data_config = tmp_path / "data_config.py"
  data_config.write_text(
      "from mind_jax.config import load_config_file\n"
      "def get_config():\n"
      f"  c = load_config_file({os.path.join(REPO, 'configs', 'data', 'demo.py')!r})\n"
      "  c.questions.rg_size = 24\n"
      "  return c\n")
  out = tmp_path / "xp"
  command = [sys.executable, "-m", "mind_jax.eval.experiment", "--out", str(out),
             "--methods", "zero_shot,union,mind", "--set", "seeds=[0,1]",
             "--set", f"data_config={data_config}", "--set", "joint_steps=2",
             "--set", "ta_warmup_steps=1", "--set", "base_steps=2", "--set", "eval.id_size=3",
             "--set", "eval.ood_size=3", "--set", "eval.pretask_size=4",
             "--set", "eval.max_new_tokens=6"]
  env = dict(os.environ, XLA_FLAGS="")  # one CPU device, as on a user's machine
  result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(out / "results.json"))
  assert sorted((r["method"], r["seed"]) for r in summary["runs"]) == sorted(
      (m, s) for m in ("zero_shot", "union", "mind") for s in (0, 1))
  assert list(summary["table"]) == ["zero_shot", "union", "mind"]
  for run in summary["runs"]:
    assert set(run["accuracy"]) >= {"id", "ood_templates", "pretask"}
    assert all(v > 0 for v in run["gold_nll"].values())
    assert run["step"] == (2 if run["method"] == "zero_shot" else 2 + (run["method"] == "mind"))
  assert summary["table"]["zero_shot"]["forget/nll"] == [0.0, 0.0]
  text = (out / "results.md").read_text()
  assert "| mind |" in text and "mean ± std" in text
  assert (out / "results.png").stat().st_size > 0
  assert (out / "mind_alpha_per_perspective.png").exists()
  # A second invocation reuses every finished run.
  mtime = os.path.getmtime(out / "runs" / "seed1" / "mind" / "result.json")
  again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert os.path.getmtime(out / "runs" / "seed1" / "mind" / "result.json") == mtime
