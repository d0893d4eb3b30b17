"""The pre-distillation student of the experiment: the demo student (configs/mind_demo.py
shape) trained by plain SFT on the built-in arithmetic word problems, with the demo
records' tokenizer (the runner sets tokenizer.path). It stands in for a pretrained
student: the zero-shot row, and the task whose loss after distillation measures
forgetting."""
from mind_jax.config import load_config_file


def get_config():
  config = load_config_file("mind_demo.py", __file__)
  config.method = "sft"
  config.data.source = "builtin"
  config.data.records_dir = ""
  config.data.num_examples = 2000
  config.train.seq_len = 96
  config.train.batch_size = 16
  config.train.steps = 300
  config.train.checkpoint_every = 300
  config.optim.warmup_steps = 20
  return config
