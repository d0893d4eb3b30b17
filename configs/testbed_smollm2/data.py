"""The pretrained testbed's rationale records: the arithmetic testbed (configs/testbed/data.py)
in SmolLM2-135M-Instruct's own tokenizer and chat template, with 4 of its 8 styles.

  python -m mind_jax.import_hf --gguf "$(python -m mind_jax.models.smollm2 | tail -1)" \
      --out runs/smollm2
  python -m mind_jax.data.build --config configs/testbed_smollm2/data.py --out DIR

Two-digit additions and subtractions: SmolLM2 answers 9% of them zero-shot (and 2% with a
three-digit first operand), inside the 5-35% band where a style can both help and hurt.
The 4 styles keep the testbed's spread at a third of its tokens: the detailed scratchpad
(best single style from scratch), the compact scratchpad (second), the plain answer (the
lowest per-token CE, where MIND's TA goes) and reversed digits (the one no student learned).
The verbose, carry-free, number-word and shuffled styles were cut for the CPU budget.
"""
from mind_jax.config import load_config_file

STYLES = ("scratchpad", "compact_scratchpad", "plain_answer", "reversed_digits")


def get_config():
  config = load_config_file("../testbed/data.py", __file__)
  config.questions.arith_size = 400  # 30 joint steps x 4 questions read 120 of them
  p = config.perspectives
  p.names = STYLES
  p.prompts = {name: p.prompts[name] for name in STYLES}
  p.teachers = {name: "" for name in STYLES}
  e = config.encode
  e.tokenizer_path = "runs/smollm2/tokenizer"  # the student's own (import_hf above)
  e.max_len = 160                # chat template + instruction + rationale: at most 125 here
  return config
