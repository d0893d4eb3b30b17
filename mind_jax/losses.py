"""Losses. Token losses are reduced as (sum, count), never as a mean of means,
so they stay right with padding, with gradient accumulation and across devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Negative log-likelihood of each target token, in fp32: [..., vocab], [...] -> [...]."""
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - target_logit


def next_token_nll(logits: jax.Array, input_ids: jax.Array,
                   loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token NLL of predicting token t+1 from position t, and its weight.

  `loss_mask[b, t]` is 1 where token t is scored (rationale and answer tokens),
  0 on the prompt and on padding. Returns ([B, T-1] nll, [B, T-1] weights).
  """
  nll = token_nll(logits[:, :-1], input_ids[:, 1:])
  weights = loss_mask[:, 1:].astype(jnp.float32)
  return nll, weights


def masked_sum_and_count(nll: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  return jnp.sum(nll * weights), jnp.sum(weights)
