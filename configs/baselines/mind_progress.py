"""Beyond the paper: MIND whose TA follows learning progress (mind.capability="progress",
mind_jax/capability.py) instead of low CE.
On another student: --config configs/baselines/mind_progress.py:<student config>.
"""
from mind_jax.config import student_of_baseline


def get_config(student=None):
  config = student_of_baseline(student, __file__)
  config.mind.capability = "progress"
  return config
