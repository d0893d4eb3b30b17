"""The testbed table on a pretrained student: SmolLM2-135M-Instruct, LoRA, the arithmetic
testbed's task in 4 styles (results/testbed_smollm2/).

  python -m mind_jax.import_hf --gguf "$(python -m mind_jax.models.smollm2 | tail -1)" \
      --out runs/smollm2
  python -m mind_jax.eval.experiment --config configs/testbed_smollm2/experiment.py \
      --out runs/testbed_smollm2

Sized for 2 CPU cores (results/testbed_smollm2/README.md says what was cut); the full-size
table is `benchmarks/gpu_check.py --table`. Every field is documented in
mind_jax/config.py:default_experiment_config.
"""
from mind_jax.config import default_experiment_config


def get_config():
  c = default_experiment_config()
  c.title = "MIND vs baselines on the arithmetic testbed, pretrained student (SmolLM2-135M)"
  c.data_config = "configs/testbed_smollm2/data.py"
  c.student_config = "configs/testbed_smollm2/mind.py"
  c.base_config = ""             # the student is pretrained: zero-shot is SmolLM2 itself
  c.methods = (("zero_shot", ""), ("single_path", "configs/baselines/single.py"),
               ("union", "configs/baselines/union.py"), ("mind", ""))
  c.single_per_perspective = True
  c.comparisons = (("mind", "union"), ("mind", "best_single"), ("union", "best_single"))
  c.seeds = (0, 1, 2)
  c.joint_steps = 20             # MIND's loss falls from 2.4 to 0.6 in 8 joint steps here
  c.ta_warmup_steps = 5
  c.workers = 2
  e = c.eval
  e.suites = "arith_id,arith_ood_length"
  e.id_size = 100
  e.ood_size = 40
  e.max_new_tokens = 96          # the longest style (scratchpad) answers in about 80 tokens
  e.batch_size = 50
  e.general_text = True          # forgetting: general prose NLL against the zero-shot row
  return c
