"""TPU v5p-64 (32 chips, 8 hosts): Llama-3.1-8B-shaped student, FSDP x tensor.

Launch with launch/tpu_pod.sh; every host runs the same command.
"""
from mind_jax.config import default_config


def get_config():
  config = default_config()
  m = config.model
  m.family = "llama"
  m.vocab_size = 128256
  m.hidden_size = 4096
  m.intermediate_size = 14336
  m.num_layers = 32
  m.num_heads = 32
  m.num_kv_heads = 8
  m.head_dim = 128
  m.rope_theta = 500000.0
  m.rope_scaling = "llama3"
  m.rope_factor = 8.0
  m.rope_low_freq_factor = 1.0
  m.rope_high_freq_factor = 4.0
  m.rope_original_max_position = 8192
  m.max_position_embeddings = 131072
  m.rms_norm_eps = 1e-5
  m.dtype = "bfloat16"
  m.remat = "full"
  config.mesh.data = 1
  config.mesh.fsdp = -1  # 32 chips / tensor
  config.mesh.tensor = 1
  config.optim.learning_rate = 1e-5
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 0.0
  config.train.steps = 3000
  config.train.batch_size = 128
  config.train.seq_len = 2048
  config.train.log_every = 10
  config.train.checkpoint_every = 250
  config.data.num_examples = 50000
  return config
