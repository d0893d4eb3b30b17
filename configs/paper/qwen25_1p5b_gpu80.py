"""Qwen2.5-1.5B, full fine-tuning with MIND, on one 80 GB GPU (H100 / A100 80 GB).

fp32 master weights and AdamW state, bf16 compute, remat; a step of 32 questions in 32
micro-batches of one question, each packed into 5 rows of 2048 tokens (a question's 8
sequences need 3.6 rows on average, 5 at the 99th percentile: configs/paper/common.py).
Expected: 50.5 GiB of the 75 GiB JAX may take (python -m mind_jax.perf --config
configs/paper/qwen25_1p5b_gpu80.py).

  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 CONFIG=configs/paper/qwen25_1p5b_gpu80.py \
      launch/gpu_local.sh runs/paper/qwen25_1p5b_gpu80
"""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("common.py:qwen25_1p5b", __file__)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  config.optim.grad_accum_steps = 32   # one question per micro-batch
  config.train.packed_rows = 5
  # An 80 GB GPU has 79.6 GiB; JAX takes XLA_PYTHON_CLIENT_MEM_FRACTION of it (0.75 by
  # default): launch with 0.95, about 75 GiB.
  config.train.device_memory_gb = 75.0
  config.sizing.num_devices = 1
  return config
