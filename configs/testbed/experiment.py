"""The testbed table: MIND against every baseline on two-digit arithmetic with 8 rationale
styles of known learnability (results/testbed/).

  python -m mind_jax.eval.experiment --config configs/testbed/experiment.py --out runs/testbed

Every field is documented in mind_jax/config.py:default_experiment_config.
"""
from mind_jax.config import default_experiment_config


def get_config():
  c = default_experiment_config()
  c.title = "MIND vs baselines on the arithmetic testbed"
  c.data_config = "configs/testbed/data.py"
  c.student_config = "configs/testbed/mind.py"
  c.base_config = ""             # from scratch: the zero-shot row is the initialisation
  # Every method of the default table, then the collapse guard as its own row.
  c.methods = c.methods + (("mind_floor", "configs/baselines/mind_floor.py"),
                           ("mind_progress", "configs/baselines/mind_progress.py"))
  c.single_per_perspective = True
  # Issue "beyond the paper": union and MIND again on tagged prompts, asked for the
  # dev-best perspective and by a vote over all 8.
  # mind_accuracy needs the tags (its probe asks each style by its tag): tagged rows only.
  c.tagged_methods = (("union", "best,vote"), ("mind", "best,vote"),
                      ("mind_accuracy", "none,best,vote", "configs/baselines/mind_accuracy.py"))
  c.comparisons = (("mind", "union"), ("mind", "best_single"), ("mind_floor", "mind"),
                   ("mind_progress", "mind"), ("union+tags/best", "best_single"),
                   ("union+tags/vote", "best_single"), ("mind+tags/vote", "best_single"),
                   ("union+tags/vote", "union"), ("mind_accuracy+tags/none", "union"),
                   ("mind_accuracy+tags/none", "best_single"),
                   ("mind_accuracy+tags/best", "best_single"),
                   ("mind_accuracy+tags/vote", "best_single"),
                   ("mind_accuracy+tags/none", "mind"),
                   ("mind_accuracy+tags/vote", "union+tags/vote"))
  c.seeds = (0, 1, 2, 3, 4)
  c.joint_steps = 1000
  c.ta_warmup_steps = 20
  c.workers = 2
  e = c.eval
  e.suites = "arith_id,arith_ood_length,arith_ood_mix"
  e.id_size = 200
  e.ood_size = 100
  e.max_new_tokens = 128         # the longest style (verbose) is ~100 tokens
  e.batch_size = 50
  return c
