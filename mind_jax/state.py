"""The train state pytree and the optimizer that updates it.

One pytree holds everything a step reads and writes (MIND adds the TA's
params and optimizer state to it later). Its shardings come from the params'
logical axes: optimizer moments mirror their param's sharding.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mind_jax import sharding
from mind_jax.models import decoder


@flax.struct.dataclass
class TrainState:
  step: jax.Array      # int32 scalar: optimizer steps taken
  params: Any          # the student's params (fp32 master weights)
  opt_state: Any       # optax state of the student's optimizer
  rng: jax.Array       # uint32[2] raw PRNG key, split every step


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
  decay_steps = optim_config.decay_steps if optim_config.decay_steps > 0 else total_steps
  warmup = min(optim_config.warmup_steps, max(decay_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim_config.learning_rate, warmup_steps=warmup,
      decay_steps=max(decay_steps, warmup + 1),
      end_value=optim_config.learning_rate * optim_config.end_lr_ratio)


def make_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
  """AdamW with warm-up and cosine decay, global-norm clipping; no decay on vectors."""
  def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(learning_rate_schedule(optim_config, total_steps), b1=optim_config.b1,
                      b2=optim_config.b2, eps=optim_config.eps,
                      weight_decay=optim_config.weight_decay, mask=decay_mask)
  if optim_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), adamw)
  return adamw


def _init_state(model_config: decoder.DecoderConfig, optimizer, seed: int) -> TrainState:
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = decoder.init_params(model_config, init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=state_rng)


def abstract_state_and_shardings(model_config: decoder.DecoderConfig, optimizer, mesh: Mesh,
                                 rules) -> tuple[TrainState, TrainState]:
  """ShapeDtypeStructs of the state and its shardings, without allocating anything."""
  abstract = jax.eval_shape(lambda: _init_state(model_config, optimizer, 0))
  _, param_axes = decoder.abstract_params(model_config)
  param_shardings = sharding.tree_shardings(abstract.params, param_axes, mesh, rules)
  # Optimizer moments have the params' structure: give them the params' shardings;
  # everything else in the optimizer state (counts) is replicated.
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract.opt_state, param_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))
  shardings = TrainState(step=sharding.replicated(mesh), params=param_shardings,
                         opt_state=opt_shardings, rng=sharding.replicated(mesh))
  return abstract, shardings


def init_state(model_config: decoder.DecoderConfig, optimizer, seed: int,
               shardings: TrainState) -> TrainState:
  """A fresh state created directly in its shardings (never on one device first)."""
  return jax.jit(lambda: _init_state(model_config, optimizer, seed), out_shardings=shardings)()


def with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
