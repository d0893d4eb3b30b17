"""MIND on the demo records (configs/data/demo.py), a small Llama-shaped student from scratch.

  python -m mind_jax.data.build --config configs/data/demo.py --out runs/demo_data
  python -m mind_jax.train --config configs/mind_demo.py --workdir runs/mind

Baselines and ablations are this config with other `mind` settings: configs/baselines/.
"""
from mind_jax.config import default_config


def get_config():
  config = default_config()
  config.method = "mind"
  config.data.source = "records"
  config.data.records_dir = "runs/demo_data"
  m = config.model
  m.family = "llama"
  m.vocab_size = 4096           # the demo records' BPE tokenizer
  m.hidden_size = 128
  m.intermediate_size = 344
  m.num_layers = 4
  m.num_heads = 4
  m.num_kv_heads = 2
  m.head_dim = 32
  m.max_position_embeddings = 512
  m.causal_block_size = 64      # 320-token sequences: skip the masked attention blocks
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 20
  config.train.batch_size = 4   # questions per step: 4 x 8 perspectives x 320 tokens
  # Packed: the present rationales of a step's questions go into rows of 640 tokens (about
  # 11 rows instead of 32 padded sequences; benchmarks/packing.py: 1.5x less time per useful
  # token on these records). The same losses and gradients as padded.
  config.train.packing = True
  config.train.seq_len = 640
  config.train.steps = 100      # joint steps, after the TA warm-up: enough for the rationale
                                # format (packed, the loss is ~1.6 from step 80 to 120 of a
                                # longer run; 200 padded steps reached ~1.1)
  config.train.log_every = 10
  config.train.checkpoint_every = 50
  config.mind.ta_warmup_steps = 30
  config.train.keep_freed_host_memory = True  # a CPU config: see mind_jax/config.py
  return config
