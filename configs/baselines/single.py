"""Single-path distillation: one perspective only (mind.single_perspective).
On another student: --config configs/baselines/single.py:<student config>.
"""
from mind_jax.config import student_of_baseline


def get_config(student=None):
  config = student_of_baseline(student, __file__)
  config.mind.weighting = "single"
  config.mind.consistency_weight = 0.0
  return config
