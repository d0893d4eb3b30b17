"""MIND's sensitivity on the testbed: beta x tau_s, and the inertia mu (3 seeds each).

  python -m mind_jax.eval.sweep --config configs/testbed/sweep.py --out runs/testbed

With the table's --out, the sweep reuses its records, starts, and its mind and
mind_instant runs (mu = 0). results/testbed/ holds seeds 0 and 1 (--config.seeds='[0,1]',
for time); the same command without it adds seed 2 to the same directory.
Every field is documented in mind_jax/config.py:default_sweep_config.
"""
from mind_jax.config import default_sweep_config


def get_config():
  return default_sweep_config()
