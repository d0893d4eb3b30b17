"""configs/paper/: every paper-scale MIND config fits its target's memory by the estimate
(mind_jax/perf.py), holds its micro-batches' rationales in its packed rows, and its MIND
step compiles for a scaled-down copy on the same mesh axes (8 simulated devices)."""
import glob
import importlib.util
import os
import subprocess
import sys

import jax
import pytest

from mind_jax import perf, sharding, train
from mind_jax.config import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "paper", "*.py"))
               if os.path.basename(p) != "common.py")  # common.py: shared, no target
K, T = 8, 64  # the scaled-down records: K perspectives of up to T tokens
# XLA:CPU code generation at its cheapest: these tests compile, they do not run.
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)


def _benchmark():
  """benchmarks/estimator_vs_xla.py: its records writer and step compiler."""
  spec = importlib.util.spec_from_file_location(
      "estimator_vs_xla", os.path.join(REPO, "benchmarks", "estimator_vs_xla.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def test_there_are_six_paper_configs():
  names = {os.path.basename(p) for p in PAPER}
  assert names == {"qwen25_1p5b_gpu80.py", "qwen25_1p5b_v5e8.py", "qwen25_7b_lora_gpu80.py",
                   "llama31_8b_lora_gpu80.py", "qwen25_7b_fsdp_v5p32.py",
                   "llama31_8b_fsdp_v5p32.py"}


@pytest.mark.parametrize("path", PAPER, ids=os.path.basename)
def test_paper_config_fits_its_target(path):
  config = load_config_file(path)
  assert config.method == "mind" and config.sizing.num_perspectives == 8
  assert config.train.seq_len == 2048 and config.train.packing
  assert config.model.dtype == "bfloat16"
  assert (config.lora.rank > 0) == ("lora" in os.path.basename(path))
  shape = perf.mesh_shape(config.mesh, config.sizing.num_devices)
  shards = shape["data"] * shape["fsdp"]
  assert config.train.packed_rows % shards == 0  # the rows split over the batch shards
  assert config.train.batch_size // config.optim.grad_accum_steps % shards == 0
  a = perf.assess(config, config.sizing.num_devices)
  text = perf.report(config, a)
  assert a["fits"], text
  # Headroom for what the estimate misses (benchmarks/estimator_vs_xla.py: on CPU it
  # comes to 0.8-0.96 of XLA's account).
  assert a["estimate"]["total"] < 0.75 * a["limit"], text
  assert a["packing"]["overflow"] <= 0.01, text  # rationales left out of a step: rare


def test_the_cli_says_fits_and_does_not_fit_with_the_exit_code():
  path = os.path.join(REPO, "configs", "paper", "qwen25_1p5b_v5e8.py")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  def cli(*overrides):
    return subprocess.run([sys.executable, "-m", "mind_jax.perf", "--config", path,
                           *overrides], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
  ok = cli()
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert ok.stdout.strip().splitlines()[-1] == "fits"
  for row in perf.ESTIMATE_ROWS + ("total",):
    assert row in ok.stdout
  # 64 rows of 2048 tokens per micro-batch: 32 per chip, a 16 GiB chip cannot hold them.
  too_big = cli("--config.train.packed_rows=64")
  assert too_big.returncode == 1, too_big.stderr[-2000:]
  assert too_big.stdout.strip().splitlines()[-1] == "does not fit"


# ------------------------------------------------------------------ compiles, scaled down


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  module = _benchmark()
  module.records_dir = module.write_records(str(tmp_path_factory.mktemp("records")),
                                            num_examples=64, num_perspectives=K, max_len=T,
                                            embed_dim=16)
  return module


def scaled_down(config, records_dir: str):
  """The config at toy size on at most 8 devices: the same family, tying, biases, RoPE
  scaling, remat, dtypes, LoRA, packing and micro-batch count, and the same mesh axes
  (fsdp cut to fit 8 devices); one question per batch shard per micro-batch."""
  m = config.model
  m.vocab_size, m.hidden_size, m.intermediate_size, m.num_layers = 512, 64, 128, 1
  m.num_heads, m.num_kv_heads, m.head_dim = 4, 2, 16
  s = config.mesh
  s.fsdp = min(s.fsdp, 8 // (s.data * s.tensor))
  shards = s.data * s.fsdp
  config.train.batch_size = config.optim.grad_accum_steps * shards
  config.train.packed_rows = K * shards  # every rationale fits: K sequences of <= T
  config.train.seq_len = T
  config.data.records_dir, config.data.shuffle_buffer = records_dir, 64
  config.tokenizer.path, config.train.init_from = "", ""  # the records' tokenizer
  config.lora.rank = min(config.lora.rank, 8)
  return config, s.data * s.fsdp * s.tensor


@pytest.mark.parametrize("path", PAPER, ids=os.path.basename)
def test_paper_mind_step_compiles_scaled_down(bench, path, tmp_path):
  config, devices = scaled_down(load_config_file(path), bench.records_dir)
  if config.lora.rank:
    config.train.init_from = str(tmp_path / "base")
    train.lora_config_of(config)  # the trainer's own check, before writing a base
    bench.write_base_checkpoint(config.train.init_from, config.model)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:devices])
  built = bench.compile_step(config, str(tmp_path / "run"), mesh,
                             compiler_options=FAST_COMPILE)
  assert "packed_ids" in built.batch  # the packed step, not the padded one
  assert built.batch["packed_ids"].shape == (config.optim.grad_accum_steps,
                                             config.train.packed_rows, T)
  if config.lora.rank:
    assert built.task.abstract.frozen is not None  # adapters on a frozen base
  assert built.xla["total"] > 0 and built.estimate["total"] > 0
