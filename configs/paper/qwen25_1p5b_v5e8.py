"""Qwen2.5-1.5B, full fine-tuning with MIND, on a TPU v5e-8 (8 chips of 16 GiB, one host).

fp32 master weights and AdamW state sharded over fsdp=2 x tensor=4 (the vocabulary,
heads and MLP over tensor quarter each chip's logits), bf16 compute, remat; a step of 32
questions in 16 micro-batches of 2 (one per fsdp shard), each packed into 10 rows of
2048 tokens (2 questions' 16 sequences need 6.6 rows on average, 8 at the 99th
percentile). Expected: 9.8 GiB per chip of 16 (python -m mind_jax.perf --config
configs/paper/qwen25_1p5b_v5e8.py).

  ACCELERATOR=v5litepod-8 CONFIG=configs/paper/qwen25_1p5b_v5e8.py \
      WORKDIR=gs://BUCKET/paper/qwen25_1p5b_v5e8 launch/tpu_pod.sh create|install|train
"""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("common.py:qwen25_1p5b", __file__)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 4
  config.optim.grad_accum_steps = 16   # 2 questions per micro-batch
  config.train.packed_rows = 10
  config.train.device_memory_gb = 16.0  # HBM per v5e chip
  config.sizing.num_devices = 8
  return config
