"""What the TA's target follows (mind.capability): the paper's loss, or learning progress.

MIND trains the TA towards softmax(-L_bar / tau), L_bar the inertia-filtered CE of each
(question, perspective) (inertia.py). On the testbed that target goes to the styles with
the lowest CE per token from the first steps, which are the ones the student learns worst
(results/testbed). This module adds a signal that asks what the student is *learning*:

  loss      the paper: target logits -L_bar[i, k] / tau (nothing here runs).
  progress  learning progress per perspective (Graves et al. 2017, arXiv 1704.03003;
            Matiisen et al. 2017, arXiv 1707.00183): a fast and a slow EMA of the batch
            mean CE of each perspective, progress_k = (slow_k - fast_k) / slow_k, the
            relative drop of CE over the slow EMA's horizon. Standardised across the
            present perspectives (mean 0, std 1), it replaces -L_bar in the target:

              target_k = softmax(z_k / tau),   z = (progress - mean) / (std + eps)

            one value per perspective, shared by every question of the batch.

Like the inertia filter, the EMAs are state of a link of the TA's optax chain, so they
are sharded, checkpointed and restored with it. The link exists only when
capability="progress": with "loss" the chain, its checkpoints and every number are the
paper method's, unchanged.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

CAPABILITIES = ("loss", "progress")
EPS = 1e-6  # std floor of the standardisation: equal progress gives a uniform target


class ProgressState(NamedTuple):
  fast: jax.Array  # [K] EMA of each perspective's batch mean CE, decay progress_fast_mu
  slow: jax.Array  # [K] the same with decay progress_slow_mu
  seen: jax.Array  # [K] 1 once a perspective was present


def init_state(num_perspectives: int) -> ProgressState:
  zeros = jnp.zeros((num_perspectives,), jnp.float32)
  return ProgressState(zeros, zeros, zeros)


def _blend(old, seen, new, mu):
  return jnp.where(seen > 0, mu * old + (1.0 - mu) * new, new)


def observe(state: ProgressState, losses: jax.Array, present: jax.Array, fast_mu: float,
            slow_mu: float) -> tuple[ProgressState, jax.Array]:
  """Record CE [B, K]; return (state, the target's stand-in for L_bar [B, K]: -z)."""
  losses = jax.lax.stop_gradient(losses.astype(jnp.float32))
  present = present.astype(jnp.float32)
  counts = jnp.sum(present, axis=0)
  batch_mean = jnp.sum(losses * present, axis=0) / jnp.maximum(counts, 1.0)
  here = counts > 0
  fast = jnp.where(here, _blend(state.fast, state.seen, batch_mean, fast_mu), state.fast)
  slow = jnp.where(here, _blend(state.slow, state.seen, batch_mean, slow_mu), state.slow)
  seen = jnp.maximum(state.seen, here.astype(jnp.float32))
  progress = (slow - fast) / jnp.maximum(slow, EPS)
  known = seen > 0
  mean = jnp.sum(jnp.where(known, progress, 0.0)) / jnp.maximum(jnp.sum(known), 1.0)
  var = jnp.sum(jnp.where(known, (progress - mean) ** 2, 0.0)) / jnp.maximum(jnp.sum(known), 1.0)
  z = jnp.where(known, (progress - mean) / (jnp.sqrt(var) + EPS), 0.0)
  return ProgressState(fast, slow, seen), jnp.broadcast_to(-z, losses.shape)


def progress_filter(num_perspectives: int) -> optax.GradientTransformationExtraArgs:
  """An optax link whose state is ProgressState: its update stores `progress_state`,
  the state `observe` gave for this step; gradients pass through unchanged."""
  def init_fn(params):
    del params
    return init_state(num_perspectives)

  def update_fn(updates, state, params=None, *, progress_state: ProgressState, **extra):
    del state, params, extra
    return updates, progress_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _is_progress_state(node) -> bool:
  return isinstance(node, ProgressState)


def progress_state_of(ta_opt_state) -> ProgressState:
  """The progress link's state inside the TA optimizer state."""
  found = [node for node in jax.tree.leaves(ta_opt_state, is_leaf=_is_progress_state)
           if _is_progress_state(node)]
  if len(found) != 1:
    raise ValueError(f"expected one ProgressState in the TA optimizer state, found {len(found)}"
                     " (mind.capability='progress' builds it)")
  return found[0]
