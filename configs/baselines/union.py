"""Multi-path union: all K rationales with uniform weights, no consistency term."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("../mind_demo.py", __file__)
  config.mind.weighting = "uniform"
  config.mind.consistency_weight = 0.0
  return config
