"""loss_weighted [ours]: alpha = softmax(-CE / tau_s) from the student's own losses, no TA.
On another student: --config configs/baselines/loss_weighted.py:<student config>.
"""
from mind_jax.config import student_of_baseline


def get_config(student=None):
  config = student_of_baseline(student, __file__)
  config.mind.weighting = "loss"
  return config
