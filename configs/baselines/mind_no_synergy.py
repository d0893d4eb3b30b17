"""Ablation: MIND without the synergy attention layer of the TA."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("../mind_demo.py", __file__)
  config.ta.synergy = False
  return config
