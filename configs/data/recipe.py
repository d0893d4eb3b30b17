"""The paper recipe's records (README: "From a Hugging Face student to a distilled export"):
GSM8K's train.jsonl as it is, the 8 perspectives written by a `jax` teacher (a mind_jax
workdir made by import_hf, sharded over every device of the host or pod), judged, and
encoded with the imported student's tokenizer.

  python -m mind_jax.data.build --config configs/data/recipe.py --out $RUNS/records \
      --config.questions.jsonl_path=$GSM8K_TRAIN \
      --config.teacher.jax_checkpoint=$RUNS/teacher \
      --config.encode.tokenizer_path=$RUNS/student/tokenizer

The judge stays on: a rationale whose final answer is not GSM8K's is dropped.
"""
from mind_jax.config import default_data_config


def get_config():
  config = default_data_config()
  q = config.questions
  q.source = "jsonl"
  q.jsonl_format = "gsm8k"      # {"question", "answer": "...#### 42"}, GSM8K's own lines
  q.jsonl_path = "data/gsm8k/train.jsonl"
  t = config.teacher
  t.backend = "jax"
  t.jax_checkpoint = "runs/recipe/teacher"  # python -m mind_jax.import_hf --out ...
  t.temperature = 0.7
  t.max_new_tokens = 512
  t.batch_size = 64             # prompts per generate call, split over every device
  config.encode.tokenizer_path = "runs/recipe/student/tokenizer"  # the student's, not the teacher's
  config.encode.max_len = 768   # prompt + a 512-token rationale + the answer
  config.write.num_shards = 16  # >= the hosts that will read the records
  return config
