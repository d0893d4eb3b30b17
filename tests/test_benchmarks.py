"""The one benchmark command runs (small sizes) and tabulates every benchmark's numbers."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_all_quick_prints_every_ratio(tmp_path):
  out = tmp_path / "all.json"
  table = tmp_path / "table.md"
  env = dict(os.environ, XLA_FLAGS="")  # the benchmarks' own one-device setting
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", "run_all.py"), "--quick",
       "--skip", "export_memory", "--skip", "real_model", "--json", str(out),
       "--markdown", str(table)],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  numbers = json.load(open(out))["results"]
  assert set(numbers) == {"train_step", "decode", "mind_vs_union", "reader"}
  assert numbers["train_step"]["ratio"] > 0 and numbers["decode"]["ratio"] > 0
  assert numbers["mind_vs_union"]["ratio"] > 0 and numbers["reader"]["examples_per_s"] > 0
  text = table.read_text()
  # Every table names the CPU kind it came from: lscpu's model name and its vector flags.
  assert text.startswith("CPU: ") and "vector flags: " in text.splitlines()[0]
  for row in ("train step", "greedy decode", "MIND step vs union", "reader", "compile"):
    assert row in text and row in result.stdout


def test_real_model_quick_runs_and_tabulates(tmp_path):
  """benchmarks/real_model.py --quick (SmolLM2 cut to 2 layers, small shapes) runs every
  section, its LoRA step-1 loss equals transformers + peft's, and run_all shows its rows.
  No timing is asserted. Skips without the model (as tests/test_real_model.py)."""
  from mind_jax.models import smollm2
  try:
    smollm2.smollm2_hf_dir()
  except smollm2.FetchFailed as e:
    if os.environ.get("CI") == "true":
      pytest.fail(f"CI=true, and the real model could not be fetched: {e}")
    pytest.skip(str(e))
  out = tmp_path / "real_model.json"
  env = dict(os.environ, XLA_FLAGS="")  # the benchmark's own one-device setting
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # its compiles are what it measures
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", "real_model.py"), "--quick",
       "--json", str(out)], capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  numbers = json.load(open(out))
  assert numbers["compile_ratio"] > 0 and numbers["peak_rss_chunked"] > 0
  assert numbers["temp_chunked"] < numbers["temp_full"]  # the chunked loss's point
  assert numbers["lora_loss_step1_diff"] < 1e-4  # both sides train the same model
  assert numbers["lora_ratio"] > 0 and numbers["decode_ratio"] > 0
  rows = [row[0] for row in run_all_module().rows({"real_model": numbers})]
  for row in ("compile, scanned", "unrolled", "peak RSS", "XLA temporaries",
              "LoRA r=16 SFT step", "greedy decode"):
    assert any(row in name for name in rows), (row, rows)
    assert row in result.stdout


def run_all_module():
  spec = importlib.util.spec_from_file_location(
      "run_all", os.path.join(REPO, "benchmarks", "run_all.py"))
  run_all = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(run_all)
  return run_all


def test_export_memory_table_row_from_its_numbers():
  spec = importlib.util.spec_from_file_location(
      "run_all", os.path.join(REPO, "benchmarks", "run_all.py"))
  run_all = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(run_all)
  rows = run_all.rows({"export_memory": dict(peak_rss_bytes={"export": 2**30},
                                             bf16_bytes=2**30, export_ratio=1.0,
                                             target_ratio=1.3)})
  assert rows == [("HF export peak RSS, Qwen2.5-0.5B shape (GiB)", "1.00", "1.00 (bf16 size)",
                   "1.00x (target <= 1.3)")]
