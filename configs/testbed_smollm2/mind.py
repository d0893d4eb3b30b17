"""MIND on the pretrained testbed (configs/testbed_smollm2/data.py): SmolLM2-135M-Instruct,
imported from its GGUF, distilled with LoRA adapters.

  python -m mind_jax.import_hf --gguf "$(python -m mind_jax.models.smollm2 | tail -1)" \
      --out runs/smollm2
  python -m mind_jax.train --config configs/testbed_smollm2/mind.py --workdir runs/smollm2_mind \
      --config.data.records_dir=DIR

LoRA rather than full fine-tuning: it is how a user distils into a pretrained student, it
keeps the base untouched (the forgetting column measures what the adapters cost), and its
optimizer state is 2.6 MB instead of 1.1 GB per worker. The shape is the imported model's
(train.stated_model_config); fp32 on CPU, remat "full" (a third of the memory at the same
step time, benchmarks/RESULTS.md), rationales packed into 256-token rows.
"""
from mind_jax.config import default_config


def get_config():
  config = default_config()
  config.method = "mind"
  config.data.source = "records"
  config.data.records_dir = "runs/testbed_smollm2/data"
  config.train.init_from = "runs/smollm2"
  config.tokenizer.path = "runs/smollm2/tokenizer"
  m = config.model
  m.dtype = "float32"
  m.param_dtype = "float32"
  m.remat = "full"
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.lora.rank = 16
  config.lora.alpha = 32.0
  o = config.optim
  o.learning_rate = 1e-3         # LoRA adapters, a few dozen steps
  o.warmup_steps = 5
  o.weight_decay = 0.0
  t = config.train
  t.batch_size = 4               # questions per step (x 4 styles)
  t.steps = 30
  t.packing = True
  t.seq_len = 256
  t.log_every = 5
  t.checkpoint_every = 30
  t.keep_freed_host_memory = True  # a CPU config: see mind_jax/config.py
  config.mind.ta_warmup_steps = 5
  return config
