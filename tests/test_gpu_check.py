"""benchmarks/gpu_check.py's CPU path (--cpu_smoke): the code the GPU check runs, at tiny
sizes, on the 8 simulated devices of conftest.py (all on the fsdp axis)."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax

from mind_jax import faults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")


def _load_script():
  spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _positive(value) -> bool:
  return isinstance(value, float) and math.isfinite(value) and value > 0


def test_cpu_smoke_writes_json_and_results_md(tmp_path, capsys):
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
  # The SmolLM2 MIND step: cut to 2 layers, but bf16 compute and the table's LoRA.
  smol = r["smollm2"]
  assert "error" not in smol, smol.get("error")
  assert smol["layers"] == 2 and smol["dtype"] == "bfloat16" and smol["lora_rank"] == 16
  assert smol["questions"] == 4 and smol["perspectives"] == 4 and smol["rows"] % 8 == 0
  for name in ("mind", "union"):
    assert _positive(smol[f"{name}_steps_per_s"]) and _positive(smol[f"{name}_tokens_per_s"])
    assert smol[f"{name}_mfu"] is None  # a CPU has no known peak
  assert "SmolLM2-135M MIND step" in capsys.readouterr().out
  assert "bf16 compute" in "\n".join(gpu_check.smollm2_lines(smol))

  text = md.read_text()
  assert text.startswith("# Results\n")  # appended, not overwritten
  assert f"## gpu_check: {r['device_kind']} x8" in text
  assert f"| tokens/s | {sft['tokens_per_s']:,.0f} |" in text
  assert "--cpu_smoke" in text  # the command that produced it
  assert "SmolLM2-135M MIND step" in text


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


def test_table_without_the_imported_student_is_one_line_and_exit_2(tmp_path):
  """--table needs SmolLM2 imported (runs/smollm2); without it, one line that says how to
  make it, before anything else runs."""
  result = subprocess.run(
      [sys.executable, SCRIPT, "--table", "--student", str(tmp_path / "none"),
       "--table_out", str(tmp_path / "table")], capture_output=True, text=True,
      cwd=tmp_path, timeout=120)
  assert result.returncode == faults.EXIT_BAD_INPUT, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  (line,) = [line for line in result.stderr.splitlines() if "--table needs" in line]
  assert "python -m mind_jax.import_hf" in line and "network" in line
  assert not (tmp_path / "table").exists()  # nothing written
