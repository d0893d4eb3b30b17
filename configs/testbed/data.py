"""The testbed's rationale records: two-digit additions and subtractions, each answered in
8 rationale styles of built-in learnability by the offline `styles` teacher
(mind_jax/data/teachers/styles.py).

  python -m mind_jax.data.build --config configs/testbed/data.py --out runs/testbed_data

The task was sized so that a from-scratch 0.8M-parameter student learns it in 1000
steps of 4 questions on a CPU: one-seed probes reached 71% ID accuracy with the
scratchpad style alone, and 2% with three- to four-digit operands in the same budget.
"""
from mind_jax.config import default_data_config
from mind_jax.data.teachers.styles import STYLE_PROMPTS

ANSWER_RULE = " Finish with the sentence 'The answer is X.'\n\nProblem: {question}"


def get_config():
  config = default_data_config()
  q = config.questions
  q.source = "arithmetic"
  q.arith_families = ("add", "sub")  # OOD: a + b - c and a - b + c (eval/suites.py)
  q.arith_size = 2000
  q.arith_min_digits = 2
  q.arith_max_digits = 2         # OOD length: a three-digit first operand
  p = config.perspectives
  p.names = tuple(STYLE_PROMPTS)
  p.prompts = {name: text + ANSWER_RULE for name, text in STYLE_PROMPTS.items()}
  p.teachers = {name: "" for name in STYLE_PROMPTS}
  config.teacher.backend = "styles"
  # Every style is correct, so every question is "easy" (difficulty 1.0): keep them all.
  config.resample.easy_keep_rate = 1.0
  e = config.encode
  e.bpe_vocab_size = 600         # digits split, the styles' words whole
  e.bpe_split_digits = True
  e.max_len = 112                # the longest style (verbose_scratchpad) is at most 112
  return config
