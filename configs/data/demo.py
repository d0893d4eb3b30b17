"""The demo dataset: reasoning-gym gsm_symbolic, the 8 perspectives, the template teacher.

  python -m mind_jax.data.build --config configs/data/demo.py --out runs/demo_data

The template teacher is an offline DEMONSTRATION teacher (no model): it rewrites
each item's gold solution in the 8 paradigms.
"""
from mind_jax.config import default_data_config
from mind_jax.eval.suites import split_gsm_templates


def get_config():
  config = default_data_config()
  config.questions.rg_size = 400
  # Train on 3/4 of the gsm_symbolic templates; the rest are the OOD suite's.
  config.questions.rg_templates = tuple(split_gsm_templates()[0])
  config.teacher.backend = "template"
  # Template rationales run 170-400 tokens with this BPE (median ~200): 320 keeps
  # ~95% of them, and every perspective (analogy and socratic are the longest).
  config.encode.bpe_vocab_size = 4096
  config.encode.max_len = 320
  return config
