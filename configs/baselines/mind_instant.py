"""Ablation: MIND with instantaneous losses (mu = 0, no inertia filter)."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("../mind_demo.py", __file__)
  config.mind.inertia_mode = "instant"
  return config
