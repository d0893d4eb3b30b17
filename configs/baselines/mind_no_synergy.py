"""Ablation: MIND without the synergy attention layer of the TA.
On another student: --config configs/baselines/mind_no_synergy.py:<student config>.
"""
from mind_jax.config import student_of_baseline


def get_config(student=None):
  config = student_of_baseline(student, __file__)
  config.ta.synergy = False
  return config
