"""One GPU, a student shaped like Qwen2.5-0.5B, bf16 compute with fp32 master weights.

To start from real weights: python -m mind_jax.import_hf --hf_dir <Qwen2.5-0.5B dir> --out W0,
then --config.train.init_from=W0 --config.tokenizer.path=<Qwen2.5-0.5B dir>.
"""
from mind_jax.config import default_config


def get_config():
  config = default_config()
  m = config.model
  m.family = "qwen2"
  m.vocab_size = 151936
  m.hidden_size = 896
  m.intermediate_size = 4864
  m.num_layers = 24
  m.num_heads = 14
  m.num_kv_heads = 2
  m.head_dim = 64
  m.qkv_bias = True
  m.tie_embeddings = True
  m.rope_theta = 1000000.0
  m.max_position_embeddings = 32768
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.remat = "dots"
  config.mesh.data = 1
  config.optim.learning_rate = 1e-5
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 0.0
  config.train.steps = 2000
  config.train.batch_size = 16
  config.train.seq_len = 1024
  config.train.log_every = 10
  config.train.checkpoint_every = 500
  config.data.num_examples = 20000
  config.tokenizer.bpe_vocab_size = 8192
  return config
