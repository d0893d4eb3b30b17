"""The methods-vs-baselines table on the demo records (results/experiment/results.md).

  python -m mind_jax.eval.experiment --config configs/experiment.py --out runs/experiment

Every field is documented in mind_jax/config.py:default_experiment_config.
"""
from mind_jax.config import default_experiment_config


def get_config():
  return default_experiment_config()
