"""`python -m mind_jax.train --config configs/X.py --workdir W [--config.a.b=v ...]`

Trains the student with SFT on (question, rationale, answer) sequences. Run it
again with the same workdir and it resumes from the newest committed checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import jax
from absl import app, flags
from ml_collections import config_flags

from mind_jax import checkpoint, progress, sharding, state as state_lib, step as step_lib
from mind_jax import tokenizer as tokenizer_lib
from mind_jax.data import builtin, prompt, sft
from mind_jax.models.decoder import DecoderConfig

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, tokenizer.")


def _load_data(config, workdir: str):
  if config.data.source != "builtin":
    raise ValueError(f"data.source={config.data.source!r}: only 'builtin' exists so far")
  examples = builtin.generate_examples(config.data.num_examples, config.data.seed)
  texts = [prompt.prompt_text(e["question"]) + prompt.target_text(e["rationale"], e["answer"])
           for e in examples]
  tokenizer = tokenizer_lib.load_or_create(config.tokenizer.path, config.tokenizer.bpe_vocab_size,
                                           texts, checkpoint.tokenizer_dir(workdir))
  arrays = sft.encode_examples(tokenizer, examples, config.train.seq_len)
  logging.info("data: %d sequences of %d tokens", len(arrays["input_ids"]), config.train.seq_len)
  return tokenizer, arrays


def model_config_for(config, tokenizer) -> DecoderConfig:
  """The model config with token ids filled in from the tokenizer, checked against it."""
  model_config = DecoderConfig.from_config(config.model)
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


def _check_batch(config, mesh) -> None:
  t = config.train
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.batch_size % config.optim.grad_accum_steps:
    raise ValueError(f"train.batch_size={t.batch_size} is not a multiple of "
                     f"optim.grad_accum_steps={config.optim.grad_accum_steps}")
  if (t.batch_size // config.optim.grad_accum_steps) % shards:
    raise ValueError(f"micro-batch {t.batch_size // config.optim.grad_accum_steps} does not "
                     f"divide over data*fsdp={shards} devices")


def _initial_state(config, workdir, model_config, optimizer, abstract, shardings):
  """Resume from the workdir's newest committed checkpoint, else init (or init_from)."""
  target = state_lib.with_shardings(abstract, shardings)
  opt_target = dict(opt_state=target.opt_state, step=target.step, rng=target.rng)
  if checkpoint.latest_step(workdir) is not None:
    step, items = checkpoint.restore(workdir, None, {"params": target.params, "opt": opt_target})
    opt = items["opt"]
    state = state_lib.TrainState(step=opt["step"], params=items["params"],
                                 opt_state=opt["opt_state"], rng=opt["rng"])
    logging.info("resumed from step %d of %s", step, workdir)
    return state, int(items["meta"]["data_position"])
  state = state_lib.init_state(model_config, optimizer, config.train.seed, shardings)
  if config.train.init_from:
    _, items = checkpoint.restore(config.train.init_from, None, {"params": target.params})
    state = state.replace(params=items["params"])
    logging.info("params initialised from %s", config.train.init_from)
  return state, 0


def _meta(config, model_config, tokenizer, data_position: int) -> dict:
  return dict(model=model_config.to_dict(), config=config.to_dict(),
              data_position=data_position,
              tokenizer=dict(name=tokenizer.name_or_path,
                             fingerprint=tokenizer_lib.fingerprint(tokenizer)))


def train(config, workdir: str,
          step_callback: Callable[[int, state_lib.TrainState], None] | None = None
          ) -> state_lib.TrainState:
  """Train to config.train.steps; returns the final state. `step_callback(step, state)`
  runs after every step (tests use it to kill the process at a chosen point)."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  _check_batch(config, mesh)
  tokenizer, arrays = _load_data(config, workdir)
  model_config = model_config_for(config, tokenizer)
  logging.info("model: %s, %.2fM params; mesh %s", model_config.family,
               model_config.num_params() / 1e6, dict(mesh.shape))

  total = config.train.steps
  optimizer = state_lib.make_optimizer(config.optim, total)
  schedule = state_lib.learning_rate_schedule(config.optim, total)
  abstract, shardings = state_lib.abstract_state_and_shardings(model_config, optimizer, mesh,
                                                               config.mesh.rules)
  state, position = _initial_state(config, workdir, model_config, optimizer, abstract, shardings)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules,
                                           (config.train.batch_size, config.train.seq_len))
  train_step = step_lib.jit_train_step(model_config, optimizer, schedule, shardings,
                                       batch_sharding, config.optim.grad_accum_steps)
  batches = sft.SFTBatches(arrays, config.train.batch_size, config.train.seed)

  board = progress.TensorBoard(os.path.join(workdir, "tensorboard"))
  bar = progress.Progress(total, config.train.batch_size * config.train.seq_len,
                          config.train.log_every, board)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints,
                            async_save=config.train.async_checkpointing)
  step = int(jax.device_get(state.step))
  if step != position:
    raise ValueError(f"checkpoint step {step} != data position {position}")
  try:
    while step < total:
      state, metrics = train_step(state, batches.global_batch(step, batch_sharding))
      step += 1
      bar.update(step, metrics)
      if step % config.train.checkpoint_every == 0 or step == total:
        checkpoint.save(mngr, step, state.params, _meta(config, model_config, tokenizer, step),
                        opt=dict(opt_state=state.opt_state, step=state.step, rng=state.rng))
      if step_callback is not None:
        step_callback(step, state)
    mngr.wait_until_finished()
  finally:
    mngr.close()
    board.close()
  logging.info("done: %d steps; checkpoints in %s", step, checkpoint.checkpoints_dir(workdir))
  return state


def initialize_distributed(mode: str) -> None:
  """Multi-host start-up; it must run on every host before any other JAX call."""
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"train.distributed={mode!r}: expected auto, on or off")
  multi_host = ("," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
                or "JAX_COORDINATOR_ADDRESS" in os.environ)
  if mode == "on" or (mode == "auto" and multi_host):
    jax.distributed.initialize()
    logging.info("process %d of %d", jax.process_index(), jax.process_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None or _CONFIG.value is None:
    raise app.UsageError("--config and --workdir are required")
  progress.quiet_library_logs()
  initialize_distributed(_CONFIG.value.train.distributed)
  train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
