"""MIND for the paper recipe (README: "From a Hugging Face student to a distilled export"):
the student imported from Hugging Face, distilled on the records of configs/data/recipe.py.

  python -m mind_jax.train --config configs/recipe_mind.py --workdir $RUNS/mind \
      --config.train.init_from=$RUNS/student --config.tokenizer.path=$RUNS/student/tokenizer \
      --config.data.records_dir=$RUNS/records

The model's shape is the imported student's: with train.init_from set, the trainer reads it
from that checkpoint (train.stated_model_config), so this file names no shape, only how the
model runs (bf16 compute over fp32 master weights, remat) and is fed (packed rationales).
"""
from mind_jax.config import default_config


def get_config():
  config = default_config()
  config.method = "mind"
  config.data.source = "records"
  config.data.records_dir = "runs/recipe/records"
  config.train.init_from = "runs/recipe/student"          # python -m mind_jax.import_hf --out ...
  config.tokenizer.path = "runs/recipe/student/tokenizer"  # the records were encoded with it
  m = config.model
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.remat = "dots"
  config.mesh.data = 1
  config.mesh.fsdp = -1          # params and batch over every device (a pod: every chip)
  o = config.optim
  o.learning_rate = 1e-5         # fine-tuning a pretrained student, as configs/gpu_qwen05b.py
  o.warmup_steps = 100
  o.weight_decay = 0.0
  t = config.train
  t.batch_size = 32              # questions per step (x 8 perspectives); a multiple of devices
  t.steps = 1000                 # joint steps, after the TA warm-up
  t.packing = True               # the present rationales packed into rows of seq_len tokens
  t.seq_len = 2048               # (>= the records' encode.max_len); rows chosen at start-up
  t.log_every = 10
  t.checkpoint_every = 250
  config.mind.ta_warmup_steps = 50
  return config
