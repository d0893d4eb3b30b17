"""The pure train step: `train_step(state, batch) -> (state, metrics)`.

The same function runs on one CPU and on a pod; `jit_train_step` fixes its
input and output shardings and donates the state. A batch is a dict of
[batch, length] arrays:
  input_ids       int32 token ids (right padded)
  attention_mask  1 on real tokens, 0 on padding
  loss_mask       1 on the tokens that are scored (rationale and answer), 0 on the
                  prompt and on padding

A step whose loss or new state is not finite changes nothing but the step and rng
(mind_jax/nonfinite.py; metric `nonfinite`).

LoRA (mind_jax/models/lora.py): `state.params` are the adapters, the only thing
differentiated and updated, and `state.frozen` the base they apply to; the model
is `lora.make_model(...)` and applies `lora.variables(params, frozen)`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from mind_jax import losses, nonfinite, sharding
from mind_jax.models import lora
from mind_jax.models.decoder import Decoder, DecoderConfig
from mind_jax.state import TrainState

BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")


def _loss_sum(params, model: Decoder, batch, frozen=None, chunk: int = 0
              ) -> tuple[jax.Array, jax.Array]:
  """(sum, count) of the scored tokens' NLL; the logits made `chunk` positions at a time."""
  return losses.model_next_token_loss(model, lora.variables(params, frozen),
                                      batch["input_ids"], batch["loss_mask"], chunk,
                                      attention_mask=batch["attention_mask"])


def _micro_batches(batch: dict, num: int) -> dict:
  """[B, T] -> [num, B/num, T]; micro-batch m takes rows m, m+num, ... so that each
  device keeps an equal share of every micro-batch."""
  def split(x):
    return jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def sft_loss_and_grads(params, model: Decoder, batch, grad_accum_steps: int, frozen=None,
                       chunk: int = 0):
  """Gradient of the token-summed loss with respect to `params` (not `frozen`, the LoRA
  base), over micro-batches; returns (sum, count, grads)."""
  grad_fn = jax.value_and_grad(_loss_sum, has_aux=True)
  if grad_accum_steps == 1:
    (loss_sum, count), grads = grad_fn(params, model, batch, frozen, chunk)
    return loss_sum, count, grads

  def body(carry, micro):
    (loss_sum, count), grads = grad_fn(params, model, micro, frozen, chunk)
    acc_sum, acc_count, acc_grads = carry
    return (acc_sum + loss_sum, acc_count + count,
            jax.tree.map(jnp.add, acc_grads, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
  (loss_sum, count, grads), _ = jax.lax.scan(body, init, _micro_batches(batch, grad_accum_steps))
  return loss_sum, count, grads


def train_step(state: TrainState, batch: dict, *, model: Decoder,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int = 1, loss_chunk_tokens: int = 0
               ) -> tuple[TrainState, dict]:
  loss_sum, count, grads = sft_loss_and_grads(state.params, model, batch, grad_accum_steps,
                                              state.frozen, loss_chunk_tokens)
  # Gradient of the token mean over the whole global batch.
  grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  rng, _ = jax.random.split(state.rng)
  metrics = dict(loss=loss_sum / jnp.maximum(count, 1.0), tokens=count,
                 grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  new_state, metrics["nonfinite"] = nonfinite.guard(state, new_state, metrics["loss"])
  return new_state, metrics


def jit_train_step(model_config: DecoderConfig, optimizer, schedule, state_shardings,
                   batch_sharding, grad_accum_steps: int = 1,
                   lora_config: lora.LoraConfig | None = None, loss_chunk_tokens: int = 0):
  """The jitted step with explicit in/out shardings; the input state is donated.
  loss_chunk_tokens: train.loss_chunk_tokens (losses.chunked_token_nll)."""
  model = lora.make_model(model_config, lora_config,
                          sharding.activation_sharding(batch_sharding))
  step = functools.partial(train_step, model=model, optimizer=optimizer,
                           schedule=schedule, grad_accum_steps=grad_accum_steps,
                           loss_chunk_tokens=loss_chunk_tokens)
  batch_shardings = {k: batch_sharding for k in BATCH_KEYS}
  replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)
