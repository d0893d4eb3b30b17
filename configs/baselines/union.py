"""Multi-path union: all K rationales with uniform weights, no consistency term.
On another student: --config configs/baselines/union.py:<student config>.
"""
from mind_jax.config import student_of_baseline


def get_config(student=None):
  config = student_of_baseline(student, __file__)
  config.mind.weighting = "uniform"
  config.mind.consistency_weight = 0.0
  return config
