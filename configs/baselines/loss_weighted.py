"""loss_weighted [ours]: alpha = softmax(-CE / tau_s) from the student's own losses, no TA."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("../mind_demo.py", __file__)
  config.mind.weighting = "loss"
  return config
