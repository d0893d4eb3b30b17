"""Qwen2.5-7B with LoRA (rank 64 on every projection) and MIND, on one 80 GB GPU.

The base frozen in bf16, fp32 adapters and their AdamW state, bf16 compute, remat; a
step of 32 questions in 32 micro-batches of one, each packed into 5 rows of 2048 tokens
(a question's 8 sequences need 3.6 rows on average, 5 at the 99th percentile).
Expected: 41.4 GiB of the 75 GiB JAX may take (python -m mind_jax.perf --config
configs/paper/qwen25_7b_lora_gpu80.py).

  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 CONFIG=configs/paper/qwen25_7b_lora_gpu80.py \
      launch/gpu_local.sh runs/paper/qwen25_7b_lora_gpu80
"""
from mind_jax.config import load_config_file


def get_config():
  return load_config_file("common.py:qwen25_7b,lora_gpu80", __file__)
