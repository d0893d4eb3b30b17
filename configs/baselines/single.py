"""Single-path distillation: one perspective only (mind.single_perspective)."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("../mind_demo.py", __file__)
  config.mind.weighting = "single"
  config.mind.consistency_weight = 0.0
  return config
