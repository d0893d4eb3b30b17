"""TPU v5e-16 (16 chips, 4 hosts): Qwen2.5-1.5B-shaped student, FSDP over all chips.

Launch with launch/tpu_pod.sh; every host runs the same command.
"""
from mind_jax.config import default_config


def get_config():
  config = default_config()
  m = config.model
  m.family = "qwen2"
  m.vocab_size = 151936
  m.hidden_size = 1536
  m.intermediate_size = 8960
  m.num_layers = 28
  m.num_heads = 12
  m.num_kv_heads = 2
  m.head_dim = 128
  m.qkv_bias = True
  m.tie_embeddings = True
  m.rope_theta = 1000000.0
  m.max_position_embeddings = 32768
  m.dtype = "bfloat16"
  m.remat = "full"
  config.mesh.data = 1
  config.mesh.fsdp = -1  # all 16 chips
  config.mesh.tensor = 1
  config.optim.learning_rate = 1e-5
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 0.0
  config.train.steps = 3000
  config.train.batch_size = 64
  config.train.seq_len = 2048
  config.train.log_every = 10
  config.train.checkpoint_every = 250
  config.data.num_examples = 50000
  return config
