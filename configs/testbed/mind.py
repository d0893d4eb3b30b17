"""MIND on the testbed records (configs/testbed/data.py): a 0.8M-parameter Llama-shaped
student trained from scratch on two-digit additions and subtractions.

  python -m mind_jax.data.build --config configs/testbed/data.py --out runs/testbed_data
  python -m mind_jax.train --config configs/testbed/mind.py --workdir runs/testbed_mind

Baselines on this student: --config configs/baselines/union.py:configs/testbed/mind.py.
"""
from mind_jax.config import default_config


def get_config():
  config = default_config()
  config.method = "mind"
  config.data.source = "records"
  config.data.records_dir = "runs/testbed_data"
  m = config.model
  m.family = "llama"
  m.vocab_size = 600            # the testbed records' BPE (digits split)
  m.hidden_size = 128
  m.intermediate_size = 344
  m.num_layers = 4              # 2 layers learned the task 4x slower in a one-seed probe
  m.num_heads = 4
  m.num_kv_heads = 2
  m.head_dim = 32
  m.max_position_embeddings = 256
  m.causal_block_size = 64
  o = config.optim
  # One-seed probes of the scratchpad single path at 1000 steps: lr 2e-3 71% ID accuracy,
  # 3e-3 55%, 5e-3 4%; without weight decay and with b2 0.99 better than 0.1 / 0.95.
  o.learning_rate = 2e-3
  o.weight_decay = 0.0
  o.b2 = 0.99
  o.warmup_steps = 20
  t = config.train
  t.batch_size = 4              # questions per step: 4 x 8 styles
  t.steps = 1000
  t.log_every = 50
  t.checkpoint_every = 500
  t.slot_width_multiple = 16    # each style read up to its own longest slot
  t.keep_freed_host_memory = True  # a CPU config: see mind_jax/config.py
  config.mind.ta_warmup_steps = 20
  # mind.capability="accuracy" only (configs/baselines/mind_accuracy.py): 11 probes of 16
  # questions per style over the 1020 steps, each answer up to the longest style's length.
  config.mind.probe_suite = "arith_id"
  config.mind.probe_every = 100
  config.mind.probe_size = 16
  config.mind.probe_max_new_tokens = 128
  return config
