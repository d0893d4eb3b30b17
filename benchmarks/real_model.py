"""SmolLM2-135M-Instruct, a real model: compile time, step memory, LoRA SFT and decoding, on CPU.

The model is mind_jax.models.smollm2's (30 layers, hidden 576, 9/3 heads, vocab 49152, tied
embeddings; the transformers directory converted from its GGUF, fp32). Four measurements:

1. Compile time of the joint MIND step as configs/recipe_mind.py runs it with
   --config.lora.rank=16 --config.model.dtype=float32 --config.model.remat=none: LoRA r=16 on
   the frozen (bf16-stored) base, TA, answer-consistency JSD, loss chunks of
   train.loss_chunk_tokens=128, on a packed batch (4 questions x 8 perspectives of up to 256
   tokens, packed by mind_jax/data/packing.py into 6 rows of 512). `.lower()` and
   `.compile()` are timed apart, on abstract arguments (nothing is allocated), each in a
   fresh process with the persistent compilation cache off, so every compile is real.
   Scanned layers (model.scan_layers, the default) at 4 and 30 layers; unrolled layers at 4
   and 8 (`--unrolled` adds 30: about 13 minutes before scanning). Goals: scanned 30 layers
   <= 90 s, compile(30) / compile(4) <= 1.5.
2. Peak memory of that step, 30 scanned layers, loss chunks of 128 tokens against the full
   logits at once (train.loss_chunk_tokens=0): XLA's temporaries (compiled.memory_analysis)
   and the peak RSS (ru_maxrss) of a process that builds the state (random weights: only
   shapes matter here), compiles and runs 2 joint steps; each in its own process. Goal:
   chunked peak RSS <= 8 GB.
3. A LoRA SFT step (r=16, alpha 16, q/k/v/o/gate/up/down, fp32 base and compute, AdamW,
   clipping at 1.0, constant lr): ours (jit_train_step, loss chunks of 128) against
   transformers + peft (get_peft_model on AutoModelForCausalLM, torch.optim.AdamW on the
   adapters), on the same 4 x 256 tokens of English text, real weights, peft's adapters a
   copy of ours, so the step-1 losses must agree. Measured steps alternate (ours, torch,
   ...). Goal: ours / peft step time <= 1.0.
4. Greedy decoding of 8 chat prompts (the chat template with the generation prompt), 64 new
   tokens each, real weights: mind_jax.decode.generate against transformers' generate.
   Neither stops at EOS, so both make 8 x 64 tokens; tokens/s over one whole call, prefill
   included; ours compiled first. Goal: ours >= 2x generate.

Torch runs with --threads intra-op threads (2, as benchmarks/decode_vs_transformers.py and
train_step_vs_torch.py; on a busy 2-core machine 1 can be faster, tests/test_real_model.py).

    python benchmarks/real_model.py                # ~7 min on 2 idle cores
    python benchmarks/real_model.py --unrolled     # + the unrolled 30-layer compile (~13 min)
    python benchmarks/real_model.py --quick        # 2 layers, small shapes: the command only
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

# Quieter logs; must be set before jax / transformers are imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from mind_jax import paths  # noqa: E402
from mind_jax.eval.report import cpu_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GIB = 2**30
EMBED_DIM = 384        # the records' MiniLM sentence embeddings
NUM_EXAMPLES = 512     # records the TA's inertia table holds (its size only)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The LoRA SFT comparison: a constant learning rate (as train_step_vs_torch.py) so that the two
# sides take the same updates; AdamW decays every adapter (all are matrices) on both sides.
OPTIM = dict(learning_rate=1e-4, warmup_steps=0, decay_steps=1_000_000, end_lr_ratio=1.0,
             b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0, grad_accum_steps=1)
PROMPTS = ["What is 7 times 8?", "Write a haiku about the sea.",
           "Name three primary colors.", "Explain photosynthesis in one sentence.",
           "What is the capital of France?", "Give me a synonym for 'happy'.",
           "Tom has 3 apples and buys 4 more. How many apples does he have?",
           "Translate 'good morning' into Spanish."]
TEXT = ("The student reads several rationales for each question and learns from the ones it "
        "can follow. A teaching assistant scores every perspective, and the scores decide how "
        "much each rationale counts in the loss. Tom has 3 apples and buys 4 more, so he has "
        "7 apples. Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. "
        "The capital of France is Paris, a city on the Seine. ")
# Full-size and --quick settings (a flag given on the command line wins).
FULL = dict(layers=30, compile_layers="4,30", unrolled_layers="4,8", questions=4,
            perspectives=8, max_len=256, rows=6, row_len=512, chunk=128, run_steps=2,
            lora_batch=4, lora_seq=256, lora_steps=5, lora_warmup=2, new_tokens=64,
            decode_prompts=8, decode_repeats=3)
QUICK = dict(layers=2, compile_layers="1,2", unrolled_layers="2", questions=2,
             perspectives=2, max_len=64, rows=2, row_len=128, chunk=32, run_steps=2,
             lora_batch=2, lora_seq=32, lora_steps=2, lora_warmup=1, new_tokens=8,
             decode_prompts=2, decode_repeats=1)
SECTIONS = ("compile", "memory", "lora", "decode")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="2 layers, small shapes (~2 min): "
                 "checks the command, not numbers to quote")
  p.add_argument("--unrolled", action="store_true", help="also compile the unrolled step at "
                 "--layers (30: ~10+ minutes)")
  p.add_argument("--skip", action="append", default=[], choices=SECTIONS)
  p.add_argument("--layers", type=int, help="depth for memory, LoRA and decoding (30)")
  p.add_argument("--compile_layers", help="scanned depths to compile, shallow,deep (4,30)")
  p.add_argument("--unrolled_layers", help="unrolled depths to compile (4,8)")
  p.add_argument("--questions", type=int, help="MIND batch: questions (4)")
  p.add_argument("--perspectives", type=int, help="MIND batch: perspectives K (8)")
  p.add_argument("--max_len", type=int, help="MIND batch: records' max_len T (256)")
  p.add_argument("--rows", type=int, help="packed rows (6)")
  p.add_argument("--row_len", type=int, help="tokens per packed row, train.seq_len (512)")
  p.add_argument("--chunk", type=int, help="train.loss_chunk_tokens (128)")
  p.add_argument("--causal_block_size", type=int, default=0, help="ours: model."
                 "causal_block_size for the MIND and LoRA steps (0, the default: one block)")
  p.add_argument("--run_steps", type=int, help="joint steps run for the peak RSS (2)")
  p.add_argument("--lora_batch", type=int, help="LoRA SFT batch rows (4)")
  p.add_argument("--lora_seq", type=int, help="LoRA SFT tokens per row (256)")
  p.add_argument("--lora_steps", type=int, help="measured LoRA steps per framework (5)")
  p.add_argument("--lora_warmup", type=int, help="unmeasured LoRA steps first (2)")
  p.add_argument("--new_tokens", type=int, help="decode: new tokens per prompt (64)")
  p.add_argument("--decode_prompts", type=int, help="decode: chat prompts, <= 8 (8)")
  p.add_argument("--decode_repeats", type=int, help="decode: measured calls per side (3)")
  p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (XLA:CPU uses "
                 "one thread per visible core)")
  p.add_argument("--malloc", choices=("keep", "default"), default="keep",
                 help="LoRA and decode: keep: glibc keeps freed memory (mind_jax.host_memory), "
                 "for both frameworks; default: stock")
  p.add_argument("--json", default="", help="also write the key numbers here")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)      # a joint-step spec (JSON)
  p.add_argument("--child_out", default="", help=argparse.SUPPRESS)  # where it writes its result
  args = p.parse_args(argv)
  for key, value in (QUICK if args.quick else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


def hf_dir() -> str:
  from mind_jax.models import smollm2
  return smollm2.smollm2_hf_dir()


def model_config(layers: int, scan: bool, causal_block_size: int = 0, remat: str = "none"):
  """The imported SmolLM2's DecoderConfig, cut to `layers`, with our run settings (fp32,
  `remat`; model.causal_block_size as given: 0, the config default, one attention block)."""
  from mind_jax import import_hf
  cfg = import_hf.read_config(hf_dir())
  return dataclasses.replace(cfg, num_layers=layers, scan_layers=scan, dtype="float32",
                             param_dtype="float32", remat=remat,
                             causal_block_size=causal_block_size).validated()


def real_params(cfg) -> dict:
  """The first cfg.num_layers layers of SmolLM2's weights in our layout (numpy, fp32),
  read tensor by tensor through the import table (hf.tensor_mappings)."""
  from mind_jax.models import hf
  reader = hf.SafetensorsReader(hf_dir())
  return traverse_util.unflatten_dict(
      dict(hf.whole_params(cfg, lambda m: reader.read(m.hf_name))))


def cpu_busy_s() -> float:
  """Busy CPU seconds of the whole machine since boot, from /proc/stat (Linux; 0 elsewhere)."""
  try:
    with open("/proc/stat") as f:
      v = [float(x) for x in f.readline().split()[1:]]
  except OSError:
    return 0.0
  return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
  """CPU seconds of this process and its finished children."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ------------------------------------------------------------------ 1, 2: the joint MIND step


def recipe_config(spec: dict):
  """configs/recipe_mind.py with the overrides of the run this measures."""
  from mind_jax.config import load_config_file
  config = load_config_file(os.path.join(REPO, "configs", "recipe_mind.py"))
  config.lora.rank = 16
  config.model.dtype = "float32"
  config.model.remat = spec.get("remat", "none")
  config.mesh.data, config.mesh.fsdp = 1, 1
  config.train.batch_size = spec["questions"]
  config.train.seq_len = spec["row_len"]
  config.train.packed_rows = spec["rows"]
  config.train.loss_chunk_tokens = spec["chunk"]
  return config


def packed_batch(spec: dict, vocab: int, max_answer_tokens: int) -> dict[str, np.ndarray]:
  """A synthetic padded MIND batch (as tests/test_mind.py's) packed into spec's rows."""
  from mind_jax.data import packing
  b, k, t = spec["questions"], spec["perspectives"], spec["max_len"]
  rng = np.random.RandomState(0)
  ids = rng.randint(3, vocab, (b, k, t)).astype(np.int32)
  lengths = rng.randint(t // 8, (5 * t) // 8 + 1, (b, k))  # mean ~3/8 T: fills ~80% of rows
  attn = (np.arange(t)[None, None, :] < lengths[..., None]).astype(np.int32)
  loss_mask = attn.copy()
  loss_mask[..., :8] = 0  # the prompt
  answer_mask = np.zeros_like(attn)
  for q in range(b):
    for p in range(k):
      end = lengths[q, p]
      answer_mask[q, p, end - 4:end - 1] = 1
      ids[q, p, end - 4:end - 1] = [7, 8, 9]  # the same answer in every slot
  present = (rng.rand(b, k) > 0.2).astype(np.float32)
  present[:, 0] = 1
  padded = dict(example_index=np.arange(b, dtype=np.int32), input_ids=ids,
                attention_mask=attn, loss_mask=loss_mask, answer_mask=answer_mask,
                present=present, question_embedding=rng.randn(b, EMBED_DIM).astype(np.float32),
                rationale_embedding=rng.randn(b, k, EMBED_DIM).astype(np.float32))
  return packing.pack_batch(padded, spec["rows"], spec["row_len"], 1, max_answer_tokens)


def joint_child(spec: dict) -> dict:
  """One joint MIND step built, lowered and compiled (timed apart); with spec["run_steps"]
  > 0 also a real state made and that many steps run. In its own process: the caller's."""
  jax.config.update("jax_enable_compilation_cache", False)  # every compile is real
  from mind_jax import mind_step, sharding, state as state_lib
  from mind_jax.data import packing
  from mind_jax.models import decoder, lora
  from mind_jax.ta import TAConfig

  config = recipe_config(spec)
  cfg = model_config(spec["layers"], spec["scan"], spec["causal_block_size"],
                     spec.get("remat", "none"))
  lora_config = lora.LoraConfig.from_config(config.lora)
  k = spec["perspectives"]
  settings = dataclasses.replace(
      mind_step.MindSettings.from_config(config.mind, [f"p{i}" for i in range(k)]),
      loss_chunk_tokens=spec["chunk"])
  ta_config = TAConfig.from_config(config.ta)
  optimizer = state_lib.make_optimizer(config.optim, config.train.steps)
  ta_optimizer = state_lib.make_ta_optimizer(config, NUM_EXAMPLES, k)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  rules = config.mesh.rules
  abstract, shardings = state_lib.abstract_mind_state_and_shardings(
      cfg, optimizer, ta_config, ta_optimizer, EMBED_DIM, k, mesh, rules, settings.uses_ta,
      lora_config)
  batch_np = packed_batch(spec, cfg.vocab_size, config.mind.max_answer_tokens)
  batch_sh = mind_step.batch_shardings({key: v.shape for key, v in batch_np.items()}, mesh,
                                       rules)
  step = mind_step.jit_mind_step(cfg, ta_config, optimizer, ta_optimizer, settings, "joint",
                                 shardings, batch_sh, 1, lora_config)
  out = dict(spec, dropped=int(batch_np["packing_dropped"].sum()),
             fill=packing.fill_fraction(batch_np), params=cfg.num_params())
  if spec["run_steps"]:
    state = state_lib.init_mind_state(cfg, optimizer, ta_config, ta_optimizer, EMBED_DIM, k, 0,
                                      shardings, settings.uses_ta, lora_config)
    shapes, axes = decoder.abstract_params(cfg)
    base = jax.jit(lambda r: decoder.init_params(cfg, r),
                   out_shardings=sharding.tree_shardings(shapes, axes, mesh, rules))(
                       jax.random.PRNGKey(1))
    state = state_lib.with_frozen_base(state, base, cfg, lora_config, shardings)
    del base
    batch = {key: jax.device_put(v, batch_sh[key]) for key, v in batch_np.items()}
    out["rss_before_compile"] = rss_bytes()
  else:  # abstract: nothing allocated
    state = sharding.with_shardings(abstract, shardings)
    batch = {key: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[key])
             for key, v in batch_np.items()}
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  out.update(lower_s=t1 - t0, compile_s=t2 - t1)
  mem = compiled.memory_analysis()
  if mem is not None:
    out.update(temp_bytes=int(mem.temp_size_in_bytes), argument_bytes=int(
        mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes))
  if spec["run_steps"]:
    times, losses = [], []
    for _ in range(spec["run_steps"]):
      start = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - start)
      losses.append(float(metrics["loss"]))
    out.update(step_s=times, losses=losses, peak_rss=rss_bytes())
  return out


def run_child(spec: dict) -> dict:
  """joint_child(spec) in a fresh process (its own compile, its own peak RSS)."""
  with tempfile.TemporaryDirectory(prefix="real_model_") as tmp:
    path = os.path.join(tmp, "out.json")
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec),
                    "--child_out", path], check=True)
    with open(path) as f:
      out = json.load(f)
  out["wall_s"] = time.perf_counter() - start
  return out


def step_spec(args, layers: int, scan: bool, chunk: int, run_steps: int) -> dict:
  return dict(layers=layers, scan=scan, chunk=chunk, run_steps=run_steps,
              causal_block_size=args.causal_block_size,
              questions=args.questions, perspectives=args.perspectives, max_len=args.max_len,
              rows=args.rows, row_len=args.row_len)


def _depths(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def measure_compile(args) -> dict:
  scanned = _depths(args.compile_layers)
  unrolled = _depths(args.unrolled_layers)
  if args.unrolled and args.layers not in unrolled:
    unrolled.append(args.layers)
  rows = []
  for scan, depths in ((True, scanned), (False, unrolled)):
    for layers in depths:
      r = run_child(step_spec(args, layers, scan, args.chunk, 0))
      print(f"  compile: {'scanned' if scan else 'unrolled':8s} {layers:3d} layers: lower "
            f"{r['lower_s']:6.1f} s, compile {r['compile_s']:6.1f} s, XLA temporaries "
            f"{r.get('temp_bytes', float('nan')) / GIB:.2f} GiB", flush=True)
      rows.append(r)
  return dict(rows=rows, scanned_layers=scanned, unrolled_layers=unrolled)


def measure_memory(args) -> dict:
  """Chunked against full logits without remat (the issue's run), and chunked with
  model.remat=full: activations, not logits, fill most of the memory of this step."""
  out = {}
  for name, chunk, remat in (("chunked", args.chunk, "none"), ("full", 0, "none"),
                             ("chunked_remat_full", args.chunk, "full")):
    r = run_child(dict(step_spec(args, args.layers, True, chunk, args.run_steps), remat=remat))
    print(f"  memory: remat {remat}, loss_chunk_tokens={chunk:4d}: XLA temporaries "
          f"{r.get('temp_bytes', float('nan')) / GIB:.2f} GiB, peak RSS "
          f"{r['peak_rss'] / GIB:.2f} GiB, steps {' '.join(f'{s:.2f}' for s in r['step_s'])} s, "
          f"losses {' '.join(f'{x:.4f}' for x in r['losses'])}", flush=True)
    out[name] = r
  return out


# ------------------------------------------------------------------ 3: LoRA SFT vs peft


class OursLora:
  """Our jitted LoRA train step (jit_train_step), on the real weights, fp32 base."""

  def __init__(self, cfg, params, batch_np: dict, chunk: int):
    from mind_jax import sharding, state as state_lib
    from mind_jax.config import default_config
    from mind_jax.models import decoder, lora
    from mind_jax.step import jit_train_step
    config = default_config()
    config.optim.update(OPTIM)
    self.lora_config = lora.LoraConfig(rank=16, alpha=16.0, target_modules=LORA_TARGETS,
                                       base_dtype="float32").validated()
    total = OPTIM["decay_steps"]
    optimizer = state_lib.make_optimizer(config.optim, total)
    schedule = state_lib.learning_rate_schedule(config.optim, total)
    mesh = sharding.single_device_mesh()
    rules = config.mesh.rules
    _, shardings = state_lib.abstract_state_and_shardings(cfg, optimizer, mesh, rules,
                                                          self.lora_config)
    state = state_lib.init_state(cfg, optimizer, 0, shardings, self.lora_config)
    shapes, axes = decoder.abstract_params(cfg)
    base = jax.device_put(params, sharding.tree_shardings(shapes, axes, mesh, rules))
    self.state = state_lib.with_frozen_base(state, base, cfg, self.lora_config, shardings)
    batch_sh = sharding.batch_sharding(mesh, rules, batch_np["input_ids"].shape)
    self.batch = {k: jax.device_put(v, batch_sh) for k, v in batch_np.items()}
    self.jitted = jit_train_step(cfg, optimizer, schedule, shardings, batch_sh, 1,
                                 self.lora_config, chunk)
    self.adapters = jax.tree.map(np.asarray, self.state.params)  # before any step
    self.compiled = None

  def compile(self) -> tuple[float, float]:
    t0 = time.perf_counter()
    lowered = self.jitted.lower(self.state, self.batch)
    t1 = time.perf_counter()
    self.compiled = lowered.compile()
    return t1 - t0, time.perf_counter() - t1

  def step(self) -> float:
    self.state, metrics = self.compiled(self.state, self.batch)  # the old state is donated
    jax.block_until_ready((self.state, metrics))
    return float(metrics["loss"])


class PeftLora:
  """transformers' model with peft's LoRA layers holding a copy of our initial adapters,
  AdamW on the adapters, global-norm clipping first (as ours)."""

  def __init__(self, layers: int, adapters: dict, input_ids: np.ndarray):
    import peft
    import torch
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(hf_dir(), dtype=torch.float32,
                                                num_hidden_layers=layers,
                                                attn_implementation="sdpa")
    self.model = peft.get_peft_model(base, peft.LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.0, target_modules=list(LORA_TARGETS)))
    groups = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
              "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    with torch.no_grad():
      for i, layer in enumerate(self.model.base_model.model.model.layers):
        for name, group in groups.items():
          module, ours = getattr(getattr(layer, group), name), adapters["layers"][group][name]
          # Ours: A [layers, in, r], B [layers, r, out]; torch: lora_A [r, in], lora_B [out, r].
          module.lora_A["default"].weight.copy_(torch.from_numpy(ours["kernel_lora_a"][i].T.copy()))
          module.lora_B["default"].weight.copy_(torch.from_numpy(ours["kernel_lora_b"][i].T.copy()))
    self.model.train()
    self.trainable = [q for q in self.model.parameters() if q.requires_grad]
    self.opt = torch.optim.AdamW(self.trainable, lr=OPTIM["learning_rate"],
                                 betas=(OPTIM["b1"], OPTIM["b2"]), eps=OPTIM["eps"],
                                 weight_decay=OPTIM["weight_decay"])
    self.input_ids = torch.from_numpy(input_ids.astype(np.int64))
    self.torch = torch

  def step(self) -> float:
    # labels=input_ids: transformers shifts them; next-token CE averaged over all tokens.
    loss = self.model(input_ids=self.input_ids, labels=self.input_ids).loss
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.trainable, OPTIM["grad_clip"])
    self.opt.step()
    return loss.item()


def text_batch(tokenizer, rows: int, length: int) -> np.ndarray:
  """[rows, length] token ids of English text (TEXT repeated), each row from another offset."""
  ids = tokenizer(TEXT * (1 + (rows * length) // 40), add_special_tokens=False)["input_ids"]
  return np.stack([np.asarray(ids[r * 17:r * 17 + length], np.int32) for r in range(rows)])


def measure_lora(args, tokenizer) -> dict:
  cfg = model_config(args.layers, True, args.causal_block_size)
  ids = text_batch(tokenizer, args.lora_batch, args.lora_seq)
  batch_np = dict(input_ids=ids, attention_mask=np.ones_like(ids), loss_mask=np.ones_like(ids))
  ours = OursLora(cfg, real_params(cfg), batch_np, args.chunk)
  runs = {"ours": ours, "peft": PeftLora(args.layers, ours.adapters, ids)}
  trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(ours.adapters))
  print(f"  lora: r=16, alpha 16, {trainable / 1e6:.2f}M adapter params on {args.layers} "
        f"layers; batch {args.lora_batch} x {args.lora_seq}, fp32; ours: loss chunks "
        f"{args.chunk}, causal_block_size {args.causal_block_size}, XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  lower_s, compile_s = ours.compile()
  losses = {name: [] for name in runs}
  for name, run in runs.items():
    for _ in range(args.lora_warmup):
      losses[name].append(run.step())
  wall = {name: [] for name in runs}
  for _ in range(args.lora_steps):
    for name, run in runs.items():  # alternate, so background load hits both alike
      start = time.perf_counter()
      losses[name].append(run.step())
      wall[name].append(time.perf_counter() - start)
  tokens = args.lora_batch * args.lora_seq
  ms = {name: statistics.median(w) * 1e3 for name, w in wall.items()}
  out = dict(ours_ms=ms["ours"], peft_ms=ms["peft"], ratio=ms["ours"] / ms["peft"],
             ours_steps_per_s=1e3 / ms["ours"], peft_steps_per_s=1e3 / ms["peft"],
             ours_tokens_per_s=tokens * 1e3 / ms["ours"],
             peft_tokens_per_s=tokens * 1e3 / ms["peft"],
             ours_min_ms=min(wall["ours"]) * 1e3, peft_min_ms=min(wall["peft"]) * 1e3,
             loss_step1_ours=losses["ours"][0], loss_step1_peft=losses["peft"][0],
             loss_step1_diff=abs(losses["ours"][0] - losses["peft"][0]),
             loss_max_diff=max(abs(a - b) for a, b in zip(losses["ours"], losses["peft"])),
             lower_s=lower_s, compile_s=compile_s, tokens=tokens)
  for name in runs:
    print(f"  lora: {name:5s} median {ms[name]:8.1f} ms/step (min {min(wall[name]) * 1e3:.1f}), "
          f"{tokens * 1e3 / ms[name]:7.0f} tokens/s; losses "
          f"{' '.join(f'{x:.5f}' for x in losses[name])}", flush=True)
  print(f"  lora: ours compile {compile_s:.1f} s; |loss ours - peft| step 1 "
        f"{out['loss_step1_diff']:.2e}, max over {len(losses['ours'])} steps "
        f"{out['loss_max_diff']:.2e}", flush=True)
  return out


# ------------------------------------------------------------------ 4: decoding


def measure_decode(args, tokenizer) -> dict:
  import torch
  from transformers import AutoModelForCausalLM
  from mind_jax import decode
  cfg = model_config(args.layers, True)
  params = jax.device_put(real_params(cfg))
  prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True, tokenize=True,
                                                return_dict=False))
             for text in PROMPTS[:args.decode_prompts]]
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  model = AutoModelForCausalLM.from_pretrained(hf_dir(), dtype=torch.float32,
                                               num_hidden_layers=args.layers,
                                               attn_implementation="sdpa").eval()
  generation = copy.deepcopy(model.generation_config)
  generation.eos_token_id = None  # no stop: both sides make every token
  generation.pad_token_id = pad
  generation.do_sample, generation.temperature, generation.top_p, generation.top_k = (
      False, None, None, None)
  ids, mask, _ = decode.left_pad(prompts, len(prompts), max(map(len, prompts)), pad)
  new = args.new_tokens

  def run_ours():
    return np.asarray(decode.generate(params, cfg, prompts, new, eos_token_id=None,
                                      pad_token_id=pad))

  def run_torch():
    with torch.inference_mode():
      out = model.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                           attention_mask=torch.tensor(mask), generation_config=generation,
                           max_new_tokens=new)
    return out[:, ids.shape[1]:].numpy()

  start = time.perf_counter()
  ours_tokens = run_ours()  # compiles
  first_call_s = time.perf_counter() - start
  torch_tokens = run_torch()  # warm-up
  assert ours_tokens.shape == torch_tokens.shape == (len(prompts), new), (
      ours_tokens.shape, torch_tokens.shape)
  same = int((ours_tokens == torch_tokens).all(axis=1).sum())
  agree = float((ours_tokens == torch_tokens).mean())
  # Past the end of its answer a row is off the model's distribution, where near-ties in fp32
  # can go either way: the answers themselves (up to the first stop token) must agree.
  stops = np.asarray([i for i in np.atleast_1d(model.generation_config.eos_token_id or [])
                      if i is not None], np.int64)
  same_answers = sum(decode.cut_at_eos(a, stops) == decode.cut_at_eos(b, stops)
                     for a, b in zip(ours_tokens, torch_tokens))
  times = {"ours": [], "transformers": []}
  for _ in range(args.decode_repeats):
    for name, fn in (("transformers", run_torch), ("ours", run_ours)):
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  tokens = len(prompts) * new
  speed = {name: tokens / statistics.median(t) for name, t in times.items()}
  for name, t in times.items():
    print(f"  decode: {name:12s} {speed[name]:7.1f} tokens/s (median {statistics.median(t):.2f} "
          f"s per call of {tokens} tokens; runs {' '.join(f'{x:.2f}' for x in t)})", flush=True)
  print(f"  decode: prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens; ours "
        f"first call (compile + run) {first_call_s:.1f} s; greedy tokens identical in "
        f"{same}/{len(prompts)} rows ({agree:.1%} of tokens), up to the first stop token "
        f"{same_answers}/{len(prompts)}; first answer: "
        f"{tokenizer.decode(ours_tokens[0])!r}", flush=True)
  return dict(ours_tokens_per_s=speed["ours"], transformers_tokens_per_s=speed["transformers"],
              ratio=speed["ours"] / speed["transformers"], first_call_s=first_call_s,
              identical_rows=same, identical_answers=same_answers, rows=len(prompts),
              token_agreement=agree,
              new_tokens=new)


# ------------------------------------------------------------------ the table


def summary(results: dict) -> dict:
  """The key numbers (flat) that run_all.py tabulates, from the sections' results."""
  out = {}
  if "compile" in results:
    rows = results["compile"]["rows"]

    def compile_s(scan, layers):
      found = [r["compile_s"] for r in rows if r["scan"] == scan and r["layers"] == layers]
      return found[0] if found else None

    shallow, deep = min(results["compile"]["scanned_layers"]), max(
        results["compile"]["scanned_layers"])
    out.update(compile_scanned_shallow_layers=shallow, compile_scanned_deep_layers=deep,
               compile_scanned_shallow_s=compile_s(True, shallow),
               compile_scanned_deep_s=compile_s(True, deep))
    out["compile_ratio"] = out["compile_scanned_deep_s"] / out["compile_scanned_shallow_s"]
    unrolled = sorted(results["compile"]["unrolled_layers"])
    out["compile_unrolled_s"] = {str(n): compile_s(False, n) for n in unrolled}
    if unrolled:
      out.update(compile_unrolled_shallow_layers=unrolled[0],
                 compile_unrolled_deep_layers=unrolled[-1])
  if "memory" in results:
    m = results["memory"]
    out.update(memory_layers=m["chunked"]["layers"], memory_chunk=m["chunked"]["chunk"],
               peak_rss_chunked=m["chunked"]["peak_rss"], peak_rss_full=m["full"]["peak_rss"],
               temp_chunked=m["chunked"].get("temp_bytes"), temp_full=m["full"].get("temp_bytes"),
               peak_rss_remat_full=m["chunked_remat_full"]["peak_rss"],
               temp_remat_full=m["chunked_remat_full"].get("temp_bytes"))
  if "lora" in results:
    out.update({f"lora_{k}": v for k, v in results["lora"].items()})
  if "decode" in results:
    out.update({f"decode_{k}": v for k, v in results["decode"].items()})
  return out


def table(s: dict, layers: int) -> list[tuple[str, str, str, str]]:
  """(what, ours, baseline, ratio) rows; the same as benchmarks/run_all.py shows."""
  sys.path.insert(0, HERE)
  import run_all  # noqa: E402  (benchmarks/run_all.py: one place for the rows)
  return run_all.rows({"real_model": dict(s, layers=layers)})


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    paths.write_json(args.child_out, joint_child(json.loads(args.child)))
    return None
  if args.malloc == "keep":
    # Before any jax or torch work (threads keep the malloc arena they first use), for both
    # frameworks, as benchmarks/train_step_vs_torch.py: see mind_jax/host_memory.py. The
    # MIND steps' processes (compile, memory) keep the recipe's allocator instead.
    from mind_jax import host_memory
    host_memory.keep_freed_memory()
  import torch
  torch.set_num_threads(args.threads)
  from transformers import AutoTokenizer
  from transformers.utils import logging as hf_logging
  hf_logging.disable_progress_bar()
  warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations
  tokenizer = AutoTokenizer.from_pretrained(hf_dir())
  print(f"CPU: {cpu_model()}; {os.cpu_count()} cores; jax {jax.__version__}, torch "
        f"{torch.__version__} with {torch.get_num_threads()} intra-op threads; model "
        f"SmolLM2-135M-Instruct ({hf_dir()}), depth {args.layers}"
        f"{' (--quick)' if args.quick else ''}", flush=True)
  print(f"MIND joint step: configs/recipe_mind.py, lora.rank=16, fp32, remat none; "
        f"{args.questions} questions x {args.perspectives} perspectives of <= {args.max_len} "
        f"tokens packed into {args.rows} rows of {args.row_len}; loss_chunk_tokens "
        f"{args.chunk}", flush=True)
  results, seconds, others = {}, {}, {}
  sections = {"compile": lambda: measure_compile(args), "memory": lambda: measure_memory(args),
              "lora": lambda: measure_lora(args, tokenizer),
              "decode": lambda: measure_decode(args, tokenizer)}
  for name, fn in sections.items():
    if name in args.skip:
      continue
    print(f"-- {name}", flush=True)
    start, busy, own = time.perf_counter(), cpu_busy_s(), own_cpu_s()
    results[name] = fn()
    seconds[name] = time.perf_counter() - start
    # Other processes' CPU while this section ran: timings on a shared machine are noisy.
    others[name] = max(0.0, (cpu_busy_s() - busy) - (own_cpu_s() - own)) / seconds[name]
    print(f"   ({seconds[name]:.0f} s; other processes used {others[name]:.2f} of "
          f"{os.cpu_count()} cores meanwhile)", flush=True)
  s = summary(results)
  rows = table(s, args.layers)
  print()
  width = max(len(r[0]) for r in rows) if rows else 10
  for what, ours, base, ratio in rows:
    print(f"{what:<{width}}  {ours:>10}  {base:>24}  {ratio}")
  print("wall s per section: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
  print("other processes' cores per section: " + ", ".join(f"{k} {v:.2f}"
                                                          for k, v in others.items()))
  if args.json:  # the numbers benchmarks/run_all.py tabulates, and every row measured
    paths.write_json(args.json, dict(s, layers=args.layers, quick=args.quick, cpu=cpu_model(),
                                     torch_threads=args.threads, sections=results,
                                     section_s=seconds, other_cores=others))
  return s


if __name__ == "__main__":
  main()
