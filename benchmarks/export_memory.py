"""Peak host RSS of the HF export, on a random model shaped like Qwen2.5-0.5B.

    python benchmarks/export_memory.py [--json out.json] [--workdir DIR]

1. A child process writes a random Qwen2.5-0.5B-shaped checkpoint (fp32 master
   weights, as training saves them; tied embeddings, vocab 151936) with our
   checkpoint code. Its memory is not measured.
2. Three more children, each reporting its own peak RSS (ru_maxrss of RUSAGE_SELF):
   - imports:  python, jax, orbax and mind_jax.export_hf imported, nothing read;
   - restore:  the whole params item restored at once (what an export that loads
               the model first would hold at least);
   - export:   `python -m mind_jax.export_hf --dtype bfloat16`, the real command.
The target is export peak RSS <= 1.3x the bf16 model size. The output is checked:
every tensor is in the safetensors files, at the expected size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN25_05B = dict(family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                  num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, qkv_bias=True,
                  tie_embeddings=True, rope_theta=1000000.0, max_position_embeddings=32768,
                  vocab_pad_multiple=128)
TARGET_RATIO = 1.3

MAKE_CHECKPOINT = """
import jax, sys
from mind_jax import checkpoint
from mind_jax.config import default_config
from mind_jax.models import decoder
cfg = default_config().model
cfg.update(%r)
model = decoder.DecoderConfig.from_config(cfg)
model = decoder.DecoderConfig(**dict(model.to_dict(), bos_token_id=0, eos_token_id=1, pad_token_id=2))
params = decoder.init_params(model, jax.random.PRNGKey(0))
with checkpoint.manager(sys.argv[1], async_save=False) as mngr:
  checkpoint.save(mngr, 1, params, {"model": model.to_dict(), "config": {}})
print(model.num_params())
"""
IMPORTS_ONLY = "import jax, numpy; jax.devices(); import mind_jax.export_hf"
RESTORE_ALL = ("import sys; from mind_jax import inference; "
               "inference.restore_params(sys.argv[1], None)")


# Runs a module or code in this child, then writes the child's own peak RSS
# (ru_maxrss of RUSAGE_SELF, KiB on Linux) to a file: the measurement is per process.
MEASURED = """
import resource, runpy, sys
report, kind, target = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1)
try:
  if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
  else:
    exec(target)
finally:
  with open(report, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def child_peak_rss(kind: str, target: str, *argv: str) -> tuple[float, float]:
  """(peak RSS in bytes, wall s) of a child running `target` (a module or code)."""
  start = time.perf_counter()
  with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
    subprocess.run([sys.executable, "-c", MEASURED, report.name, kind, target, *argv],
                   check=True, cwd=REPO,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu"))
    return float(open(report.name).read()), time.perf_counter() - start


def check_export(out: str, expected_bytes: int) -> int:
  """Every tensor is present; returns the bytes of tensor data found."""
  from safetensors import safe_open
  total, names = 0, 0
  for name in sorted(os.listdir(out)):
    if name.endswith(".safetensors"):
      with safe_open(os.path.join(out, name), "np") as f:
        for key in f.keys():
          sl = f.get_slice(key)
          shape, dtype = sl.get_shape(), sl.get_dtype()
          if dtype != "BF16":
            raise ValueError(f"{name}:{key} is {dtype}, expected BF16")
          total += 2 * int(__import__("numpy").prod(shape))
          names += 1
  if total != expected_bytes:
    raise ValueError(f"export holds {total} bytes of tensors, expected {expected_bytes}")
  return names


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="", help="keep the checkpoint and export here "
                 "(default: a temporary directory, removed)")
  p.add_argument("--max_shard_size", default="2GB", help="export --max_shard_size")
  p.add_argument("--json", default="", help="also write the numbers here")
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = args.workdir or tmp
    ckpt, out = os.path.join(root, "qwen05b_ckpt"), os.path.join(root, "qwen05b_hf")
    start = time.perf_counter()
    made = subprocess.run([sys.executable, "-c", MAKE_CHECKPOINT % QWEN25_05B, ckpt], check=True,
                          cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu"))
    n_params = int(made.stdout.strip().splitlines()[-1])
    print(f"random Qwen2.5-0.5B-shaped checkpoint: {n_params / 1e6:.1f}M params (fp32), "
          f"written in {time.perf_counter() - start:.0f} s")
    # The HF model's tensors: the vocab padding is cut back on export.
    from mind_jax.config import default_config
    from mind_jax.models import decoder, hf
    cfg = default_config().model
    cfg.update(QWEN25_05B)
    mappings = hf.tensor_mappings(decoder.DecoderConfig.from_config(cfg))
    bf16_bytes = sum(2 * int(__import__("numpy").prod(m.hf_shape)) for m in mappings)

    rss = {}
    rss["imports"] = child_peak_rss("code", IMPORTS_ONLY)
    rss["export"] = child_peak_rss("module", "mind_jax.export_hf", "--checkpoint", ckpt, "--out",
                                   out, "--dtype", "bfloat16", "--allow_no_tokenizer",
                                   "--max_shard_size", args.max_shard_size)
    tensors = check_export(out, bf16_bytes)
    rss["restore"] = child_peak_rss("code", RESTORE_ALL, ckpt)

  gib = 2**30
  print(f"bf16 model size: {bf16_bytes / gib:.3f} GiB ({tensors} tensors exported and checked)")
  print(f"{'child':<10}{'peak RSS GiB':>14}{'x bf16 size':>13}{'wall s':>9}")
  for name, (peak, wall) in rss.items():
    print(f"{name:<10}{peak / gib:>14.3f}{peak / bf16_bytes:>13.2f}{wall:>9.1f}")
  ratio = rss["export"][0] / bf16_bytes
  print(f"export peak RSS / bf16 size: {ratio:.2f} (target <= {TARGET_RATIO}); above the "
        f"imports-only process: {(rss['export'][0] - rss['imports'][0]) / bf16_bytes:.2f}x; "
        f"restoring the whole fp32 params instead: {rss['restore'][0] / bf16_bytes:.2f}x")
  result = dict(params=n_params, bf16_bytes=bf16_bytes, tensors=tensors,
                peak_rss_bytes={k: v[0] for k, v in rss.items()},
                wall_s={k: v[1] for k, v in rss.items()}, export_ratio=ratio,
                target_ratio=TARGET_RATIO)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
