"""Llama-3.1-8B, full fine-tuning with MIND, FSDP on a TPU v5p-32 (16 chips of 95 GiB, 4 hosts).

fp32 master weights and AdamW state sharded over all 16 chips, bf16 compute, remat; a
step of 32 questions (two per chip) in one pass, packed into 112 rows of 2048 tokens,
7 per chip (32 questions' 256 sequences need 95 rows on average, 102 at the 99th
percentile). Expected: 43.5 GiB per chip of 95 (python -m mind_jax.perf --config
configs/paper/llama31_8b_fsdp_v5p32.py).

  ACCELERATOR=v5p-32 RUNTIME=v2-alpha-tpuv5 CONFIG=configs/paper/llama31_8b_fsdp_v5p32.py \
      WORKDIR=gs://BUCKET/paper/llama31_8b_v5p32 launch/tpu_pod.sh create|install|train
"""
from mind_jax.config import load_config_file


def get_config():
  return load_config_file("common.py:llama31_8b,fsdp_v5p32", __file__)
