"""MCC-KD-like: uniform weights plus the answer-consistency term."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("../mind_demo.py", __file__)
  config.mind.weighting = "uniform"
  config.mind.consistency_weight = 0.1
  return config
