"""Tiny CPU config: a 2-layer model on the built-in data, trains in seconds.

  python -m mind_jax.train --config configs/debug_cpu.py --workdir /tmp/run
"""
from mind_jax.config import default_config


def get_config():
  config = default_config()  # the defaults are this tiny model; see mind_jax/config.py
  config.train.steps = 60
  config.train.log_every = 10
  config.train.checkpoint_every = 30
  config.train.keep_freed_host_memory = True  # a CPU config: see mind_jax/config.py
  return config
