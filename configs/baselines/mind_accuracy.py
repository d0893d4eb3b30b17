"""Beyond the paper: MIND whose TA follows what the student gets right in each perspective
(mind.capability="accuracy", mind_jax/capability.py and probe.py). It needs records built
with encode.perspective_tags: the experiment runner trains it as a tagged method,
configs/testbed/experiment.py's tagged_methods.
On another student: --config configs/baselines/mind_accuracy.py:<student config>.
"""
from mind_jax.config import student_of_baseline


def get_config(student=None):
  config = student_of_baseline(student, __file__)
  config.mind.capability = "accuracy"
  return config
