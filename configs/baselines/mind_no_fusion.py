"""Ablation: MIND without dynamic fusion (uniform alpha over the TA-selected subset).
On another student: --config configs/baselines/mind_no_fusion.py:<student config>.
"""
from mind_jax.config import student_of_baseline


def get_config(student=None):
  config = student_of_baseline(student, __file__)
  config.mind.fusion = "uniform"
  return config
