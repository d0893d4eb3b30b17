"""What every paper-scale MIND config (configs/paper/*.py) shares: `get_config(student)`
with student one of STUDENTS, or `get_config("student,target")` with the settings of a
machine that two students share (TARGETS). Not a target itself: the other files name it.

The paper's setting (../shared/MIND_METHOD.md): K = 8 perspectives per question, 497
training questions, students Qwen2.5-1.5B, Qwen2.5-7B and Llama-3.1-8B. Here: sequences
of T = 2048 tokens, the present rationales of a micro-batch packed into rows
(train.packing), bf16 compute, every layer rematerialised. The student starts from its
Hugging Face weights and the records are encoded with its tokenizer:

  python -m mind_jax.import_hf --hf_dir $HF/Qwen2.5-1.5B --out runs/paper/student
  python -m mind_jax.data.build --config configs/data/recipe.py --out runs/paper/records \
      --config.encode.tokenizer_path=runs/paper/student/tokenizer --config.encode.max_len=2048

Data assumed by the memory estimate and its packing check (config.sizing): a rationale
is log-normal with a mean of 600 tokens (sigma 0.6, clipped to 100..2000) plus 150
tokens of question, template and answer, so a question's 8 sequences hold about 6000
tokens: 2.9 rows of 2048. Check a config with `python -m mind_jax.perf --config X`.
"""
from mind_jax.config import default_config

# Hugging Face config.json of each student, in config.model's names.
STUDENTS = {
    "qwen25_1p5b": dict(family="qwen2", vocab_size=151936, hidden_size=1536,
                        intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
                        head_dim=128, qkv_bias=True, tie_embeddings=True,
                        rope_theta=1000000.0, max_position_embeddings=32768),
    "qwen25_7b": dict(family="qwen2", vocab_size=152064, hidden_size=3584,
                      intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                      head_dim=128, qkv_bias=True, tie_embeddings=False,
                      rope_theta=1000000.0, max_position_embeddings=32768),
    "llama31_8b": dict(family="llama", vocab_size=128256, hidden_size=4096,
                       intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                       head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                       rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
                       rope_high_freq_factor=4.0, rope_original_max_position=8192,
                       max_position_embeddings=131072),
}


def lora_on_one_gpu80(config):
  """Rank-64 LoRA on every projection, bf16 base, one 80 GB GPU: 32 micro-batches of one
  question, each in 5 packed rows (a question's 8 sequences need 3.6 rows on average, 5
  at the 99th percentile)."""
  config.lora.rank, config.lora.alpha, config.lora.base_dtype = 64, 128.0, "bfloat16"
  config.optim.learning_rate = 1e-4    # adapters take larger steps than full weights
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  config.optim.grad_accum_steps = 32   # one question per micro-batch
  config.train.packed_rows = 5
  config.train.device_memory_gb = 75.0  # see configs/paper/qwen25_1p5b_gpu80.py
  config.sizing.num_devices = 1
  return config


def fsdp_on_v5p32(config):
  """Full fine-tuning, FSDP over the 16 chips of a v5p-32 (95 GiB each): all 32 questions
  in one pass, 112 packed rows (32 questions' 256 sequences need 95 rows on average, 102
  at the 99th percentile), 7 per chip."""
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 16, 1
  config.optim.grad_accum_steps = 1
  config.train.packed_rows = 112
  config.train.device_memory_gb = 95.0  # HBM per v5p chip
  config.sizing.num_devices = 16
  return config


TARGETS = {"lora_gpu80": lora_on_one_gpu80, "fsdp_v5p32": fsdp_on_v5p32}


def get_config(arg: str = "qwen25_1p5b"):
  """arg: a student of STUDENTS, or "student,target" with a target of TARGETS."""
  student, _, target = arg.partition(",")
  config = student_config(student)
  return TARGETS[target](config) if target else config


def student_config(student: str):
  config = default_config()
  config.method = "mind"
  config.data.source = "records"
  config.data.records_dir = "runs/paper/records"
  config.train.init_from = "runs/paper/student"           # python -m mind_jax.import_hf
  config.tokenizer.path = "runs/paper/student/tokenizer"  # the records were encoded with it
  m = config.model
  for key, value in STUDENTS[student].items():
    m[key] = value
  m.dtype = "bfloat16"
  m.param_dtype = "float32"      # fp32 master weights; every target fits them (perf)
  m.remat = "full"               # T = 2048: keep each layer's input only
  o = config.optim
  o.learning_rate = 1e-5         # full fine-tuning of a pretrained student
  o.warmup_steps = 10
  o.weight_decay = 0.0
  t = config.train
  t.seq_len = 2048
  t.packing = True
  t.batch_size = 32              # questions per step (each with its K = 8 rationales)
  t.steps = 80                   # ~5 epochs of the paper's 497 questions
  t.log_every = 5
  t.checkpoint_every = 20
  config.mind.ta_warmup_epochs = 1.0  # the TA learns the student's preference first
  z = config.sizing              # the paper's data (see above)
  z.num_examples, z.num_perspectives, z.embed_dim = 497, 8, 384
  z.prompt_tokens, z.rationale_tokens_mean, z.rationale_tokens_sigma = 150, 600, 0.6
  z.rationale_tokens_min, z.rationale_tokens_max = 100, 2000
  return config
