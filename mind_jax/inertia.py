"""The inertia filter: an EMA over the student's loss feedback, kept as optimizer state.

The TA must follow the student's long-term preference, not one mini-batch's
noise. The filter is a link of the TA's optax chain: its state (the EMA)
therefore lives in the TA optimizer's pytree, so it is sharded, checkpointed and
restored with the optimizer. Code finds it there by its type, InertiaState
(`inertia_state_of`, `logical_axes`), never by its place in the chain.

A step records its feedback once: `observe` gives the new state and L_bar, so
the TA loss of a step uses L_bar including that step's feedback, and the TA
optimizer's update stores that state (the link passes gradients through):

  inertia_state, l_bar = observe(inertia_state_of(opt_state), mode, mu,
                                 example_index, losses, present)
  ... L_meta(l_bar) -> grads ...
  ta_optimizer.update(grads, opt_state, params, inertia_state=inertia_state)

Modes (MIND_METHOD.md, [ours]):
  example      a table [N, K]: L_bar[i,k] <- mu L_bar[i,k] + (1-mu) CE[i,k] each
               time example i is seen; the first sighting sets it to CE[i,k]
  perspective  one EMA per perspective over batch means, broadcast to the batch
  instant      L_bar = CE (mu = 0, whatever mu says): the paper's
               instantaneous-loss ablation; nothing is kept
Absent perspectives (present = 0) never change the state.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

MODES = ("example", "perspective", "instant")


class InertiaState(NamedTuple):
  ema: jax.Array   # example: [N, K]; perspective: [K]; instant: [1], unused (Orbax
                   # cannot save an empty array)
  seen: jax.Array  # same shape as ema: 1 once a value was recorded


def init_state(mode: str, num_examples: int, num_perspectives: int) -> InertiaState:
  if mode not in MODES:
    raise ValueError(f"mind.inertia_mode={mode!r}: expected one of {MODES}")
  shape = {"example": (num_examples, num_perspectives), "perspective": (num_perspectives,),
           "instant": (1,)}[mode]
  return InertiaState(ema=jnp.zeros(shape, jnp.float32), seen=jnp.zeros(shape, jnp.float32))


def ema_blend(old, seen, new, mu):
  """EMA step; the first sighting takes the new value."""
  return jnp.where(seen > 0, mu * old + (1.0 - mu) * new, new)


def _example_update(state, example_index, losses, present, mu):
  old, seen = state.ema[example_index], state.seen[example_index]
  blended = jnp.where(present > 0, ema_blend(old, seen, losses, mu), old)
  seen_now = jnp.maximum(seen, (present > 0).astype(jnp.float32))
  return (InertiaState(state.ema.at[example_index].set(blended),
                       state.seen.at[example_index].set(seen_now)), blended)


def _perspective_update(state, losses, present, mu):
  counts = jnp.sum(present, axis=0)
  batch_mean = jnp.sum(losses * present, axis=0) / jnp.maximum(counts, 1.0)
  has_data = counts > 0
  ema = jnp.where(has_data, ema_blend(state.ema, state.seen, batch_mean, mu), state.ema)
  seen = jnp.maximum(state.seen, has_data.astype(jnp.float32))
  return InertiaState(ema, seen), jnp.broadcast_to(ema, losses.shape)


def observe(state: InertiaState, mode: str, mu: float, example_index: jax.Array,
            losses: jax.Array, present: jax.Array) -> tuple[InertiaState, jax.Array]:
  """Record losses [B, K] of examples `example_index` [B]; return (state, L_bar [B, K])."""
  losses = jax.lax.stop_gradient(losses.astype(jnp.float32))
  present = present.astype(jnp.float32)
  if mode == "example":
    return _example_update(state, example_index, losses, present, mu)
  if mode == "perspective":
    return _perspective_update(state, losses, present, mu)
  return state, losses


def inertia_filter(mode: str, num_examples: int,
                   num_perspectives: int) -> optax.GradientTransformationExtraArgs:
  """An optax link whose state is the loss EMA: its update stores `inertia_state`, the
  state `observe` gave for this step; gradients pass through unchanged."""
  def init_fn(params):
    del params
    return init_state(mode, num_examples, num_perspectives)

  def update_fn(updates, state, params=None, *, inertia_state: InertiaState, **extra):
    del state, params, extra
    return updates, inertia_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ta_optimizer(mode: str, num_examples: int, num_perspectives: int,
                 learning_rate: float, every_k: int, b1: float, b2: float,
                 eps: float, extra_links: tuple = ()) -> optax.GradientTransformationExtraArgs:
  """inertia filter -> extra_links (state-only links such as capability.progress_filter)
  -> MultiSteps(every_k) over Adam: the TA's whole optimizer."""
  adam = optax.MultiSteps(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps),
                          every_k_schedule=every_k)
  return optax.chain(inertia_filter(mode, num_examples, num_perspectives), *extra_links,
                     adam.gradient_transformation())


def _is_inertia_state(node) -> bool:
  return isinstance(node, InertiaState)


def inertia_state_of(ta_opt_state) -> InertiaState:
  """The filter's state inside the TA optimizer state (arrays or their abstract shapes)."""
  found = [node for node in jax.tree.leaves(ta_opt_state, is_leaf=_is_inertia_state)
           if _is_inertia_state(node)]
  if len(found) != 1:
    raise ValueError(f"expected one InertiaState in the TA optimizer state, found {len(found)}")
  return found[0]


def logical_axes(ta_opt_state):
  """A tree of logical axes matching the TA optimizer state: example mode's [N, K] table is
  split over its rows (config.mesh.rules "examples"); every other leaf is small and
  replicated (None)."""
  def one(node):
    table = _is_inertia_state(node) and len(node.ema.shape) == 2
    return jax.tree.map(lambda _: ("examples", None) if table else None, node)
  return jax.tree.map(one, ta_opt_state, is_leaf=_is_inertia_state)
