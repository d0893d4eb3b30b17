"""`python -m mind_jax.train --config configs/X.py --workdir W [--config.a.b=v ...]`

Trains the student: plain SFT on (question, rationale, answer) sequences
(config.method = "sft"), or MIND on multi-perspective rationale records
("mind"; every baseline is a `config.mind` setting). Run it again with the same
workdir and it resumes from the newest committed checkpoint.

The workdir may be local or gs://bucket/...: checkpoints (Orbax), the tokenizer,
metrics.jsonl, TensorBoard, the plots and the workdir lock all go there (mind_jax.paths).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import app, flags
from jax.experimental import multihost_utils
from ml_collections import config_flags

from mind_jax import (checkpoint, compile_cache, cpu_backend, distributed, faults, mind_step,
                      nonfinite, paths, perf, preemption, progress, sharding, workdir_lock)
from mind_jax.config import check_counts, default_config, parse_absl_flags
from mind_jax import probe as probe_lib
from mind_jax import state as state_lib
from mind_jax import step as step_lib
from mind_jax import tokenizer as tokenizer_lib
from mind_jax.data import builtin, packing, prompt, reader as reader_lib, records, sft
from mind_jax.models import decoder, lora as lora_lib
from mind_jax.models.decoder import DecoderConfig
from mind_jax.ta import TAConfig

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, tokenizer.")
_STRICT_RESUME = flags.DEFINE_bool("strict_resume", False,
                                   "Fail on an unreadable newest checkpoint instead of falling "
                                   "back to the next newest (= --config.train.strict_resume).")

ALPHA_PLOT = "alpha_per_perspective.png"
HISTORY = "metrics.jsonl"


@dataclasses.dataclass
class Task:
  """What the loop needs of a method: its state, steps, batches and labels."""
  model_config: DecoderConfig
  tokenizer: Any
  abstract: state_lib.TrainState       # ShapeDtypeStructs of the state
  shardings: state_lib.TrainState
  init: Callable[[], state_lib.TrainState]
  step_fns: dict[str, Callable]        # phase -> jitted step
  phase_of: Callable[[int], str]       # global step index -> phase
  batches: Callable[[int], Iterator]   # start position -> global batches
  total_steps: int
  tokens_per_step: int
  seq_len: int
  names: tuple[str, ...] = ()          # labels of per-perspective metrics
  packed_rows: int = 0                 # packed MIND: the rows per micro-batch chosen at start
  probe: Any = None                    # mind.capability="accuracy": probe.Probe


# config.model fields that say how the model runs, not what it is: a run started from
# train.init_from takes every other model field from that checkpoint.
RUN_MODEL_FIELDS = ("dtype", "param_dtype", "remat", "causal_block_size")


def stated_model_config(config, workdir: str) -> DecoderConfig:
  """config.model; with train.init_from, the model of that checkpoint (or, resuming, of the
  run's own), so an imported HF model's shape need not be copied into the config. Only
  RUN_MODEL_FIELDS then come from config.model; another model field the config sets to a
  value other than both its default and the checkpoint's fails."""
  stated = DecoderConfig.from_config(config.model)
  if not config.train.init_from:
    return stated
  source = workdir if checkpoint.latest_step(workdir) is not None else config.train.init_from
  saved = DecoderConfig.from_config(checkpoint.read_meta(source, fallback=True)[1]["model"])
  default = DecoderConfig.from_config(default_config().model)
  conflicts = []
  for name in (f.name for f in dataclasses.fields(DecoderConfig)):
    value, saved_value = getattr(stated, name), getattr(saved, name)
    if name not in RUN_MODEL_FIELDS and value != getattr(default, name) and value != saved_value:
      conflicts.append(f"model.{name}={value!r} (the checkpoint's: {saved_value!r})")
  if conflicts:
    raise ValueError(f"train.init_from={config.train.init_from} holds another model than the "
                     f"config states: {', '.join(conflicts)}; leave these fields at their "
                     "defaults to take the checkpoint's")
  return dataclasses.replace(saved, **{name: getattr(stated, name) for name in RUN_MODEL_FIELDS})


def model_config_for(config, tokenizer, workdir: str) -> DecoderConfig:
  """The model config (stated_model_config) with token ids filled in from the tokenizer,
  checked against it."""
  model_config = stated_model_config(config, workdir)
  if len(tokenizer) > model_config.vocab_size:
    raise ValueError(f"tokenizer has {len(tokenizer)} tokens but model.vocab_size="
                     f"{model_config.vocab_size}")
  ids = {}
  for field, token_id in (("bos_token_id", tokenizer.bos_token_id),
                          ("eos_token_id", tokenizer.eos_token_id),
                          ("pad_token_id", tokenizer.pad_token_id)):
    if getattr(model_config, field) < 0 and token_id is not None:
      ids[field] = int(token_id)
  return dataclasses.replace(model_config, **ids)


def _check_batch(config, mesh, grad_accum_steps: int) -> None:
  t = config.train
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.batch_size % grad_accum_steps:
    raise faults.BadInput(f"train.batch_size={t.batch_size} is not a multiple of "
                          f"optim.grad_accum_steps={grad_accum_steps}")
  if (t.batch_size // grad_accum_steps) % shards:
    raise faults.BadInput(f"micro-batch {t.batch_size // grad_accum_steps} (train.batch_size / "
                          f"optim.grad_accum_steps) does not divide over data*fsdp={shards} "
                          "devices")


def lora_config_of(config) -> lora_lib.LoraConfig:
  """config.lora, checked: LoRA trains adapters on the frozen base train.init_from names
  (a random frozen base would teach nothing, so a run without one is refused)."""
  lora_config = lora_lib.LoraConfig.from_config(config.lora)
  if not lora_config.enabled:
    return lora_config
  if not config.train.init_from:
    raise ValueError(f"lora.rank={lora_config.rank} trains adapters on a frozen base: set "
                     "train.init_from to the base's workdir (python -m mind_jax.import_hf "
                     "--hf_dir MODEL --out WORKDIR), or lora.rank=0 to train every weight")
  return lora_config


# ------------------------------------------------------------------ SFT


def sft_task(config, workdir: str, mesh) -> Task:
  if config.data.source != "builtin":
    raise ValueError(f"method=sft reads data.source='builtin', got {config.data.source!r}")
  _check_batch(config, mesh, config.optim.grad_accum_steps)
  lora_config = lora_config_of(config)
  examples = builtin.generate_examples(config.data.num_examples, config.data.seed)
  texts = [prompt.prompt_text(e["question"]) + prompt.target_text(e["rationale"], e["answer"])
           for e in examples]
  tokenizer = tokenizer_lib.load_or_create(config.tokenizer.path, config.tokenizer.bpe_vocab_size,
                                           texts, checkpoint.tokenizer_dir(workdir))
  arrays = sft.encode_examples(tokenizer, examples, config.train.seq_len)
  logging.info("data: %d sequences of %d tokens", len(arrays["input_ids"]), config.train.seq_len)
  model_config = model_config_for(config, tokenizer, workdir)

  total = config.train.steps
  optimizer = state_lib.make_optimizer(config.optim, total)
  schedule = state_lib.learning_rate_schedule(config.optim, total)
  abstract, shardings = state_lib.abstract_state_and_shardings(model_config, optimizer, mesh,
                                                               config.mesh.rules, lora_config)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules,
                                           (config.train.batch_size, config.train.seq_len))
  train_step = step_lib.jit_train_step(model_config, optimizer, schedule, shardings,
                                       batch_sharding, config.optim.grad_accum_steps,
                                       lora_config, config.train.loss_chunk_tokens)
  batches = sft.SFTBatches(arrays, config.train.batch_size, config.train.seed)

  def batch_iterator(start):
    index = start
    while True:
      yield batches.global_batch(index, batch_sharding)
      index += 1

  return Task(model_config=model_config, tokenizer=tokenizer, abstract=abstract,
              shardings=shardings,
              init=lambda: state_lib.init_state(model_config, optimizer, config.train.seed,
                                                shardings, lora_config),
              step_fns={"sft": train_step}, phase_of=lambda step: "sft", batches=batch_iterator,
              total_steps=total, tokens_per_step=config.train.batch_size * config.train.seq_len,
              seq_len=config.train.seq_len)


# ------------------------------------------------------------------ MIND


def slot_groups_of(manifest: dict, multiple: int, records_dir: str) -> tuple:
  """Perspectives grouped by their longest slot, rounded up to `multiple` (and at most the
  records' max_len): ((slots, width), ...) for MindSettings.slot_groups."""
  if "slot_max_lengths" not in manifest:
    raise ValueError(f"train.slot_width_multiple={multiple} needs the records' per-perspective "
                     f"lengths, which {records_dir} predates: rebuild it with "
                     "python -m mind_jax.data.build, or set train.slot_width_multiple=0")
  by_width = {}
  for k, name in enumerate(manifest["perspectives"]):
    longest = max(int(manifest["slot_max_lengths"][name]), 1)
    width = min(-(-longest // multiple) * multiple, int(manifest["max_len"]))
    by_width.setdefault(width, []).append(k)
  groups = tuple((tuple(slots), width) for width, slots in sorted(by_width.items()))
  logging.info("slot widths: %s of %d tokens", ", ".join(
      f"{'+'.join(manifest['perspectives'][k] for k in slots)}: {w}" for slots, w in groups),
      manifest["max_len"])
  return groups


def mind_task(config, workdir: str, mesh) -> Task:
  if config.data.source != "records" or not config.data.records_dir:
    raise ValueError("method=mind reads rationale records: set data.source='records' and "
                     "data.records_dir (built by python -m mind_jax.data.build)")
  micro_batches = config.optim.grad_accum_steps
  _check_batch(config, mesh, micro_batches)
  if config.train.packing and config.train.slot_width_multiple > 0:
    raise ValueError("train.packing and train.slot_width_multiple both skip padding: set "
                     "train.slot_width_multiple=0 with packing")
  reader = reader_lib.RecordReader(config.data.records_dir, config.train.batch_size,
                                   config.train.seed, shuffle_buffer=config.data.shuffle_buffer)
  manifest, spec = reader.manifest, reader.spec
  tokenizer = tokenizer_lib.load_checked(
      config.tokenizer.path or records.tokenizer_dir(config.data.records_dir),
      checkpoint.tokenizer_dir(workdir), lambda candidate, where: reader_lib.check_tokenizer(
          manifest, tokenizer_lib.fingerprint(candidate), where))
  model_config = model_config_for(config, tokenizer, workdir)
  names = tuple(manifest["perspectives"])
  settings = dataclasses.replace(mind_step.MindSettings.from_config(config.mind, list(names)),
                                 loss_chunk_tokens=config.train.loss_chunk_tokens)
  if config.train.slot_width_multiple > 0:
    settings = dataclasses.replace(settings, slot_groups=slot_groups_of(
        manifest, config.train.slot_width_multiple, config.data.records_dir))
  ta_config = TAConfig.from_config(config.ta)

  warmup = 0
  if settings.uses_ta:
    warmup = (round(config.mind.ta_warmup_epochs * reader.batches_per_epoch)
              if config.mind.ta_warmup_epochs > 0 else config.mind.ta_warmup_steps)
  optimizer = state_lib.make_optimizer(config.optim, config.train.steps)
  ta_optimizer = state_lib.make_ta_optimizer(config, reader.num_examples, spec.num_perspectives)
  abstract, shardings = state_lib.abstract_mind_state_and_shardings(
      model_config, optimizer, ta_config, ta_optimizer, spec.embed_dim, spec.num_perspectives,
      mesh, config.mesh.rules, settings.uses_ta, lora_config_of(config))
  b, k, t = config.train.batch_size, spec.num_perspectives, spec.max_len
  batch_shapes = {name: array.shape for name, array in records.batch_spec(spec, b).items()}
  prepare, read = (lambda local, position: local), reader.iterator  # the padded layout
  tokens_per_step = b * sum(len(slots) * width
                            for slots, width in mind_step.slot_groups(settings, k, t))
  seq_len, rows = t, 0
  if config.train.packing:
    rows = packed_rows(config, reader, mesh)
    batch_shapes = packed_batch_shapes(batch_shapes, micro_batches, rows,
                                       config.train.seq_len, config.mind.max_answer_tokens)
    prepare = functools.partial(pack_local_batch, config=config, rows=rows)
    read = functools.partial(packing.balanced_batches, reader.iterator,
                             window=config.train.packing_window, micro_batches=micro_batches)
    tokens_per_step, seq_len = micro_batches * rows * config.train.seq_len, config.train.seq_len
  batch_shardings = mind_step.batch_shardings(batch_shapes, mesh, config.mesh.rules)
  phases = ("warmup", "joint") if warmup else ("joint",)
  step_fns = {phase: mind_step.jit_mind_step(model_config, ta_config, optimizer, ta_optimizer,
                                             settings, phase, shardings, batch_shardings,
                                             micro_batches, lora_config_of(config))
              for phase in phases}
  logging.info("MIND: %d records, K=%d (%s), T=%d; weighting=%s; TA warm-up %d steps, then %d "
               "joint steps", reader.num_examples, k, ", ".join(names), t, settings.weighting,
               warmup, config.train.steps)

  def batch_iterator(start):
    for position, local in enumerate(read(start), start=start):
      yield reader_lib.global_batch(prepare(local, position), lambda key: batch_shardings[key])

  probe = (probe_lib.Probe.for_run(config, manifest, tokenizer, model_config, mesh, workdir)
           if settings.uses_ta and settings.capability == "accuracy" else None)
  return Task(model_config=model_config, tokenizer=tokenizer, abstract=abstract,
              shardings=shardings, probe=probe,
              init=lambda: state_lib.init_mind_state(
                  model_config, optimizer, ta_config, ta_optimizer, spec.embed_dim,
                  spec.num_perspectives, config.train.seed, shardings, settings.uses_ta,
                  lora_config_of(config)),
              step_fns=step_fns, phase_of=lambda step: "warmup" if step < warmup else "joint",
              batches=batch_iterator, total_steps=warmup + config.train.steps,
              tokens_per_step=tokens_per_step, seq_len=seq_len, names=names, packed_rows=rows)


# ------------------------------------------------------------------ MIND, packed


# How many batches train.packed_rows = 0 looks at to choose the row count: the needs of
# balanced batches vary more between windows than within one (benchmarks/packing.py).
AUTO_ROWS_SAMPLE_BATCHES = 20
AUTO_ROWS_SAMPLE_WINDOWS = 4


def packed_rows(config, reader, mesh) -> int:
  """Rows per micro-batch: train.packed_rows, or chosen from the first batches' lengths
  (every process's worst, so all agree), a multiple of the devices and processes."""
  t = config.train
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  multiple = math.lcm(shards, jax.process_count())
  if t.seq_len < reader.spec.max_len:
    raise ValueError(f"train.seq_len={t.seq_len} is shorter than the records' max_len="
                     f"{reader.spec.max_len}: a packed row must hold the longest rationale")
  rows = t.packed_rows
  if rows == 0:
    sample = itertools.islice(
        packing.balanced_batches(reader.iterator, 0, t.packing_window,
                                 config.optim.grad_accum_steps),
        max(AUTO_ROWS_SAMPLE_BATCHES, AUTO_ROWS_SAMPLE_WINDOWS * t.packing_window))
    local = packing.choose_rows(sample, t.seq_len, config.optim.grad_accum_steps, 1)
    rows = int(max(multihost_utils.process_allgather(np.array(local)).ravel())
               ) * jax.process_count()
    rows = -(-rows // multiple) * multiple
    logging.info("packing: train.packed_rows=0 -> %d rows of %d tokens per micro-batch",
                 rows, t.seq_len)
  if rows % multiple:
    raise ValueError(f"train.packed_rows={rows} must be a multiple of data*fsdp={shards} "
                     f"devices and of {jax.process_count()} processes")
  return rows


def packed_batch_shapes(shapes: dict, micro_batches: int, rows: int, length: int,
                        max_answer_tokens: int) -> dict:
  """The padded batch's shapes with the [B, K, T] arrays replaced by packed ones."""
  b, k = shapes["present"]
  rows_shape = (micro_batches, rows, length)
  answers = (micro_batches, b // micro_batches, k, max(max_answer_tokens, 1))
  out = {key: shape for key, shape in shapes.items() if key not in packing.SLOT_ARRAYS}
  out.update({key: answers if key.startswith("answer_") else rows_shape
              for key in packing.MICRO_KEYS})
  out["packing_dropped"] = (b,)
  return out


def pack_local_batch(local: dict, position: int, config, rows: int) -> dict:
  packed = packing.pack_batch(local, rows // jax.process_count(), config.train.seq_len,
                              config.optim.grad_accum_steps, config.mind.max_answer_tokens,
                              jax.process_index(), jax.process_count())
  packing.log_overflow(int(packed["packing_dropped"].sum()), position)
  return packed


# ------------------------------------------------------------------ the loop


def _opt_item(state: state_lib.TrainState) -> dict:
  """Everything but the params, as one checkpoint item."""
  item = dict(opt_state=state.opt_state, step=state.step, rng=state.rng)
  if state.ta_params is not None:
    item.update(ta_params=state.ta_params, ta_opt_state=state.ta_opt_state)
  return item


def _lora_meta(config) -> dict:
  """What a LoRA checkpoint's meta says of its adapters: the lora config, and the base
  they apply to (the init_from workdir, resolved, and its step)."""
  base = checkpoint.resolve_workdir(config.train.init_from)
  return dict(lora_lib.LoraConfig.from_config(config.lora).to_dict(), base=base,
              base_step=checkpoint.latest_step(base))


def _with_lora_base(config, task: Task, state: state_lib.TrainState) -> state_lib.TrainState:
  """`state` with its frozen base: train.init_from's params, restored onto the mesh, then
  cast (and NF4-quantized) by lora.freeze_base."""
  mesh = task.shardings.step.mesh
  shapes, axes = decoder.abstract_params(task.model_config)
  base = sharding.with_shardings(shapes, sharding.tree_shardings(shapes, axes, mesh,
                                                                 config.mesh.rules))
  step, items = checkpoint.restore(config.train.init_from, None, {"params": base})
  logging.info("LoRA: frozen base from step %d of %s", step, config.train.init_from)
  return state_lib.with_frozen_base(state, items["params"], task.model_config,
                                    lora_config_of(config), task.shardings)


def _initial_state(config, workdir: str, task: Task) -> tuple[state_lib.TrainState, int]:
  """Resume from the workdir's newest committed checkpoint, else init (or init_from).
  With LoRA the checkpoint holds the adapters; the base is train.init_from, every time."""
  target = sharding.with_shardings(task.abstract, task.shardings)
  lora_on = lora_config_of(config).enabled
  if checkpoint.latest_step(workdir) is not None:
    step, items = checkpoint.restore_with_fallback(
        workdir, {"params": target.params, "opt": _opt_item(target)},
        strict=config.train.strict_resume)
    state = state_lib.TrainState(params=items["params"], **items["opt"])
    if lora_on:
      saved, now = items["meta"].get("lora"), _lora_meta(config)
      if saved != now:
        raise ValueError(f"{workdir} holds adapters for {saved}, but config.lora and "
                         f"train.init_from now give {now}: resume with the same base and "
                         "lora settings, or train into a new workdir")
      state = _with_lora_base(config, task, state)
    logging.info("resumed from step %d of %s", step, workdir)
    return state, int(items["meta"]["data_position"])
  state = task.init()
  if lora_on:
    return _with_lora_base(config, task, state), 0
  if config.train.init_from:
    _, items = checkpoint.restore(config.train.init_from, None, {"params": target.params})
    state = state.replace(params=items["params"])
    logging.info("params initialised from %s", config.train.init_from)
  return state, 0


def _meta(config, task: Task, data_position: int) -> dict:
  meta = dict(model=task.model_config.to_dict(), config=config.to_dict(),
              data_position=data_position,
              tokenizer=dict(name=task.tokenizer.name_or_path,
                             fingerprint=tokenizer_lib.fingerprint(task.tokenizer)))
  if config.lora.rank > 0:  # the checkpoint's params are adapters: name their base
    meta["lora"] = _lora_meta(config)
  return meta


def _write_plots(workdir: str, bar: progress.Progress, names) -> None:
  if names and jax.process_index() == 0:
    progress.plot_per_perspective(bar.history, "alpha", names, os.path.join(workdir, ALPHA_PLOT),
                                  "fusion weight alpha per perspective (batch mean)")


def _check_memory(config, task: Task, mesh) -> None:
  """perf's estimate of one step (python -m mind_jax.perf prints the same), before compiling:
  against a device's memory, or on the CPU backend against the host's RAM."""
  mind = perf.MindShape.from_state(task.abstract, len(task.names)) if task.names else None
  if task.packed_rows:  # the rows chosen at start-up, not packed_rows=0's upper bound
    config = config.copy_and_resolve_references()
    config.train.packed_rows = task.packed_rows
  estimate = perf.estimate_memory(config, dict(mesh.shape), task.model_config, mind)
  device = mesh.devices.flat[0]
  perf.check_memory(estimate, perf.device_memory_limit(device, config.train.device_memory_gb))
  available = perf.host_memory_available(device, config.train)
  if available is not None:
    perf.check_host_memory(estimate, available, _local_devices(mesh))


def _check_compiled_memory(config, mesh, name: str, compiled) -> None:
  """On the CPU backend, XLA's account of a compiled step against the host RAM left now
  that the state is in memory, before the step first runs."""
  available = perf.host_memory_available(mesh.devices.flat[0], config.train)
  if available is not None:
    perf.check_compiled_host_memory(name, compiled, available, _local_devices(mesh))


def _local_devices(mesh) -> int:
  """The mesh's devices in this process: on CPU, those that share this host's RAM."""
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


class _CompiledSteps:
  """Each phase's step, compiled on first use so XLA's memory account is printed (and
  `check(name, compiled)`ed) before it runs (the compiled step is then what runs)."""

  def __init__(self, step_fns: dict[str, Callable], check: Callable | None = None):
    self.step_fns, self.check, self.compiled = step_fns, check, {}

  def __call__(self, phase: str, state, batch):
    if phase not in self.compiled:
      self.compiled[phase] = self.step_fns[phase].lower(state, batch).compile()
      perf.log_compiled_memory(f"{phase} step", self.compiled[phase])
      if self.check is not None:
        self.check(f"{phase} step", self.compiled[phase])
    return self.compiled[phase](state, batch)


def _progress(config, task: Task, mesh, workdir: str, board, step: int) -> progress.Progress:
  peak = perf.peak_flops_per_device(mesh.devices.flat[0], config.train.peak_flops_per_device)
  flops = perf.flops_per_token(task.model_config, task.seq_len) * task.tokens_per_step
  return progress.Progress(task.total_steps, task.tokens_per_step, config.train.log_every, board,
                           task.names, os.path.join(workdir, HISTORY), start_step=step,
                           flops_per_step=flops, peak_flops=peak * mesh.size if peak else None,
                           remote_history_every_s=config.train.remote_metrics_every_s)


# Fields the loop divides by or counts with: (field, smallest valid value, why).
COUNTS = (
    ("train.steps", 0, "0 saves the initial state as step 0"),
    ("train.batch_size", 1, ""),
    ("train.seq_len", 2, "a next-token target needs 2 tokens"),
    ("train.log_every", 1, ""),
    ("train.checkpoint_every", 1, ""),
    ("train.keep_checkpoints", 1, ""),
    ("train.max_nonfinite_skips", 0, ""),
    ("train.lock_stale_s", 1, ""),
    ("train.slot_width_multiple", 0, "0 reads every slot's full length"),
    ("train.packed_rows", 0, "0 chooses them from the first batches"),
    ("train.packing_window", 1, "1 packs each batch as read"),
    ("train.distributed_timeout_s", 1, ""),
    ("optim.grad_accum_steps", 1, ""),
    ("optim.warmup_steps", 0, ""),
    ("mind.ta_grad_accum", 1, ""),
    ("mind.ta_warmup_steps", 0, ""),
    ("mind.max_answer_tokens", 1, ""),
    ("data.shuffle_buffer", 1, ""),
    ("data.num_examples", 1, ""),
)


def validate_counts(config) -> None:
  """One clear line for a count or a choice that cannot work, before any compilation (on
  a pod, compiling takes minutes)."""
  check_counts(config, COUNTS)
  if config.train.on_nonfinite not in nonfinite.POLICIES:
    raise faults.BadInput(f"train.on_nonfinite={config.train.on_nonfinite!r}: expected one "
                          f"of {nonfinite.POLICIES}")


def _last_good(workdir: str) -> str:
  step = checkpoint.latest_step(workdir)
  if step is None:
    return f"none yet in {checkpoint.checkpoints_dir(workdir)}"
  return f"step {step} in {checkpoint.checkpoints_dir(workdir)}"


def _state_bytes(task: Task) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(task.abstract))


def train(config, workdir: str,
          step_callback: Callable[[int, state_lib.TrainState], None] | None = None
          ) -> state_lib.TrainState:
  """Train to the configured steps; returns the final state. `step_callback(step, state)`
  runs after every step (tests use it to kill the process at a chosen point).

  Raises faults.Preempted after saving on SIGTERM/SIGINT, faults.NonFinite on a
  non-finite step (train.on_nonfinite), faults.WorkdirLocked when another live run holds
  the workdir, faults.DiskFull on a full disk."""
  validate_counts(config)
  workdir = paths.absolute(workdir)
  paths.makedirs(workdir)
  with workdir_lock.WorkdirLock(workdir, config.train.lock_stale_s):
    return _train_locked(config, workdir, step_callback)


def _train_locked(config, workdir: str, step_callback) -> state_lib.TrainState:
  mesh = sharding.make_mesh(config.mesh)
  tasks = {"sft": sft_task, "mind": mind_task}
  if config.method not in tasks:
    raise faults.BadInput(f"method={config.method!r}: expected one of {tuple(tasks)}")
  task = tasks[config.method](config, workdir, mesh)
  logging.info("model: %s, %.2fM params; mesh %s; %.3g training FLOPs per token",
               task.model_config.family, task.model_config.num_params() / 1e6, dict(mesh.shape),
               perf.flops_per_token(task.model_config, task.seq_len))
  _check_memory(config, task, mesh)

  state, position = _initial_state(config, workdir, task)
  step = int(jax.device_get(state.step))
  if step != position:
    raise ValueError(f"checkpoint step {step} != data position {position}")
  board = progress.TensorBoard(os.path.join(workdir, "tensorboard"))
  bar = _progress(config, task, mesh, workdir, board, step)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints,
                            async_save=config.train.async_checkpointing)
  try:
    with preemption.PreemptionWatch() as signals:
      state, step = _loop(config, workdir, task, state, step, bar, mngr, signals,
                          step_callback)
    mngr.wait_until_finished()
  except Exception as e:
    if faults.is_disk_full(e) and not isinstance(e, faults.RunStopped):
      raise faults.DiskFull(faults.disk_full_message(workdir, _state_bytes(task), e,
                                                     what="a checkpoint")) from e
    raise
  finally:
    _close_quietly(mngr.close, bar.flush, board.close)
  logging.info("done: %d steps; checkpoints in %s", step, checkpoint.checkpoints_dir(workdir))
  return state


def _close_quietly(*closes: Callable[[], None]) -> None:
  """Close the checkpoint manager (it waits for the saves in flight), the metrics history
  (a remote one is written) and TensorBoard; an error here is logged, so that it cannot
  hide the one that ended the run."""
  for close in closes:
    try:
      close()
    except Exception as e:  # noqa: BLE001
      logging.debug("closing after the run", exc_info=True)
      logging.error("while closing: %s", faults.first_line(e))


def _loop(config, workdir: str, task: Task, state, step: int, bar, mngr, signals,
          step_callback):
  """The steps, with checkpoints, the NaN guard's policy and the preemption save."""
  def save(step, state):
    checkpoint.save(mngr, step, state.params, _meta(config, task, step), opt=_opt_item(state))

  run_step = _CompiledSteps(task.step_fns, functools.partial(
      _check_compiled_memory, config, task.shardings.step.mesh))
  guard = nonfinite.Watch(config.train.on_nonfinite, config.train.max_nonfinite_skips)
  batches = task.batches(step)
  t = config.train
  if task.total_steps == 0 and step == 0:  # a 0-step run keeps its initial state
    save(0, state)
  loop_start, first = time.perf_counter(), True
  while step < task.total_steps:
    if task.probe is not None and task.probe.due(step, first):
      state = task.probe(state, step, bar.board)
    first = False
    phase = task.phase_of(step)
    if step > 0 and phase != task.phase_of(step - 1):
      bar.restart_timing()  # the new phase compiles its own step
    state, metrics = run_step(phase, state, next(batches))
    step += 1
    guard.add(step, metrics)
    bar.update(step, metrics, phase if len(task.step_fns) > 1 else "")
    preempted = signals.reached(step, mngr)
    saving = step % t.checkpoint_every == 0 or step == task.total_steps or preempted
    if saving or step % t.log_every == 0:
      stop = guard.check()  # waits for this step: only where the loop syncs anyway
      if stop is not None:
        mngr.wait_until_finished()
        raise faults.NonFinite(guard.message(*stop, _last_good(workdir)))
    if saving:
      save(step, state)
      bar.flush()  # a remote history is written whole: at least at every checkpoint
      _write_plots(workdir, bar, task.names)
    if preempted:
      mngr.wait_until_finished()
      raise faults.Preempted(
          f"preempted ({signals.received or 'SIGTERM'}) at step {step}: checkpoint {step} "
          f"is committed in {checkpoint.checkpoints_dir(workdir)}; run the same command to "
          "resume", step)
    if step_callback is not None:
      step_callback(step, state)
  if task.probe is not None:
    task.probe.save(time.perf_counter() - loop_start)
  return state, step


@faults.exit_cleanly
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None or _CONFIG.value is None:
    raise app.UsageError("--config and --workdir are required")
  progress.quiet_library_logs()
  cpu_backend.prepare(_CONFIG.value.train)  # before the JAX backend starts, or it changes nothing
  compile_cache.enable(_CONFIG.value.train.compilation_cache_dir)  # before the first compile
  distributed.initialize(_CONFIG.value.train.distributed,
                         _CONFIG.value.train.distributed_timeout_s)
  config = _CONFIG.value
  if _STRICT_RESUME.value:
    config.train.strict_resume = True
  train(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_absl_flags)  # overrides checked as in every CLI
