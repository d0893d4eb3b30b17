"""benchmarks/gpu_check.py's CPU path (--cpu_smoke): the code the GPU check runs, at tiny
sizes, on the 8 simulated devices of conftest.py (all on the fsdp axis)."""
import importlib.util
import json
import math
import os

import jax

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "gpu_check.py")


def _load_script():
  spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _positive(value) -> bool:
  return isinstance(value, float) and math.isfinite(value) and value > 0


def test_cpu_smoke_writes_json_and_results_md(tmp_path):
  gpu_check = _load_script()
  out, md = tmp_path / "gpu_check.json", tmp_path / "RESULTS.md"
  md.write_text("# Results\n")
  gpu_check.main(["--cpu_smoke", "--json", str(out), "--results_md", str(md)])

  r = json.loads(out.read_text())
  assert r["device_count"] == len(jax.devices()) == 8
  sft, mind = r["sft"], r["mind"]
  assert "error" not in sft and "error" not in mind, (sft.get("error"), mind.get("error"))
  # The search doubles the per-device batch 1, 2, 4; the global batch is 8x that.
  assert sft["batch"] >= 1 and sft["batch"] == sft["batch_per_device"] * 8
  assert [t["batch_per_device"] for t in sft["batch_search"]] == [1, 2, 4]
  assert all(t["result"] == "ok" for t in sft["batch_search"])  # no memory limit on CPU
  assert len(sft["step_times_s"]) == 2 and all(_positive(t) for t in sft["step_times_s"])
  assert _positive(sft["tokens_per_s"]) and _positive(sft["compile_s"])
  assert sft["mfu"] is None  # a CPU has no known peak
  assert _positive(sft["memory_gib"]["peak"])
  for key in ("mind_step_s", "union_step_s", "mind_union_ratio"):
    assert _positive(mind[key]), key

  text = md.read_text()
  assert text.startswith("# Results\n")  # appended, not overwritten
  assert f"## gpu_check: {r['device_kind']} x8" in text
  assert f"| tokens/s | {sft['tokens_per_s']:,.0f} |" in text
  assert "--cpu_smoke" in text  # the command that produced it


def test_results_md_appends_one_section_per_run(tmp_path):
  gpu_check = _load_script()
  results = dict(device_kind="NVIDIA H100 80GB HBM3", device_count=1, jax_version="0.0",
                 date="2000-01-01 00:00 UTC", command="python benchmarks/gpu_check.py",
                 model=dict(family="qwen2", dtype="bfloat16", param_dtype="float32",
                            remat="dots"),
                 sft=dict(params=494e6, error="no batch fits"),
                 mind=dict(error="RuntimeError: boom"))
  path = tmp_path / "RESULTS.md"
  gpu_check.append_results_md(str(path), results)
  gpu_check.append_results_md(str(path), results)
  text = path.read_text()
  assert text.count("## gpu_check: NVIDIA H100 80GB HBM3 x1") == 2
  assert "tokens/s" not in text  # nothing measured, nothing claimed
