"""Ablation: MIND with instantaneous losses (mu = 0, no inertia filter).
On another student: --config configs/baselines/mind_instant.py:<student config>.
"""
from mind_jax.config import student_of_baseline


def get_config(student=None):
  config = student_of_baseline(student, __file__)
  config.mind.inertia_mode = "instant"
  return config
