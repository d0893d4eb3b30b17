"""Ablation: MIND without dynamic fusion (uniform alpha over the TA-selected subset)."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("../mind_demo.py", __file__)
  config.mind.fusion = "uniform"
  return config
