"""MIND with the collapse guard [ours]: alpha mixed with uniform weights over the present
perspectives by mind.alpha_floor, so every rationale keeps some weight. Off in the
paper's method (alpha_floor = 0); this row shows what it changes.
On another student: --config configs/baselines/mind_floor.py:<student config>.
"""
from mind_jax.config import student_of_baseline


def get_config(student=None):
  config = student_of_baseline(student, __file__)
  config.mind.alpha_floor = 0.5
  return config
