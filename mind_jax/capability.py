"""What the TA's target follows (mind.capability): the paper's loss, learning progress, or
the accuracy the student reaches in each perspective.

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

  accuracy  what the student gets right: every mind.probe_every steps it answers
            mind.probe_size held-out questions of its training distribution in each
            perspective, greedily, from that perspective's tagged prompt, judged as eval
            judges (probe.py). a_k, the probe accuracy, goes through its own inertia
            filter (EMA, decay mind.probe_mu; the first probe is taken as it is).
            Standardised across perspectives like progress, and the paper's per-question
            signal kept as a tie-breaker weighted lambda = mind.accuracy_loss_weight:

              target_ik = softmax_k((z_k - lambda * L_bar[i, k]) / tau),
              z = (a - mean a) / (std a + eps)

            Equal accuracies (before the first probe, or all 0 from scratch) leave only
            lambda * L_bar: the paper's target at a lower temperature tau / lambda.

Like the inertia filter, the EMAs are state of a link of the TA's optax chain, so they
are sharded, checkpointed and restored with it. A link exists only with its capability:
with "loss" the chain, its checkpoints and every number are the paper method's, unchanged.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mind_jax import inertia

CAPABILITIES = ("loss", "progress", "accuracy")
EPS = 1e-6  # std floor of the standardisation: equal progress gives a uniform target


class ProgressState(NamedTuple):
  fast: jax.Array  # [K] EMA of each perspective's batch mean CE, decay progress_fast_mu
  slow: jax.Array  # [K] the same with decay progress_slow_mu
  seen: jax.Array  # [K] 1 once a perspective was present


def init_state(num_perspectives: int) -> ProgressState:
  zeros = jnp.zeros((num_perspectives,), jnp.float32)
  return ProgressState(zeros, zeros, zeros)


def observe(state: ProgressState, losses: jax.Array, present: jax.Array, fast_mu: float,
            slow_mu: float) -> tuple[ProgressState, jax.Array]:
  """Record CE [B, K]; return (state, the target's stand-in for L_bar [B, K]: -z)."""
  losses = jax.lax.stop_gradient(losses.astype(jnp.float32))
  present = present.astype(jnp.float32)
  counts = jnp.sum(present, axis=0)
  batch_mean = jnp.sum(losses * present, axis=0) / jnp.maximum(counts, 1.0)
  here = counts > 0
  blend = inertia.ema_blend
  fast = jnp.where(here, blend(state.fast, state.seen, batch_mean, fast_mu), state.fast)
  slow = jnp.where(here, blend(state.slow, state.seen, batch_mean, slow_mu), state.slow)
  seen = jnp.maximum(state.seen, here.astype(jnp.float32))
  z = standardised((slow - fast) / jnp.maximum(slow, EPS), seen > 0)
  return ProgressState(fast, slow, seen), jnp.broadcast_to(-z, losses.shape)


def standardised(values: jax.Array, known: jax.Array) -> jax.Array:
  """(values - mean) / (std + eps) over the known entries [K]; 0 where unknown."""
  count = jnp.maximum(jnp.sum(known), 1.0)
  mean = jnp.sum(jnp.where(known, values, 0.0)) / count
  var = jnp.sum(jnp.where(known, (values - mean) ** 2, 0.0)) / count
  return jnp.where(known, (values - mean) / (jnp.sqrt(var) + EPS), 0.0)


def _state_link(init_state_fn, keyword: str = "") -> optax.GradientTransformationExtraArgs:
  """An optax link that only holds state: gradients pass through unchanged; its update
  stores the state passed as `keyword` (or keeps its own when `keyword` is "")."""
  def init_fn(params):
    del params
    return init_state_fn()

  def update_fn(updates, state, params=None, **extra):
    del params
    return updates, extra[keyword] if keyword else state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def progress_filter(num_perspectives: int) -> optax.GradientTransformationExtraArgs:
  """An optax link whose state is ProgressState: its update stores `progress_state`,
  the state `observe` gave for this step; gradients pass through unchanged."""
  return _state_link(lambda: init_state(num_perspectives), "progress_state")


def _state_of(ta_opt_state, kind: type):
  found = [node for node in jax.tree.leaves(ta_opt_state, is_leaf=lambda n: isinstance(n, kind))
           if isinstance(node, kind)]
  if len(found) != 1:
    raise ValueError(f"expected one {kind.__name__} in the TA optimizer state, found "
                     f"{len(found)} (mind.capability builds it)")
  return found[0]


def progress_state_of(ta_opt_state) -> ProgressState:
  """The progress link's state inside the TA optimizer state."""
  return _state_of(ta_opt_state, ProgressState)


# ------------------------------------------------------------------ accuracy


class AccuracyState(NamedTuple):
  ema: jax.Array   # [K] the probe accuracy through its inertia filter (decay mind.probe_mu)
  seen: jax.Array  # [K] 1 once a probe measured the perspective


def accuracy_filter(num_perspectives: int) -> optax.GradientTransformationExtraArgs:
  """An optax link whose state is AccuracyState. The step only reads it; the probe,
  outside the step, writes it (record_accuracy)."""
  zeros = jnp.zeros((num_perspectives,), jnp.float32)
  return _state_link(lambda: AccuracyState(zeros, zeros))


def accuracy_state_of(ta_opt_state) -> AccuracyState:
  """The accuracy link's state inside the TA optimizer state."""
  return _state_of(ta_opt_state, AccuracyState)


def accuracy_target(state: AccuracyState, l_bar: jax.Array, loss_weight: float) -> jax.Array:
  """The target's stand-in for L_bar [B, K] (lower is weighted up): -z_k + lambda L_bar."""
  z = standardised(state.ema, state.seen > 0)
  return -z[None, :] + loss_weight * l_bar


def record_accuracy(ta_opt_state, accuracy, mu: float):
  """The TA optimizer state with a probe's accuracy [K] blended into AccuracyState, each
  array kept on its sharding (the jitted step expects them there)."""
  def record(node):
    if not isinstance(node, AccuracyState):
      return node
    new = jnp.asarray(accuracy, jnp.float32)
    blended = AccuracyState(inertia.ema_blend(node.ema, node.seen, new, mu),
                            jnp.ones_like(node.seen))
    return jax.tree.map(lambda x, old: jax.device_put(x, old.sharding), blended, node)
  return jax.tree.map(record, ta_opt_state, is_leaf=lambda n: isinstance(n, AccuracyState))
